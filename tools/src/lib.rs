//! The `cpis` command line, as a library: what administrators, councils and care settings do,
//! and the one-command demonstration.
//!
//! - [`admin`]: create a federation, enrol members, sign and publish directory versions;
//! - [`council`]: plans, contacts and the inbox, through an authority node's local API ([`api`]);
//! - [`care`]: what a clinician sees of a lookup (the lookup itself is
//!   [`cpis_node::client::lookup`]);
//! - [`gateway`]: a setting gateway's people and calling systems;
//! - [`status`]: a node's status;
//! - [`demo`]: the federation's founding story (docs/overview.md), played on an embedded federation.
//!
//! Every reporting command prints either text for people or one JSON document whose shape is
//! documented in `docs/cli.md`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod care;
pub mod council;
pub mod demo;
pub mod gateway;
pub mod render;
pub mod show;
pub mod status;
