//! The node daemon, built inside the test crate so that tests can run it as a real process
//! (and kill it).
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test support: a failed precondition panics.

fn main() -> std::process::ExitCode {
    cpis_node::cli::run()
}
