//! The federation daemon: drives the protocol's state machines over QUIC (mutual TLS 1.3 with
//! member keys) and keeps their data in redb.
//!
//! Start a node with [`runtime::RunningNode::start`] from a [`config::NodeConfig`] (the
//! `cpis-node run --config FILE` binary does exactly this). The node restores its machine from
//! the store, listens (hubs), dials its peers, and serves the local operator API (docs/api.md).
pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod import;
pub mod metrics;
pub mod net;
pub mod runtime;
pub mod status;
pub mod store;
pub mod transport;
