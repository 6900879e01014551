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
    pub nats: NatsSettings,
    #[command(flatten)]
    pub database: DatabaseSettings,
    #[command(flatten)]
    pub shutdown: ShutdownSettings,
    #[command(flatten)]
    pub telemetry: TelemetrySettings,
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory as _;
        super::Settings::command().debug_assert();
    }
}
