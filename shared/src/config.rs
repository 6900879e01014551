//! Settings of SPEC §2. Every setting is a flag and an environment variable; sections are
//! flattened into each binary's CLI, so `--help` documents them all. Loaded once, in `main`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::telemetry::LogFormat;

/// NATS and JetStream.
#[derive(Debug, Clone, Args)]
pub struct NatsSettings {
    /// NATS server(s), comma-separated.
    #[arg(
        id = "nats_url",
        long = "nats-url",
        env = "NATS_URL",
        hide_env_values = true,
        default_value = "nats://127.0.0.1:4222"
    )]
    pub url: String,
    /// Subject prefix; streams are <PREFIX>_IN and <PREFIX>_OUT, the durable consumer <prefix>-workers.
    #[arg(long = "nats-prefix", env = "NATS_PREFIX", default_value = "chat", value_parser = parse_prefix)]
    pub prefix: String,
    /// JetStream stream replicas (3 on a cluster).
    #[arg(long = "nats-replicas", env = "NATS_REPLICAS", default_value_t = 1)]
    pub replicas: usize,
    /// How long client messages stay in <PREFIX>_IN, for replay after an incident.
    #[arg(long = "inbound-retention-secs", env = "INBOUND_RETENTION_SECS", default_value_t = 7 * 24 * 3600)]
    pub inbound_retention_secs: u64,
    /// How long reply frames stay in <PREFIX>_OUT, for `resume`.
    #[arg(long = "reply-retention-secs", env = "REPLY_RETENTION_SECS", default_value_t = 24 * 3600)]
    pub reply_retention_secs: u64,
    /// How many reply frames per thread <PREFIX>_OUT keeps, for `resume`.
    #[arg(
        long = "reply-max-per-thread",
        env = "REPLY_MAX_PER_THREAD",
        default_value_t = 10_000
    )]
    pub reply_max_per_thread: i64,
    #[command(flatten)]
    pub security: NatsSecuritySettings,
}

/// How a process proves who it is to NATS and checks the server: credentials, nkey, TLS. All unset
/// (the default) connects as an anonymous client over plain TCP, as a local NATS accepts.
#[derive(Debug, Clone, Default, Args)]
pub struct NatsSecuritySettings {
    /// Credentials file (`.creds`: a user JWT and its nkey seed) for a NATS account.
    #[arg(
        id = "nats_creds",
        value_name = "PATH",
        long = "nats-creds",
        env = "NATS_CREDS",
        conflicts_with = "nats_nkey"
    )]
    pub creds: Option<std::path::PathBuf>,
    /// Nkey seed (`SU…`) of a NATS user authenticated by nkey.
    #[arg(
        id = "nats_nkey",
        long = "nats-nkey",
        value_name = "SEED",
        env = "NATS_NKEY",
        hide_env_values = true
    )]
    pub nkey: Option<Secret>,
    /// PEM file of the CA(s) that signed the NATS server's certificate; TLS is then required.
    #[arg(
        id = "nats_tls_ca",
        value_name = "PATH",
        value_name = "PATH",
        long = "nats-tls-ca",
        env = "NATS_TLS_CA"
    )]
    pub tls_ca: Option<std::path::PathBuf>,
    /// PEM client certificate, for a NATS server that verifies clients (with NATS_TLS_KEY).
    #[arg(
        id = "nats_tls_cert",
        value_name = "PATH",
        long = "nats-tls-cert",
        env = "NATS_TLS_CERT",
        requires = "nats_tls_key"
    )]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of NATS_TLS_CERT.
    #[arg(
        id = "nats_tls_key",
        value_name = "PATH",
        long = "nats-tls-key",
        env = "NATS_TLS_KEY",
        requires = "nats_tls_cert"
    )]
    pub tls_key: Option<std::path::PathBuf>,
}

impl NatsSettings {
    pub fn subjects(&self) -> crate::subjects::Subjects {
        crate::subjects::Subjects::new(self.prefix.clone())
    }
}

fn parse_prefix(raw: &str) -> Result<String, String> {
    let valid = !raw.is_empty()
        && raw.len() <= 64
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(raw.to_owned())
    } else {
        Err("must be 1 to 64 characters of a-z, A-Z, 0-9, '_' or '-'".into())
    }
}

