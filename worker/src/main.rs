use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = worker::Settings::parse();
    if let Some(command) = &settings.command {
        // Operator commands talk to people: only warnings go to the log.
        shared::telemetry::init_tracing("warn", settings.telemetry.log_format);
        return worker::operator::run(command, &settings).await;
    }
    let telemetry = shared::telemetry::init("info", &settings.telemetry, "worker")?;
    let worker = worker::Worker::build(settings).await?;
    let ran = worker.run_until(shared::shutdown::shutdown_signal()).await;
    telemetry.shutdown();
    ran
}
