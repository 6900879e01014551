//! NATS connection and the JetStream set-up: streams `<PREFIX>_IN` (client messages, with a
//! duplicate window) and `<PREFIX>_OUT` (reply frames, retained for `resume`), and the durable
//! pull consumer all workers share. Missing streams are created; existing ones are only rewritten
//! by `worker setup --apply` (SPEC §9).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};

use crate::config::{NatsSecuritySettings, NatsSettings};
use crate::redact::redact_url;

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
///
/// A user and password (or a token) written in `NATS_URL` are passed to the client as its
/// credentials and taken out of the server addresses, which the client logs.
pub async fn connect_with(
    settings: &NatsSettings,
    name: &str,
    options: async_nats::ConnectOptions,
) -> anyhow::Result<async_nats::Client> {
    let (servers, credentials) = servers_and_credentials(&settings.url)?;
    let options = match credentials {
        Some(UrlCredentials::UserPassword { user, password }) => {
            options.user_and_password(user, password)
        }
        Some(UrlCredentials::Token(token)) => options.token(token),
        None => options,
    };
    let options = secure(options, &settings.security).await?;
    options
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .connect(servers)
        .await
        .with_context(|| format!("Failed to connect to NATS at {}", redact_url(&settings.url)))
}

/// Credentials written in `NATS_URL` (`nats://user:password@host`, `nats://token@host`).
#[derive(PartialEq, Eq)]
enum UrlCredentials {
    UserPassword { user: String, password: String },
    Token(String),
}

impl std::fmt::Debug for UrlCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UrlCredentials(***)")
    }
}

/// The servers of `NATS_URL` without credentials, and the credentials (the same for every server).
fn servers_and_credentials(
    urls: &str,
) -> anyhow::Result<(Vec<async_nats::ServerAddr>, Option<UrlCredentials>)> {
    let invalid = || format!("NATS_URL `{}` is not a list of NATS URLs", redact_url(urls));
    let mut servers = Vec::new();
    let mut credentials: Option<UrlCredentials> = None;
    for raw in urls.split(',').map(str::trim).filter(|url| !url.is_empty()) {
        let mut url = raw
            .parse::<async_nats::ServerAddr>()
            .with_context(invalid)?
            .into_inner();
        let decode = |part: &str| {
            percent_encoding::percent_decode_str(part)
                .decode_utf8_lossy()
                .into_owned()
        };
        let found = match (url.username(), url.password()) {
            ("", _) => None,
            (user, Some(password)) => Some(UrlCredentials::UserPassword {
                user: decode(user),
                password: decode(password),
            }),
            (token, None) => Some(UrlCredentials::Token(decode(token))),
        };
        if found.is_some() {
            if credentials.is_some() && credentials != found {
                anyhow::bail!(
                    "NATS_URL `{}` names different credentials for different servers; use one",
                    redact_url(urls)
                );
            }
            credentials = found;
            url.set_username("")
                .and_then(|()| url.set_password(None))
                .map_err(|()| anyhow::anyhow!(invalid()))?;
        }
        servers.push(async_nats::ServerAddr::from_url(url).with_context(invalid)?);
    }
    if servers.is_empty() {
        anyhow::bail!(invalid());
    }
    Ok((servers, credentials))
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

/// What to do with an existing stream whose settings differ from the configured ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDrift {
    /// Leave it as it is, and say so (start-up, `worker setup`).
    Report,
    /// Update it to the configured settings (`worker setup --apply`).
    Apply,
}

/// One setting of an existing stream that differs from the configured one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldDrift {
    pub field: &'static str,
    pub configured: String,
    pub actual: String,
}

/// What [`ensure_stream`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamSetup {
    Created,
    UpToDate,
    /// Settings differ, left as they are ([`OnDrift::Report`]).
    Drifted(Vec<FieldDrift>),
    /// Settings differed and were updated ([`OnDrift::Apply`]).
    Updated(Vec<FieldDrift>),
}

/// The configuration of `<PREFIX>_IN` and `<PREFIX>_OUT`, from the settings.
pub fn stream_configs(settings: &NatsSettings) -> [stream::Config; 2] {
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
    [inbound, replies]
}

/// How often a running edge or worker reads the inbound stream's replicas again
/// ([`StoreConditions`]).
pub const REPLICAS_REFRESH: Duration = Duration::from_secs(5);

