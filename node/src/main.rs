//! `cpis-node run --config FILE`: runs one hub or authority until SIGINT or SIGTERM.

fn main() -> std::process::ExitCode {
    cpis_node::cli::run()
}