/// PostgreSQL.
#[derive(Debug, Clone, Args)]
pub struct DatabaseSettings {
    /// Created and migrated at start-up if missing (unless MIGRATE=false).
    #[arg(
        id = "database_url",
        long = "database-url",
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/smart_support"
    )]
    pub url: String,
    /// Create the database if missing and apply the migrations at start-up. `--no-migrate` or
    /// MIGRATE=false: use the database as it is (a deploy job runs `worker setup` instead).
    #[arg(
        id = "migrate",
        long = "no-migrate",
        env = "MIGRATE",
        action = clap::ArgAction::SetFalse,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub migrate: bool,
    /// Connections in this process's pool.
    #[arg(
        long = "database-max-connections",
        env = "DATABASE_MAX_CONNECTIONS",
        default_value_t = 16
    )]
    pub max_connections: u32,
}

/// Logging.
#[derive(Debug, Clone, Args)]
pub struct TelemetrySettings {
    /// Tracing output: `pretty` (default on a TTY) or `json` (default otherwise). `RUST_LOG` filters.
    #[arg(long = "log-format", env = "LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// OpenTelemetry collector base URL (OTLP over HTTP/protobuf; spans go to `<URL>/v1/traces`).
    /// Unset: no traces are exported. The exporter also honours `OTEL_EXPORTER_OTLP_HEADERS`.
    #[arg(
        long = "otel-exporter-otlp-endpoint",
        env = "OTEL_EXPORTER_OTLP_ENDPOINT",
        hide_env_values = true
    )]
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans; defaults to the binary's name (`edge`, `worker`).
    #[arg(long = "otel-service-name", env = "OTEL_SERVICE_NAME")]
    pub service_name: Option<String>,
}

/// How long a process waits for in-flight work after SIGTERM/SIGINT.
#[derive(Debug, Clone, Args)]
pub struct ShutdownSettings {
    /// Grace period, in seconds, before in-flight work is cut off at shutdown.
    #[arg(
        long = "shutdown-grace-secs",
        env = "SHUTDOWN_GRACE_SECS",
        default_value_t = 10
    )]
    pub grace_secs: u64,
}

impl ShutdownSettings {
    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.grace_secs)
    }
}

/// A secret that never shows up in logs or `Debug` output.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::str::FromStr for Secret {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        if raw.is_empty() {
            Err("must not be empty".into())
        } else {
            Ok(Self(raw.to_owned()))
        }
    }
}

/// The `AUTH_SECRET` of `.env.example`, refused outside `DEV_MODE`.
pub const EXAMPLE_AUTH_SECRET: &str = "change-me-in-production";

/// The shortest `AUTH_SECRET` accepted outside `DEV_MODE`, in bytes.
pub const MIN_AUTH_SECRET_BYTES: usize = 32;

/// Why an `AUTH_SECRET` is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WeakSecret {
    #[error("AUTH_SECRET is the example value of .env.example: set a random one (e.g. `openssl rand -hex 32`), or DEV_MODE=true for development")]
    Example,
    #[error("AUTH_SECRET is shorter than {MIN_AUTH_SECRET_BYTES} bytes: set a random one (e.g. `openssl rand -hex 32`), or DEV_MODE=true for development")]
    TooShort,
}

/// Refuses the example secret and secrets shorter than [`MIN_AUTH_SECRET_BYTES`].
pub fn check_auth_secret(secret: &Secret) -> Result<(), WeakSecret> {
    if secret.expose() == EXAMPLE_AUTH_SECRET {
        Err(WeakSecret::Example)
    } else if secret.expose().len() < MIN_AUTH_SECRET_BYTES {
        Err(WeakSecret::TooShort)
    } else {
        Ok(())
    }
}