/// Whether the inbound stream checks a message's condition with its store, so that a thread's
/// inbound messages may be stored on the condition that they follow the one the socket stored
/// last (`Nats-Expected-Last-Subject-Sequence`), and run as delivered when they are known to
/// (`worker/src/drain.rs`, `follows_directly`). Only on a stream of one replica: there the server
/// checks the condition and stores the message in one step. A replicated stream's leader checks
/// it before the store is agreed, against what it has applied, so a plain publish still in flight
/// could be stored between; there every delivery is read again.
///
/// Kept current: read from the stream as the process opened it, again at once, then every
/// [`REPLICAS_REFRESH`] by a task that ends with the last clone, so that raising `NATS_REPLICAS`
/// on a running fleet (`worker setup --apply`) stops the workers' trust in the condition (and
/// the edges' use of it) at their next reading. A stream that cannot be read counts as
/// replicated: reading a delivery again is never wrong, only dearer. A message is trusted only
/// if it was stored after the stream was last seen to come to one replica (or after this
/// process first looked): one stored on its condition while the stream was replicated, and
/// delivered after it came back to one, is read again.
#[derive(Clone, Debug)]
pub struct StoreConditions {
    seen: Arc<Seen>,
}

/// What the last reading of the stream found.
#[derive(Debug)]
struct Seen {
    /// The stream had one replica.
    single: AtomicBool,
    /// Messages stored up to this stream sequence may have been stored while it was replicated.
    trusted_after: AtomicU64,
}

impl Seen {
    /// A reading: `Some((one replica, last stream sequence))`, or `None` when the stream could
    /// not be read.
    fn observe(&self, reading: Option<(bool, u64)>) {
        match reading {
            Some((true, last_sequence)) => {
                if !self.single.load(Ordering::Acquire) {
                    // Published before `single`: a reader that sees one sees the other.
                    self.trusted_after.store(last_sequence, Ordering::Release);
                    self.single.store(true, Ordering::Release);
                    tracing::info!(
                        last_sequence,
                        "The inbound stream has one replica: its store conditions are used."
                    );
                }
            }
            Some((false, _)) => {
                if self.single.swap(false, Ordering::AcqRel) {
                    tracing::info!(
                        "The inbound stream is replicated: its store conditions are not used."
                    );
                }
            }
            None => {
                if self.single.swap(false, Ordering::AcqRel) {
                    tracing::warn!(
                        "Cannot read the inbound stream's replicas: its store conditions are not used until it can be read."
                    );
                }
            }
        }
    }

    fn trusted(&self, sequence: u64) -> bool {
        self.single.load(Ordering::Acquire) && sequence > self.trusted_after.load(Ordering::Acquire)
    }
}

fn reading(info: &stream::Info) -> (bool, u64) {
    (info.config.num_replicas <= 1, info.state.last_sequence)
}

impl StoreConditions {
    /// Watches `inbound` (spawns the refresh task: call inside a Tokio runtime).
    pub fn watch(inbound: &stream::Stream) -> Self {
        let seen = Arc::new(Seen {
            single: AtomicBool::new(false),
            trusted_after: AtomicU64::new(0),
        });
        seen.observe(Some(reading(inbound.cached_info())));
        let watched = Arc::downgrade(&seen);
        let mut inbound = inbound.clone();
        tokio::spawn(async move {
            // The first tick is at once: the stream may have changed since it was opened.
            let mut ticks = tokio::time::interval(REPLICAS_REFRESH);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(seen) = watched.upgrade() else {
                    return;
                };
                let now = match inbound.info().await {
                    Ok(info) => Some(reading(info)),
                    Err(error) => {
                        tracing::debug!(%error, "Cannot read the inbound stream's info.");
                        None
                    }
                };
                seen.observe(now);
            }
        });
        Self { seen }
    }

    /// Whether the stream had one replica at the last reading: an edge stores on the condition.
    pub fn checked_with_store(&self) -> bool {
        self.seen.single.load(Ordering::Acquire)
    }

    /// Whether a message stored at `sequence` on its condition can be trusted to have been
    /// checked with its store: the stream had one replica at the last reading, and since before
    /// the message was stored.
    pub fn trusted(&self, sequence: u64) -> bool {
        self.seen.trusted(sequence)
    }
}

