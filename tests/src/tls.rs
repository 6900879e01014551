//! A throw-away certificate authority for TLS tests: a self-signed CA and certificates it signs
//! for `localhost` / `127.0.0.1`, written as PEM files to a temporary folder removed on drop.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// PEM files of a certificate and its private key.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA made for one test, and the folder its files live in.
pub struct TestCa {
    dir: PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate (PEM), for the clients' trust store.
    pub ca_pem: PathBuf,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("e2e-ca-{name}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create the CA folder");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("e2e {name} CA"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("self-signed CA");
        let ca_pem = dir.join("ca.pem");
        std::fs::write(&ca_pem, issuer.pem()).expect("write ca.pem");
        Self {
            dir,
            issuer,
            ca_pem,
        }
    }

    /// The folder the files are in (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A certificate for `localhost` and `127.0.0.1`, good for servers and clients, signed by this
    /// CA; written as `<name>.pem` and `<name>-key.pem`.
    pub fn issue(&self, name: &str) -> CertFiles {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("certificate parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, name.to_owned());
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate().expect("certificate key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign the certificate");
        let files = CertFiles {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}-key.pem")),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write the certificate");
        std::fs::write(&files.key, key.serialize_pem()).expect("write the key");
        files
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
