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
    /// Created and migrated at start-up if missing.
    #[arg(
        id = "database_url",
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/smart_support"
    )]
    pub url: String,
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
    #[arg(long = "auth-secret", env = "AUTH_SECRET")]
    pub auth_secret: Secret,
    /// Bearer token for /api/admin/*; the admin API is disabled when unset.
    #[arg(long = "admin-token", env = "ADMIN_TOKEN")]
    pub admin_token: Option<Secret>,
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
    /// The web app's build output (`npm --prefix web run build`), served at `/`.
    #[arg(long = "web-dir", env = "WEB_DIR", default_value = "web/dist")]
    pub web_dir: std::path::PathBuf,
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
    fn secrets_do_not_print() {
        let secret: Secret = "hunter2".parse().unwrap();
        assert!(!format!("{secret:?}").contains("hunter2"));
        assert_eq!(secret.expose(), "hunter2");
    }
}