/// The edge's own settings.
#[derive(Debug, Clone, Args)]
pub struct EdgeSettings {
    /// HTTP + WebSocket listen address.
    #[arg(
        long = "edge-addr",
        env = "EDGE_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub addr: SocketAddr,
    /// HMAC key for thread tokens; all edges share it.
    /// At least 32 bytes, and not the example's, unless DEV_MODE=true.
    #[arg(long = "auth-secret", env = "AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: Secret,
    /// Bearer token for /api/admin/*; the admin API is disabled when unset.
    #[arg(long = "admin-token", env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,
    /// Development only: accept a weak AUTH_SECRET (shorter than 32 bytes, or the example's).
    #[arg(
        long = "dev-mode",
        env = "DEV_MODE",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub dev_mode: bool,
    /// Per-thread message rate limit: messages per window.
    #[arg(
        long = "rate-limit-messages",
        env = "RATE_LIMIT_MESSAGES",
        default_value_t = 10
    )]
    pub rate_limit_messages: u32,
    /// Per-thread message rate limit: window in seconds.
    #[arg(
        long = "rate-limit-window-secs",
        env = "RATE_LIMIT_WINDOW_SECS",
        default_value_t = 10
    )]
    pub rate_limit_window_secs: u64,
    /// Thread creations per client address per minute; 0 = unlimited.
    #[arg(
        long = "threads-per-minute",
        env = "THREADS_PER_MINUTE",
        default_value_t = 120
    )]
    pub threads_per_minute: u32,
    /// How the edge receives live reply frames: `edge`, one NATS subscription to every thread's
    /// live subject, fanned out in process (least memory per attached socket; every edge receives
    /// every thread's frames); `thread`, one subscription per attached thread per socket (each
    /// edge receives only its sockets' threads).
    #[arg(
        long = "live-subscription",
        env = "LIVE_SUBSCRIPTION",
        value_enum,
        default_value = "edge"
    )]
    pub live_subscription: LiveSubscription,
    /// The web app's build output (`npm --prefix web run build`), served at `/`.
    #[arg(long = "web-dir", env = "WEB_DIR", default_value = "web/dist")]
    pub web_dir: std::path::PathBuf,
    #[command(flatten)]
    pub origins: OriginSettings,
    #[command(flatten)]
    pub limits: EdgeLimits,
}

/// `LIVE_SUBSCRIPTION`: what the edge subscribes to for its sockets' live reply frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LiveSubscription {
    /// One subscription to `<prefix>.live.*` per edge, fanned out in process.
    Edge,
    /// One subscription to `<prefix>.live.<thread>` per attached thread per socket.
    Thread,
}

/// Which browser pages may use the edge: WebSocket upgrades and CORS requests (SPEC §9).
#[derive(Debug, Clone, Default, Args)]
pub struct OriginSettings {
    /// Other origins whose pages may open /ws and call /api/* (comma-separated, e.g.
    /// `https://shop.example,https://help.shop.example`). The edge's own origin and clients that
    /// send no Origin (non-browser) are always allowed; unset: only they are.
    #[arg(
        long = "allowed-origins",
        env = "ALLOWED_ORIGINS",
        value_name = "ORIGINS"
    )]
    pub allowed_origins: Option<AllowedOrigins>,
}

/// A list of web origins (`scheme://host[:port]`), kept in the form browsers send in `Origin`:
/// lower case, no trailing slash, no default port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedOrigins(Vec<String>);

impl AllowedOrigins {
    /// Whether `origin` (an `Origin` header's value) is one of the list.
    pub fn contains(&self, origin: &str) -> bool {
        let origin = origin.trim_end_matches('/');
        self.0
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(origin))
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

impl std::str::FromStr for AllowedOrigins {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let mut origins = Vec::new();
        for item in raw
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            origins.push(parse_origin(item)?);
        }
        if origins.is_empty() {
            return Err("lists no origin".into());
        }
        Ok(Self(origins))
    }
}

fn parse_origin(raw: &str) -> Result<String, String> {
    let invalid =
        || format!("`{raw}` is not an origin like https://shop.example or http://localhost:5173");
    let url = url::Url::parse(raw).map_err(|_| invalid())?;
    let bare = url.path() == "/" && url.query().is_none() && url.fragment().is_none();
    let credentials = !url.username().is_empty() || url.password().is_some();
    if !matches!(url.scheme(), "http" | "https") || !bare || credentials || url.host().is_none() {
        return Err(invalid());
    }
    // `Url` lower-cases the host and drops a default port, as browsers do in `Origin`.
    Ok(url.origin().ascii_serialization())
}