/// The two streams; missing ones are created. An existing stream whose settings differ from the
/// configured ones is used as it is, with a warning per setting: only `worker setup --apply`
/// rewrites a stream. Safe to run from every process at start-up.
pub async fn ensure_streams(
    js: &jetstream::Context,
    settings: &NatsSettings,
) -> anyhow::Result<(stream::Stream, stream::Stream)> {
    let [inbound, replies] = stream_configs(settings);
    let mut opened = Vec::with_capacity(2);
    for config in [inbound, replies] {
        let (stream, setup) = ensure_stream(js, config, OnDrift::Report).await?;
        let name = &stream.cached_info().config.name;
        match setup {
            StreamSetup::Created => tracing::info!(stream = %name, "Created the JetStream stream."),
            StreamSetup::Drifted(drift) => {
                for FieldDrift {
                    field,
                    configured,
                    actual,
                } in drift
                {
                    tracing::warn!(
                        stream = %name,
                        field,
                        %configured,
                        %actual,
                        "A stream setting differs from the configured one; left as it is (`worker setup --apply` updates it)."
                    );
                }
            }
            StreamSetup::UpToDate | StreamSetup::Updated(_) => {}
        }
        opened.push(stream);
    }
    let replies = opened.pop().context("replies stream")?;
    let inbound = opened.pop().context("inbound stream")?;
    Ok((inbound, replies))
}

/// The two existing streams, read only: nothing is created or changed. For read-only commands.
pub async fn open_streams(
    js: &jetstream::Context,
    settings: &NatsSettings,
) -> anyhow::Result<(stream::Stream, stream::Stream)> {
    let subjects = settings.subjects();
    let mut opened = Vec::with_capacity(2);
    for name in [subjects.inbound_stream(), subjects.replies_stream()] {
        let stream = match js.get_stream(&name).await {
            Ok(stream) => stream,
            Err(error) if is_stream_not_found(&error) => anyhow::bail!(
                "The JetStream stream {name} does not exist (NATS_PREFIX {}); `worker setup` creates it",
                settings.prefix
            ),
            Err(error) => {
                return Err(error).with_context(|| format!("Failed to open JetStream stream {name}"))
            }
        };
        opened.push(stream);
    }
    let replies = opened.pop().context("replies stream")?;
    let inbound = opened.pop().context("inbound stream")?;
    Ok((inbound, replies))
}

/// Creates the stream of `config` if it is missing; otherwise compares its settings with `config`
/// and, on a difference, reports it or applies `config` as `on_drift` says.
pub async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
    on_drift: OnDrift,
) -> anyhow::Result<(stream::Stream, StreamSetup)> {
    let name = config.name.clone();
    let existing = match js.get_stream(&name).await {
        Ok(stream) => stream,
        Err(error) if is_stream_not_found(&error) => match js.create_stream(config.clone()).await {
            Ok(_) => {
                let stream = js
                    .get_stream(&name)
                    .await
                    .with_context(|| format!("Failed to open JetStream stream {name}"))?;
                return Ok((stream, StreamSetup::Created));
            }
            // Another process created it a moment ago: compare with that one.
            Err(create_error) => js
                .get_stream(&name)
                .await
                .map_err(|_| create_error)
                .with_context(|| format!("Failed to create JetStream stream {name}"))?,
        },
        Err(error) => {
            return Err(error).with_context(|| format!("Failed to open JetStream stream {name}"))
        }
    };
    let drift = stream_drift(&config, &existing.cached_info().config);
    if drift.is_empty() {
        return Ok((existing, StreamSetup::UpToDate));
    }
    match on_drift {
        OnDrift::Report => Ok((existing, StreamSetup::Drifted(drift))),
        OnDrift::Apply => {
            js.update_stream(&config)
                .await
                .with_context(|| format!("Failed to update JetStream stream {name}"))?;
            let stream = js
                .get_stream(&name)
                .await
                .with_context(|| format!("Failed to open JetStream stream {name}"))?;
            Ok((stream, StreamSetup::Updated(drift)))
        }
    }
}

