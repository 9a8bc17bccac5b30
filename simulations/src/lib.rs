//! A deterministic simulator of a whole federation: England's 7 regional hubs, 152 authorities
//! and 1,200 care settings, driven through the protocol crate's own state machines
//! ([`cpis_protocol::hub::Hub`], [`cpis_protocol::authority::Authority`],
//! [`cpis_protocol::setting::Setting`]) over a simulated network in virtual time, under faults
//! drawn at random from a seed, with checkers for the invariants of DESIGN §7.
//!
//! # How a run goes
//!
//! 1. [`world::World::build`] lays out the members for a scale (1.0 is England) and signs the
//!    directory with the test roots.
//! 2. Each authority records its caseload; the caseloads replicate to every hub (or are copied
//!    to the hubs' disks with `LoadMode::Snapshot`).
//! 3. The measured period: [`workload`] starts, ends and withdraws plans and makes lookups at
//!    care settings; [`faults`] loses, duplicates and delays frames, cuts links and regions,
//!    crashes nodes (writes not yet durable are lost), skews clocks and injects bad input.
//! 4. Everything heals; [`checker::History`] checks that within the liveness bound every hub
//!    holds every acknowledged plan, every answered lookup of a flagged child has put exactly
//!    one notification in each owning authority's inbox, and nothing was forged or shown after
//!    it ended.
//! 5. A [`report::RunReport`] gives the figures and a trace hash; the same seed gives the same
//!    hash.
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

pub mod badinput;
pub mod checker;
pub mod faults;
pub mod fnv;
pub mod report;
pub mod run;
pub mod scenarios;
pub mod sim;
pub mod workload;
pub mod world;
