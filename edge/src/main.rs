use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = edge::Settings::parse();
    shared::telemetry::init_tracing("info", settings.telemetry.log_format);
    let edge = edge::Edge::build(settings).await?;
    edge.run_until(shared::shutdown::shutdown_signal()).await
}
