use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = edge::Settings::parse();
    let telemetry = shared::telemetry::init("info", &settings.telemetry, "edge")?;
    let edge = edge::Edge::build(settings).await?;
    let served = edge.run_until(shared::shutdown::shutdown_signal()).await;
    telemetry.shutdown();
    served
}