/// What one client, socket or connection may cost the edge (docs/operations.md, "Limits").
#[derive(Debug, Clone, Args)]
pub struct EdgeLimits {
    /// Load balancers (comma-separated CIDRs) whose `X-Forwarded-For` names the client address:
    /// the right-most entry that is not itself a trusted proxy. Empty: the TCP peer is the client.
    #[arg(long = "trusted-proxies", env = "TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: CidrList,
    /// Seconds between the edge's pings on each socket; a socket that has sent nothing, not even a
    /// pong, since the previous ping is closed (so a dead socket goes within twice this).
    #[arg(long = "ws-ping-secs", env = "WS_PING_SECS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub ws_ping_secs: u64,
    /// Open WebSockets on this edge, in all; an upgrade beyond it is refused with 503.
    #[arg(
        long = "ws-max-sockets",
        env = "WS_MAX_SOCKETS",
        default_value_t = 20_000
    )]
    pub ws_max_sockets: usize,
    /// Open WebSockets on this edge per client address; an upgrade beyond it is refused with 429.
    #[arg(
        long = "ws-max-sockets-per-addr",
        env = "WS_MAX_SOCKETS_PER_ADDR",
        default_value_t = 32
    )]
    pub ws_max_sockets_per_addr: usize,
    /// Threads one socket relays at once; attaching one more detaches the least recently used.
    #[arg(long = "ws-max-threads-per-socket", env = "WS_MAX_THREADS_PER_SOCKET", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub ws_max_threads_per_socket: u64,
    /// Seconds a client may take to send a request's headers before the connection is closed.
    #[arg(long = "http-header-timeout-secs", env = "HTTP_HEADER_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub http_header_timeout_secs: u64,
    /// Accepted `message` and `interrupt_response` frames per client address per minute, over all
    /// its threads (on top of the per-thread budgets); 0 = unlimited.
    #[arg(
        long = "messages-per-addr-per-minute",
        env = "MESSAGES_PER_ADDR_PER_MINUTE",
        default_value_t = 120
    )]
    pub messages_per_addr_per_minute: u32,
    /// `resume` frames per thread per minute on this edge; 0 = unlimited.
    #[arg(
        long = "resumes-per-minute",
        env = "RESUMES_PER_MINUTE",
        default_value_t = 30
    )]
    pub resumes_per_minute: u32,
    /// Frames one `resume` replays at most; past it the socket gets `resume_partial` and resumes
    /// again from its `last_seq`.
    #[arg(long = "resume-max-frames", env = "RESUME_MAX_FRAMES", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub resume_max_frames: u64,
    /// Actions per operator per minute on this edge (a burst of this many, refilled over the
    /// minute): messages, join, leave and resolve (`POST /api/operator/*`); past it `429` with
    /// `Retry-After`. 0 = unlimited.
    #[arg(
        long = "operator-actions-per-minute",
        env = "OPERATOR_ACTIONS_PER_MINUTE",
        default_value_t = 60
    )]
    pub operator_actions_per_minute: u32,
}

/// Comma-separated CIDRs (`10.0.0.0/8, 2001:db8::/32`); a bare address is a /32 or /128.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrList(pub Vec<ipnet::IpNet>);

impl CidrList {
    pub fn contains(&self, addr: &std::net::IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(addr))
    }
}

impl std::str::FromStr for CidrList {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        raw.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                item.parse::<ipnet::IpNet>()
                    .or_else(|_| item.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| format!("`{item}` is not a CIDR (like 10.0.0.0/8) or an address"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }
}

/// Which model answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LlmProvider {
    /// Offline and deterministic.
    Scripted,
    /// Any OpenAI-compatible server (`OPENAI_BASE_URL`).
    Openai,
}

