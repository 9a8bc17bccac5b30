//! The daemon's command line: `cpis-node run --config FILE` runs one hub, authority or care
//! setting gateway (the config's `role`) until SIGINT or SIGTERM.

use crate::config::{ConfigError, LogFormat, NodeConfig, SettingConfig};
use crate::gateway::RunningGateway;
use crate::runtime::RunningNode;
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// The release, the protocol it speaks and the store schema it reads: an upgrade that changes
/// either is told apart by this line (`cpis-node --version`).
fn version() -> &'static str {
    let text = format!(
        "{} (protocol {}, store schema {})",
        env!("CARGO_PKG_VERSION"),
        cpis_protocol::wire::PROTOCOL_VERSION,
        cpis_protocol::schema::SCHEMA_VERSION
    );
    // Once per run, when the command line is parsed.
    Box::leak(text.into_boxed_str())
}

#[derive(Parser)]
#[command(
    name = "cpis-node",
    version = version(),
    about = "A node of the child protection federation (hub, authority or setting gateway)"
)]
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
    /// Loads a config and every file it names (keys, directory, certificates) without starting
    /// anything: exit 0 if the node could start from it, 78 if not (a service manager's
    /// `ExecStartPre`).
    CheckConfig {
        /// The node's TOML config.
        #[arg(long)]
        config: PathBuf,
    },
    /// Asks the running node for a consistent copy of its store (safe while it writes).
    Backup {
        /// The node's TOML config (its data_dir holds the API's address and token).
        #[arg(long)]
        config: PathBuf,
        /// The backup file to create (never overwritten).
        #[arg(long)]
        to: PathBuf,
    },
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Colours only on a terminal: a log file must stay greppable (`grep peer=HUBN`).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Exit code: the node ran and stopped when told to.
pub const EXIT_OK: u8 = 0;
/// Exit code: the node failed while starting or running (see the message and the log).
pub const EXIT_FAILED: u8 = 1;
/// Exit code: the config file (or a file it names) is unusable; nothing was started
/// (`EX_CONFIG` of sysexits.h: systemd units do not restart on it).
pub const EXIT_BAD_CONFIG: u8 = 78;

/// The whole program: runs [`main`] and turns its outcome into an exit code, printing an error
/// as one line of causes (never in Rust's debug form).
pub fn run() -> std::process::ExitCode {
    let outcome = tokio::runtime::Runtime::new().map_err(anyhow::Error::from).and_then(|rt| rt.block_on(main()));
    match outcome {
        Ok(()) => std::process::ExitCode::from(EXIT_OK),
        Err(e) => {
            // Each cause once: an error whose text already says its cause is not followed by it.
            let mut text = String::new();
            for cause in e.chain().map(ToString::to_string) {
                if !text.contains(&cause) {
                    text += &if text.is_empty() { cause } else { format!(": {cause}") };
                }
            }
            eprintln!("error: {text}");
            let config = e.chain().any(|c| c.downcast_ref::<crate::config::ConfigError>().is_some());
            std::process::ExitCode::from(if config { EXIT_BAD_CONFIG } else { EXIT_FAILED })
        }
    }
}

/// Parses the command line and runs the node until it is told to stop.
pub async fn main() -> anyhow::Result<()> {
    let config = match Cli::parse().command {
        Command::Run { config } => config,
        Command::CheckConfig { config } => return check_config(&config),
        Command::Backup { config, to } => return backup(&config, &to).await,
    };
    if is_setting_config(&config)? {
        return run_gateway(&config).await;
    }
    let config = NodeConfig::load(&config)?;
    init_logs(config.log_format);
    let mut node = RunningNode::start(config).await.context("starting the node")?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tell_service_manager(sd_notify::NotifyState::Ready);
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: stopping"),
        _ = term.recv() => tracing::info!("terminated: stopping"),
        _ = node.stopped() => anyhow::bail!("the node stopped on a fatal error (see the log)"),
    }
    tell_service_manager(sd_notify::NotifyState::Stopping);
    node.shutdown().await;
    Ok(())
}

/// Tells systemd (a `Type=notify` unit) that the node is ready or stopping; nothing when not
/// run by systemd (no `NOTIFY_SOCKET`).
fn tell_service_manager(state: sd_notify::NotifyState) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!(error = %e, "could not notify the service manager");
    }
}

/// `cpis-node check-config`: everything `run` reads before it starts, and nothing more.
fn check_config(path: &std::path::Path) -> anyhow::Result<()> {
    if is_setting_config(path)? {
        let config = SettingConfig::load(path)?;
        config.check_files()?;
        println!("{}: a valid setting gateway config for {}", path.display(), config.code);
    } else {
        let config = NodeConfig::load(path)?;
        config.check_files()?;
        println!("{}: a valid {} config for {}", path.display(), config.role.role().name(), config.code);
    }
    Ok(())
}

/// Whether the config file says `role = "setting"` (a setting gateway's config).
fn is_setting_config(path: &std::path::Path) -> Result<bool, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    let value: toml::Table =
        toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
    Ok(value.get("role").and_then(|r| r.as_str()) == Some("setting"))
}

async fn run_gateway(path: &std::path::Path) -> anyhow::Result<()> {
    let config = SettingConfig::load(path)?;
    init_logs(config.gateway.log_format);
    let gateway = RunningGateway::start(config).await.context("starting the setting gateway")?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tell_service_manager(sd_notify::NotifyState::Ready);
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: stopping"),
        _ = term.recv() => tracing::info!("terminated: stopping"),
    }
    tell_service_manager(sd_notify::NotifyState::Stopping);
    gateway.shutdown().await;
    Ok(())
}

/// `cpis-node backup`: one `POST /backup` to the running node's loopback API.
async fn backup(config: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = NodeConfig::load(config)?;
    let to = std::path::absolute(to).context("the backup file's path")?;
    let addr =
        std::fs::read_to_string(config.api_addr_path()).context("reading the node's API address (is it running?)")?;
    let token = std::fs::read_to_string(config.token_path()).context("reading the node's API token")?;
    let body = serde_json::json!({ "to": to }).to_string();
    let mut stream =
        tokio::net::TcpStream::connect(addr.trim()).await.context("reaching the node's API (is it running?)")?;
    let request = format!(
        "POST /backup HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        addr.trim(),
        token.trim(),
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tokio::time::timeout(std::time::Duration::from_secs(600), stream.read_to_string(&mut response))
        .await
        .context("the node did not answer within 10 minutes")??;
    let (head, answer) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if !head.starts_with("HTTP/1.1 200") {
        anyhow::bail!("the backup was refused: {answer}");
    }
    println!("{answer}");
    Ok(())
}
