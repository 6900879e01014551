//! NATS connection and the idempotent JetStream set-up: streams `<PREFIX>_IN` (client messages,
//! with a duplicate window) and `<PREFIX>_OUT` (reply frames, retained for `resume`), and the
//! durable pull consumer all workers share.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};

use crate::config::{NatsSecuritySettings, NatsSettings};

/// The duplicate window of `<PREFIX>_IN` (SPEC §3): a message id sent again within it is stored once.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Connects to the NATS servers of `NATS_URL` (comma-separated). The client reconnects by itself.
pub async fn connect(settings: &NatsSettings, name: &str) -> anyhow::Result<async_nats::Client> {
    let options = async_nats::ConnectOptions::new().event_callback(|event| async move {
        tracing::info!(%event, "NATS connection event.");
    });
    connect_with(settings, name, options).await
}

/// [`connect`] with options of the caller's (e.g. a smaller subscription capacity on the edge, an
/// event callback of its own).
pub async fn connect_with(
    settings: &NatsSettings,
    name: &str,
    options: async_nats::ConnectOptions,
) -> anyhow::Result<async_nats::Client> {
    let servers: Vec<async_nats::ServerAddr> = settings
        .url
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("NATS_URL `{}` is not a list of NATS URLs", settings.url))?;
    let options = secure(options, &settings.security).await?;
    options
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .connect(servers)
        .await
        .with_context(|| format!("Failed to connect to NATS at {}", settings.url))
}

/// Applies `NATS_CREDS`, `NATS_NKEY` and `NATS_TLS_*`. Files are read here, so a missing or
/// malformed one stops start-up with an error that names the setting (never the secret).
async fn secure(
    mut options: async_nats::ConnectOptions,
    security: &NatsSecuritySettings,
) -> anyhow::Result<async_nats::ConnectOptions> {
    if let Some(path) = &security.creds {
        options = options.credentials_file(path).await.with_context(|| {
            format!(
                "NATS_CREDS {} is not a readable NATS credentials file",
                path.display()
            )
        })?;
    }
    if let Some(seed) = &security.nkey {
        // async-nats would only fail at the server's challenge; say which setting is wrong now.
        // (nkeys' error may quote the input: do not pass it on.)
        let valid_user_seed = nkeys::KeyPair::from_seed(seed.expose())
            .is_ok_and(|pair| matches!(pair.key_pair_type(), nkeys::KeyPairType::User));
        anyhow::ensure!(
            valid_user_seed,
            "NATS_NKEY is not a NATS user nkey seed (it starts with SU)"
        );
        options = options.nkey(seed.expose().to_owned());
    }
    if let Some(ca) = &security.tls_ca {
        readable(ca, "NATS_TLS_CA")?;
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&security.tls_cert, &security.tls_key) {
        readable(cert, "NATS_TLS_CERT")?;
        readable(key, "NATS_TLS_KEY")?;
        options = options
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    Ok(options)
}

/// async-nats reads TLS files only when it connects, and reports a missing one as a failed
/// connection: check up front so the error names the setting.
fn readable(path: &Path, setting: &str) -> anyhow::Result<()> {
    std::fs::File::open(path)
        .map(drop)
        .with_context(|| format!("{setting} {} cannot be read", path.display()))
}

/// A JetStream context whose publishes give up after `timeout`.
pub fn context(client: async_nats::Client, timeout: Duration) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(timeout)
        .build(client)
}

