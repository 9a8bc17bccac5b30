//! The daemon's command line: `cpis-node run --config FILE` runs one hub or authority until
//! SIGINT or SIGTERM.

use crate::config::{LogFormat, NodeConfig};
use crate::runtime::RunningNode;
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "cpis-node", version, about = "A node of the child protection federation (hub or authority)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the node described by a config file.
    Run {
        /// The node's TOML config (see examples/).
        #[arg(long)]
        config: PathBuf,
    },
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Parses the command line and runs the node until it is told to stop.
pub async fn main() -> anyhow::Result<()> {
    let Command::Run { config } = Cli::parse().command;
    let config = NodeConfig::load(&config)?;
    init_logs(config.log_format);
    let mut node = RunningNode::start(config).await.context("starting the node")?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: stopping"),
        _ = term.recv() => tracing::info!("terminated: stopping"),
        _ = node.stopped() => anyhow::bail!("the node stopped on a fatal error (see the log)"),
    }
    node.shutdown().await;
    Ok(())
}
