//! A private PostgreSQL server, for tests that need one configured differently from the shared
//! server on 127.0.0.1:5432 (TLS only, for example). Its data folder is temporary; the server is
//! stopped and the folder removed when the [`PostgresServer`] is dropped, even after a failed
//! assertion.
//!
//! initdb and postgres refuse to run as root: a root test process starts them as the `postgres`
//! user (the process itself, not a wrapper, so that it can be signalled).

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::tls::CertFiles;
use crate::WAIT;

/// One `postgres` process and its data folder.
pub struct PostgresServer {
    port: u16,
    /// Removed on drop: the cluster, its configuration, socket and TLS files.
    dir: PathBuf,
    child: Option<Child>,
}

impl PostgresServer {
    /// A server on a free loopback port with `ssl=on` and `tls` as its certificate, that accepts
    /// TCP connections only over TLS (`hostssl` in pg_hba.conf; no plain `host` line), user
    /// `postgres` without password.
    pub async fn start_tls_only(tls: &CertFiles) -> Self {
        let bin = bin_dir();
        let owner = Owner::of_server_processes();
        let dir = std::env::temp_dir().join(format!("e2e-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create the PostgreSQL folder");
        let mut server = Self {
            port: crate::nats::free_ports(1)[0],
            dir,
            child: None,
        };
        let data = server.dir.join("data");
        let cert = server.dir.join("server.crt");
        let key = server.dir.join("server.key");
        std::fs::copy(&tls.cert, &cert).expect("copy the server certificate");
        std::fs::copy(&tls.key, &key).expect("copy the server key");
        // PostgreSQL refuses a key that others may read.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
        owner.chown(&[&server.dir, &cert, &key]);

        let status = owner
            .command(bin.join("initdb"))
            .args([
                "--username=postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("initdb runs");
        assert!(status.success(), "initdb failed: {status}");
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .expect("write pg_hba.conf");

        let mut command = owner.command(bin.join("postgres"));
        command
            .arg("-D")
            .arg(&data)
            .args(["-p", &server.port.to_string(), "-k"])
            .arg(&server.dir)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "ssl=on",
                "-c",
                "fsync=off",
            ])
            .arg("-c")
            .arg(format!("ssl_cert_file={}", cert.display()))
            .arg("-c")
            .arg(format!("ssl_key_file={}", key.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if std::env::var_os("TEST_LOG").is_some() {
            command.stderr(Stdio::inherit());
        } else {
            command.stderr(Stdio::null());
        }
        server.child = Some(command.spawn().expect("postgres starts"));
        server.wait_until_ready(&bin).await;
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/<database>?<params>`.
    pub fn url(&self, database: &str, params: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}?{params}",
            self.port
        )
    }

    /// Waits until the server accepts connections (pg_isready over its Unix socket).
    async fn wait_until_ready(&mut self, bin: &Path) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let ready = Command::new(bin.join("pg_isready"))
                .arg("-h")
                .arg(&self.dir)
                .args(["-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|status| status.success());
            if ready {
                return;
            }
            let child = self.child.as_mut().expect("postgres was spawned");
            if let Ok(Some(status)) = child.try_wait() {
                panic!("postgres exited before accepting connections: {status}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "postgres did not accept connections in time"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGQUIT: immediate shutdown; the postmaster takes its backends down with it.
            let _ = Command::new("kill")
                .args(["-QUIT", &child.id().to_string()])
                .status();
            let mut exited = false;
            for _ in 0..250 {
                if !matches!(child.try_wait(), Ok(None)) {
                    exited = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if !exited {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The PostgreSQL server binaries: `TEST_PG_BIN`, else Debian's PostgreSQL 15.
fn bin_dir() -> PathBuf {
    let dir = std::env::var_os("TEST_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
    assert!(
        dir.join("postgres").is_file(),
        "the PostgreSQL server binaries are not in {} (set TEST_PG_BIN)",
        dir.display()
    );
    dir
}

/// Who runs initdb and postgres: the `postgres` user when the tests run as root, else the tests'
/// own user.
enum Owner {
    Current,
    User { uid: u32, gid: u32 },
}

impl Owner {
    fn of_server_processes() -> Self {
        if id(&["-u"]) != 0 {
            return Self::Current;
        }
        Self::User {
            uid: id(&["-u", "postgres"]),
            gid: id(&["-g", "postgres"]),
        }
    }

    fn command(&self, program: PathBuf) -> Command {
        let mut command = Command::new(program);
        if let Self::User { uid, gid } = self {
            command.uid(*uid).gid(*gid).env("HOME", "/tmp");
        }
        command
    }

    fn chown(&self, paths: &[&Path]) {
        if let Self::User { uid, gid } = self {
            for path in paths {
                std::os::unix::fs::chown(path, Some(*uid), Some(*gid)).expect("chown");
            }
        }
    }
}

/// `id ARGS` as a number.
fn id(args: &[&str]) -> u32 {
    let output = Command::new("id").args(args).output().expect("id runs");
    assert!(
        output.status.success(),
        "id {args:?} failed (is there a postgres user?)"
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("id prints a number")
}
