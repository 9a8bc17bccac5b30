//! `cpis-node run --config FILE`: runs one hub or authority until SIGINT or SIGTERM.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    cpis_node::cli::main().await
}