/// The two streams, created or brought up to date. Safe to run from every process at start-up.
pub async fn ensure_streams(
    js: &jetstream::Context,
    settings: &NatsSettings,
) -> anyhow::Result<(stream::Stream, stream::Stream)> {
    let subjects = settings.subjects();
    let inbound = stream::Config {
        name: subjects.inbound_stream(),
        description: Some("Client messages, keyed by thread; kept for replay.".into()),
        subjects: vec![subjects.inbound_wildcard()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        duplicate_window: DUPLICATE_WINDOW,
        max_age: Duration::from_secs(settings.inbound_retention_secs),
        num_replicas: settings.replicas,
        allow_direct: true,
        ..Default::default()
    };
    let replies = stream::Config {
        name: subjects.replies_stream(),
        description: Some("Reply frames per thread, retained for resume.".into()),
        subjects: vec![subjects.replies_wildcard()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_age: Duration::from_secs(settings.reply_retention_secs),
        max_messages_per_subject: settings.reply_max_per_thread,
        num_replicas: settings.replicas,
        allow_direct: true,
        // Edges relay what the stream stored, never what it refused.
        republish: Some(stream::Republish {
            source: subjects.replies_wildcard(),
            destination: subjects.live_template(),
            headers_only: false,
        }),
        ..Default::default()
    };
    let mut streams = Vec::with_capacity(2);
    for config in [inbound, replies] {
        let name = config.name.clone();
        js.create_or_update_stream(config)
            .await
            .with_context(|| format!("Failed to create or update JetStream stream {name}"))?;
        let stream = js
            .get_stream(&name)
            .await
            .with_context(|| format!("Failed to open JetStream stream {name}"))?;
        streams.push(stream);
    }
    let replies = streams.pop().context("replies stream")?;
    let inbound = streams.pop().context("inbound stream")?;
    Ok((inbound, replies))
}

/// The durable pull consumer `<prefix>-workers` on `<PREFIX>_IN`, shared by every worker.
pub async fn ensure_workers_consumer(
    inbound: &stream::Stream,
    settings: &NatsSettings,
    ack_wait: Duration,
) -> anyhow::Result<consumer::PullConsumer> {
    let name = settings.subjects().workers_consumer();
    let config = consumer::pull::Config {
        durable_name: Some(name.clone()),
        description: Some("Turn workers".into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait,
        // Attempts are counted by the project, not by JetStream: redeliver for ever.
        max_deliver: -1,
        max_ack_pending: 100_000,
        deliver_policy: consumer::DeliverPolicy::All,
        ..Default::default()
    };
    inbound
        .get_or_create_consumer(&name, config)
        .await
        .with_context(|| format!("Failed to create the durable consumer {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn error_of(security: NatsSecuritySettings) -> String {
        match secure(async_nats::ConnectOptions::new(), &security).await {
            Ok(_) => panic!("{security:?} must be refused"),
            Err(error) => format!("{error:#}"),
        }
    }

    #[tokio::test]
    async fn unusable_security_settings_are_named_and_secrets_not_shown() {
        let creds = NatsSecuritySettings {
            creds: Some("/nonexistent/user.creds".into()),
            ..Default::default()
        };
        assert!(error_of(creds)
            .await
            .contains("NATS_CREDS /nonexistent/user.creds"));

        let seed = "SUAIO3FHUX5PNV2LQIIP7TZ3N4L7TX3W53MQGEIVYFIGA635OZCKEYHFLX";
        let nkey = NatsSecuritySettings {
            nkey: Some(seed.parse().unwrap()),
            ..Default::default()
        };
        let error = error_of(nkey).await;
        assert!(error.contains("NATS_NKEY"), "{error}");
        assert!(!error.contains(seed), "{error}");
        // An account seed is a valid seed, but not a user's.
        let account = nkeys::KeyPair::new_account().seed().unwrap();
        let nkey = NatsSecuritySettings {
            nkey: Some(account.parse().unwrap()),
            ..Default::default()
        };
        assert!(error_of(nkey).await.contains("NATS_NKEY"));

        let key = NatsSecuritySettings {
            tls_cert: Some("Cargo.toml".into()),
            tls_key: Some("/nonexistent/key.pem".into()),
            ..Default::default()
        };
        assert!(error_of(key)
            .await
            .contains("NATS_TLS_KEY /nonexistent/key.pem"));
    }

    #[tokio::test]
    async fn a_creds_file_is_read_and_a_malformed_one_refused() {
        let dir = std::env::temp_dir().join(format!("creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let seed = nkeys::KeyPair::new_user().seed().unwrap();
        // The JWT is checked by the server, not here; the file's layout and the seed are.
        let good = dir.join("good.creds");
        std::fs::write(
            &good,
            format!(
                "-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.c2ln\n------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
            ),
        )
        .unwrap();
        let bad = dir.join("bad.creds");
        std::fs::write(&bad, "not a creds file").unwrap();
        let with = |path: &std::path::Path| NatsSecuritySettings {
            creds: Some(path.to_path_buf()),
            ..Default::default()
        };
        let accepted = secure(async_nats::ConnectOptions::new(), &with(&good)).await;
        let refused = error_of(with(&bad)).await;
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(accepted.is_ok(), "{:?}", accepted.err());
        assert!(refused.contains("NATS_CREDS"), "{refused}");
    }

    #[tokio::test]
    async fn a_user_seed_and_readable_files_are_accepted() {
        let seed = nkeys::KeyPair::new_user().seed().unwrap();
        let security = NatsSecuritySettings {
            nkey: Some(seed.parse().unwrap()),
            tls_ca: Some("Cargo.toml".into()),
            ..Default::default()
        };
        assert!(secure(async_nats::ConnectOptions::new(), &security)
            .await
            .is_ok());
    }
}