/// The worker's own settings.
#[derive(Debug, Clone, Args)]
pub struct WorkerSettings {
    /// Model provider.
    #[arg(
        long = "llm-provider",
        env = "LLM_PROVIDER",
        value_enum,
        default_value = "scripted"
    )]
    pub llm_provider: LlmProvider,
    /// Base URL of the OpenAI-compatible API, including `/v1` (OpenAI, vLLM, Ollama, llama.cpp…).
    #[arg(
        long = "openai-base-url",
        env = "OPENAI_BASE_URL",
        default_value = "https://api.openai.com/v1"
    )]
    pub openai_base_url: String,
    /// API key sent as a bearer token (servers that need none accept any).
    #[arg(
        long = "openai-api-key",
        env = "OPENAI_API_KEY",
        hide_env_values = true
    )]
    pub openai_api_key: Option<Secret>,
    /// Model used by agents that name none, and by the classifier.
    #[arg(long = "llm-model", env = "LLM_MODEL", default_value = "gpt-4o-mini")]
    pub llm_model: String,
    /// Whole-request timeout of a model call, in seconds.
    #[arg(long = "llm-timeout-secs", env = "LLM_TIMEOUT_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub llm_timeout_secs: u64,
    /// Longest wait between two chunks of a streamed model answer, in seconds.
    #[arg(long = "llm-idle-timeout-secs", env = "LLM_IDLE_TIMEOUT_SECS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub llm_idle_timeout_secs: u64,
    /// YAML file of agents, prompts, tools and model prices; unset: the built-in demo shop.
    #[arg(long = "agents-config", env = "AGENTS_CONFIG")]
    pub agents_config: Option<std::path::PathBuf>,
    /// Timeout, in seconds, of one HTTP request of an imported (OpenAPI) tool.
    #[arg(long = "tool-timeout-secs", env = "TOOL_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub tool_timeout_secs: u64,
    /// An imported tool's response is cut to this many bytes before the model sees it.
    #[arg(
        long = "tool-response-max-bytes",
        env = "TOOL_RESPONSE_MAX_BYTES",
        default_value_t = 16_384
    )]
    pub tool_response_max_bytes: usize,
    /// Hosts imported tools may call although they resolve to a private, loopback or link-local
    /// address (`host` or `host:port`, comma-separated). Empty: public addresses only.
    #[arg(
        long = "tool-hosts-allow",
        env = "TOOL_HOSTS_ALLOW",
        default_value = ""
    )]
    pub tool_hosts_allow: String,
    /// Seconds an approval request stays open; a later answer gets `interrupt_expired`.
    #[arg(long = "interrupt-ttl-secs", env = "INTERRUPT_TTL_SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub interrupt_ttl_secs: u64,
    /// Length, in tokens, of the scripted model's general replies.
    #[arg(
        long = "scripted-reply-tokens",
        env = "SCRIPTED_REPLY_TOKENS",
        default_value_t = 40
    )]
    pub scripted_reply_tokens: u32,
    /// The scripted model's delay per token, in milliseconds (0 for load tests).
    #[arg(
        long = "scripted-token-delay-ms",
        env = "SCRIPTED_TOKEN_DELAY_MS",
        default_value_t = 15
    )]
    pub scripted_token_delay_ms: u64,
    /// Messages whose content contains this text make the scripted model fail after two tokens: a
    /// simulated provider outage, for incident drills and tests. Unset: it never fails.
    #[arg(long = "scripted-fail-on", env = "SCRIPTED_FAIL_ON")]
    pub scripted_fail_on: Option<String>,
    /// Messages whose content contains this text make the scripted model panic: a drill of a bug
    /// in a turn (the panic counts as a failed attempt; the message is dead-lettered in the end).
    /// Unset: it never panics. Never set it in production.
    #[arg(long = "scripted-panic-on", env = "SCRIPTED_PANIC_ON")]
    pub scripted_panic_on: Option<String>,
    /// Failed attempts at a turn before its message is dead-lettered.
    #[arg(long = "turn-max-attempts", env = "TURN_MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub turn_max_attempts: u32,
    /// Turns in flight per worker process.
    #[arg(long = "worker-concurrency", env = "WORKER_CONCURRENCY", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// Inactivity, in seconds, after which a thread's session expires.
    #[arg(
        long = "session-ttl-secs",
        env = "SESSION_TTL_SECS",
        default_value_t = 1800
    )]
    pub session_ttl_secs: u64,
    /// Seconds JetStream waits for a worker's ack before redelivering a message (set when the
    /// durable consumer is created). Workers send in-progress acks during long turns.
    #[arg(long = "ack-wait-secs", env = "ACK_WAIT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub ack_wait_secs: u64,
    /// Seconds a worker's hold on a thread lasts without renewal; after a crash, another worker
    /// takes the thread over once it has run out.
    #[arg(long = "lease-ttl-secs", env = "LEASE_TTL_SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    pub lease_ttl_secs: u64,
    /// Prometheus /metrics listen address of this worker.
    #[arg(
        long = "metrics-addr",
        env = "METRICS_ADDR",
        default_value = "127.0.0.1:9091"
    )]
    pub metrics_addr: SocketAddr,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_must_be_subject_safe() {
        assert!(parse_prefix("chat").is_ok());
        assert!(parse_prefix("t_1-x").is_ok());
        assert!(parse_prefix("a.b").is_err());
        assert!(parse_prefix("").is_err());
        assert!(parse_prefix("a>").is_err());
    }

    #[test]
    fn weak_auth_secrets_are_refused() {
        let secret = |raw: &str| raw.parse::<Secret>().unwrap();
        assert_eq!(
            check_auth_secret(&secret(EXAMPLE_AUTH_SECRET)),
            Err(WeakSecret::Example)
        );
        assert_eq!(
            check_auth_secret(&secret(&"x".repeat(31))),
            Err(WeakSecret::TooShort)
        );
        assert_eq!(check_auth_secret(&secret(&"x".repeat(32))), Ok(()));
        // The example file still holds the value refused here.
        let example = include_str!("../../.env.example");
        assert!(
            example.contains(&format!("AUTH_SECRET={EXAMPLE_AUTH_SECRET}\n")),
            ".env.example's AUTH_SECRET changed: update EXAMPLE_AUTH_SECRET"
        );
    }

    #[test]
    fn migrate_is_on_unless_turned_off() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            database: DatabaseSettings,
        }
        use clap::Parser as _;
        assert!(
            Cli::parse_from(["test"]).database.migrate || std::env::var_os("MIGRATE").is_some()
        );
        assert!(!Cli::parse_from(["test", "--no-migrate"]).database.migrate);
    }

    #[test]
    fn allowed_origins_are_normalised_like_origin_headers() {
        let origins: AllowedOrigins =
            " https://Shop.Example/ , http://localhost:5173,https://a.example:443"
                .parse()
                .unwrap();
        assert_eq!(
            origins.as_slice(),
            [
                "https://shop.example",
                "http://localhost:5173",
                "https://a.example"
            ]
        );
        assert!(origins.contains("https://shop.example"));
        assert!(origins.contains("http://localhost:5173"));
        assert!(!origins.contains("http://shop.example"));
        assert!(!origins.contains("https://evil.example"));
        for bad in [
            "",
            " , ",
            "shop.example",
            "https://shop.example/app",
            "ftp://x.example",
            "*",
        ] {
            assert!(
                bad.parse::<AllowedOrigins>().is_err(),
                "{bad:?} must be refused"
            );
        }
    }

    #[test]
    fn cidr_lists_parse() {
        let list: CidrList = " 10.0.0.0/8, 127.0.0.1 ,2001:db8::/32".parse().unwrap();
        assert_eq!(list.0.len(), 3);
        assert!(list.contains(&"10.1.2.3".parse().unwrap()));
        assert!(list.contains(&"127.0.0.1".parse().unwrap()));
        assert!(!list.contains(&"127.0.0.2".parse().unwrap()));
        assert!(list.contains(&"2001:db8::1".parse().unwrap()));
        assert_eq!("".parse::<CidrList>().unwrap(), CidrList::default());
        assert!("10.0.0.0/33".parse::<CidrList>().is_err());
        assert!("example.com".parse::<CidrList>().is_err());
    }

    #[test]
    fn secrets_do_not_print() {
        let secret: Secret = "hunter2".parse().unwrap();
        assert!(!format!("{secret:?}").contains("hunter2"));
        assert_eq!(secret.expose(), "hunter2");
    }
}
