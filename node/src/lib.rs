//! The federation daemon: drives the protocol's [`Machine`](cpis_protocol::machine::Machine)
//! over QUIC (mutual TLS 1.3 with member keys) and keeps its data in redb.
//!
//! Start a node with [`runtime::RunningNode::start`] from a [`config::NodeConfig`] (the
//! `cpis-node run --config FILE` binary does exactly this). The node restores its machine from
//! the store, listens (hubs), dials its peers, and serves the local operator API (docs/api.md).
//!
//! The modules depend on each other in one direction: `runtime` (the event loop, which owns all
//! state) uses `net` (connections), `store`, `status` and `metrics`; `net` and `api` only send
//! [`inputs::Input`]s to it.
pub mod accounts;
pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod council;
pub mod gateway;
pub mod handover;
pub mod import;
pub mod inputs;
pub mod jobs;
pub mod logs;
pub mod metrics;
pub mod net;
pub mod runtime;
pub mod status;
pub mod store;
pub mod transport;
pub mod web;
