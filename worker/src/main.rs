use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = worker::Settings::parse();
    shared::telemetry::init_tracing("worker", settings.telemetry.log_format);
    let worker = worker::Worker::build(settings).await?;
    worker.run_until(shared::shutdown::shutdown_signal()).await
}
