//! A deterministic simulator of a whole federation: England's 7 regional hubs, 152 authorities
//! and 1,200 care settings, driven through the protocol crate's own
//! [`Machine`](cpis_protocol::machine::Machine) (and [`Setting`](cpis_protocol::setting::Setting))
//! over a simulated network in virtual time, under faults and hostile members drawn at random
//! from a seed, with checkers for the invariants of docs/overview.md.
//!
//! # How it is built
//!
//! - [`cluster::Cluster`] is the core: every hub and authority as a machine with its in-memory
//!   disk, clock skew and writes not yet durable; the links; the event queue; the faults of the
//!   wire. Its API is narrow: cut, isolate, heal, crash, restart, wipe, send, command.
//! - Actors drive it, each with its own state and agenda: [`workload::Workload`] (plans and
//!   lookups, answers verified by the settings), [`faults::Faults`] (the swarm of faults and
//!   [`badinput`]), [`scenarios::ScenarioActor`] (a named scenario's own steps) and the
//!   [`adversary`] (a hostile hub, a hostile setting).
//! - [`checker::History`] observes what the cluster reports (durable writes, events) and every
//!   answer a setting checked, and holds the run to the invariants.
//! - [`sim::Sim`] wires them with one loop; [`run::run`] runs a seed or scenario and returns a
//!   [`report::RunReport`] with a trace hash: the same seed gives the same hash.
//!
//! # Example
//!
//! ```
//! use cpis_simulations::run::{run, LoadMode, RunConfig};
//! // A tiny federation (3 hubs, 6 authorities, 6 settings, 20 plans) for one faulty hour.
//! let config = RunConfig {
//!     seed: 7,
//!     scale: 0.002,
//!     plans: Some(20),
//!     hours: Some(1),
//!     load: LoadMode::Snapshot,
//!     intensity: 0.5,
//!     ..RunConfig::default()
//! };
//! let report = run(&config);
//! assert!(report.ok, "{:?} {:?}", report.lost, report.unexpected);
//! assert_eq!(report.trace_hash, run(&config).trace_hash);
//! ```
//!
//! The binary `cpis-sim` runs seeds, ranges of seeds and named scenarios; see
//! `docs/simulation.md`.

#![forbid(unsafe_code)]

pub mod adversary;
pub mod agenda;
pub mod assurance;
pub mod badinput;
pub mod checker;
pub mod cluster;
pub mod faults;
pub mod fnv;
pub mod human;
pub mod plots;
pub mod report;
pub mod run;
pub mod scenarios;
pub mod sim;
pub mod timeline;
pub mod workload;
pub mod world;