fn is_stream_not_found(error: &jetstream::context::GetStreamError) -> bool {
    matches!(
        error.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(inner)
            if inner.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// The settings this project configures that differ between `configured` and `actual`. A
/// setting left at its default in `configured` (the server picks it) is not compared.
pub fn stream_drift(configured: &stream::Config, actual: &stream::Config) -> Vec<FieldDrift> {
    let mut drift = Vec::new();
    let mut compare = |field: &'static str, configured: String, actual: String| {
        if configured != actual {
            drift.push(FieldDrift {
                field,
                configured,
                actual,
            });
        }
    };
    compare(
        "description",
        format!("{:?}", configured.description),
        format!("{:?}", actual.description),
    );
    compare(
        "subjects",
        configured.subjects.join(","),
        actual.subjects.join(","),
    );
    compare(
        "storage",
        format!("{:?}", configured.storage),
        format!("{:?}", actual.storage),
    );
    compare(
        "retention",
        format!("{:?}", configured.retention),
        format!("{:?}", actual.retention),
    );
    compare(
        "max_age",
        format!("{:?}", configured.max_age),
        format!("{:?}", actual.max_age),
    );
    compare(
        "num_replicas",
        configured.num_replicas.to_string(),
        actual.num_replicas.to_string(),
    );
    compare(
        "allow_direct",
        configured.allow_direct.to_string(),
        actual.allow_direct.to_string(),
    );
    if !configured.duplicate_window.is_zero() {
        compare(
            "duplicate_window",
            format!("{:?}", configured.duplicate_window),
            format!("{:?}", actual.duplicate_window),
        );
    }
    if configured.max_messages_per_subject != 0 {
        compare(
            "max_messages_per_subject",
            configured.max_messages_per_subject.to_string(),
            actual.max_messages_per_subject.to_string(),
        );
    }
    if configured.republish.is_some() {
        compare(
            "republish",
            format!("{:?}", configured.republish),
            format!("{:?}", actual.republish),
        );
    }
    drift
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

    #[test]
    fn credentials_leave_the_server_addresses() {
        let (servers, credentials) =
            servers_and_credentials("nats://me:p%40ss@a:4222, nats://me:p%40ss@b:4223").unwrap();
        assert_eq!(
            credentials,
            Some(UrlCredentials::UserPassword {
                user: "me".into(),
                password: "p@ss".into()
            })
        );
        let urls: Vec<String> = servers.iter().map(|s| s.as_url_str().to_owned()).collect();
        assert_eq!(urls, ["nats://a:4222", "nats://b:4223"]);
        assert!(!format!("{servers:?}{credentials:?}").contains("p@ss"));

        let (_, token) = servers_and_credentials("nats://s3cret@a:4222").unwrap();
        assert_eq!(token, Some(UrlCredentials::Token("s3cret".into())));
        let (servers, none) = servers_and_credentials("127.0.0.1:4222").unwrap();
        assert_eq!((servers.len(), none), (1, None));
    }

    #[test]
    fn bad_nats_urls_are_refused_without_their_secrets() {
        let error = servers_and_credentials("nats://a:s3cret@a:4222,nats://b:other@b:4222")
            .unwrap_err()
            .to_string();
        assert!(
            !error.contains("s3cret") && !error.contains("other"),
            "{error}"
        );
        let error = servers_and_credentials("http://a:s3cret@a:4222")
            .unwrap_err()
            .to_string();
        assert!(!error.contains("s3cret"), "{error}");
        assert!(servers_and_credentials(" , ").is_err());
    }

    #[test]
    fn a_condition_is_trusted_only_on_one_replica_and_for_messages_stored_since_it_was_seen() {
        let seen = Seen {
            single: AtomicBool::new(false),
            trusted_after: AtomicU64::new(0),
        };
        // One replica when first looked at, 10 messages stored before.
        seen.observe(Some((true, 10)));
        assert!(seen.trusted(11));
        assert!(!seen.trusted(10), "stored before this process looked");
        // Still one replica: nothing moves.
        seen.observe(Some((true, 30)));
        assert!(seen.trusted(11));
        // Replicated: nothing is trusted.
        seen.observe(Some((false, 40)));
        assert!(!seen.trusted(41));
        // Back to one replica at 50: what was stored meanwhile (perhaps on a condition the
        // replicated stream did not check with the store) is read again.
        seen.observe(Some((true, 50)));
        assert!(!seen.trusted(45));
        assert!(seen.trusted(51));
        // A stream that cannot be read counts as replicated, and the same holds after it.
        seen.observe(None);
        assert!(!seen.trusted(60));
        seen.observe(Some((true, 70)));
        assert!(!seen.trusted(65));
        assert!(seen.trusted(71));
    }

    #[test]
    fn drift_names_each_differing_setting_and_ignores_server_defaults() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            nats: NatsSettings,
        }
        let settings = <Cli as clap::Parser>::parse_from([
            "test",
            "--nats-prefix=p",
            "--inbound-retention-secs=60",
            "--reply-retention-secs=60",
        ])
        .nats;
        let [inbound, replies] = stream_configs(&settings);
        // What the server reports: its own defaults filled in.
        let mut actual = replies.clone();
        actual.duplicate_window = Duration::from_secs(120);
        actual.max_bytes = -1;
        assert_eq!(stream_drift(&replies, &actual), []);

        let mut actual = inbound.clone();
        actual.max_age = Duration::from_secs(30);
        actual.num_replicas = 3;
        let drift = stream_drift(&inbound, &actual);
        let fields: Vec<&str> = drift.iter().map(|d| d.field).collect();
        assert_eq!(fields, ["max_age", "num_replicas"]);
        assert_eq!(drift[0].configured, "60s");
        assert_eq!(drift[0].actual, "30s");
    }

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
