//! The worker's command line: every setting is also an environment variable (SPEC §2).

use shared::config::{
    DatabaseSettings, NatsSettings, ShutdownSettings, TelemetrySettings, WorkerSettings,
};

/// Turn worker of Smart Support. With no command it runs the consumer; `setup`, `seed`, `replay`
/// and `dead-letters` are the operator commands.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "worker", version, about)]
pub struct Settings {
    #[command(subcommand)]
    pub command: Option<crate::operator::Command>,
    #[command(flatten)]
    pub worker: WorkerSettings,
    /// Load the demo shop's data (what `worker seed` loads) at start-up; for demos and tests.
    #[arg(
        long = "seed-demo-data",
        env = "SEED_DEMO_DATA",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub seed_demo_data: bool,
    #[command(flatten)]
    pub conversations: ConversationSettings,
    #[command(flatten)]
    pub nats: NatsSettings,
    #[command(flatten)]
    pub database: DatabaseSettings,
    #[command(flatten)]
    pub shutdown: ShutdownSettings,
    #[command(flatten)]
    pub telemetry: TelemetrySettings,
}

/// Conversation control and data lifecycle (SPEC §8).
#[derive(Debug, Clone, clap::Args)]
pub struct ConversationSettings {
    /// A customer message that arrives while the thread's turn is running: `enqueue` runs it
    /// after that turn; `interrupt` cancels that turn (it ends `cancelled`), then runs it.
    #[arg(
        long = "double-text",
        env = "DOUBLE_TEXT",
        value_enum,
        default_value = "enqueue"
    )]
    pub double_text: crate::cancels::DoubleText,
    /// Conversations inactive for longer than this many days are deleted everywhere (PostgreSQL
    /// rows, stream messages), by a background sweep on one worker at a time. 0: kept for ever.
    #[arg(long = "retention-days", env = "RETENTION_DAYS", default_value_t = 0)]
    pub retention_days: u64,
    /// Testing knob: the length of one retention "day", in seconds (86400). Lets tests use a
    /// window of seconds.
    #[arg(long = "retention-unit-secs", env = "RETENTION_UNIT_SECS", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..))]
    pub retention_unit_secs: u64,
    /// Seconds between two retention sweeps.
    #[arg(long = "retention-sweep-secs", env = "RETENTION_SWEEP_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub retention_sweep_secs: u64,
    /// Conversations deleted per batch of a sweep (each batch is one short transaction).
    #[arg(long = "retention-batch", env = "RETENTION_BATCH", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub retention_batch: u64,
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory as _;
        super::Settings::command().debug_assert();
    }
}
