//! The pure, deterministic core of the child protection federation: the records and their rules,
//! signatures, the directory, the wire, and the state machine of every role. No I/O, no clock, no
//! operating-system randomness: time comes in as a value, and every output goes out through a
//! queue the driver drains. The node (`cpis-node`), the test harness and the simulator
//! (`cpis-sim`) are three drivers of the very same [`Machine`](machine::Machine).
//!
//! # The call sequence
//!
//! A driver restores a machine from the rows of its store, then repeats: give it one input, then
//! drain every output.
//!
//! 1. **Restore**: [`Machine::restore`](machine::Machine::restore) with the node's code, identity,
//!    trusted directory, role configuration and every stored row (none for a new node).
//! 2. **Inputs**, as they happen:
//!    - [`handle_connected`](machine::Machine::handle_connected) /
//!      [`handle_disconnected`](machine::Machine::handle_disconnected) as connections come and go
//!      (the driver checked the peer's key in the handshake);
//!    - [`handle_message`](machine::Machine::handle_message) for every decoded frame, or
//!      [`handle_verified_lookup`](machine::Machine::handle_verified_lookup) for a setting's lookup
//!      whose signature the driver already checked beside its event loop;
//!    - [`handle_timeout`](machine::Machine::handle_timeout) once the time
//!      [`poll_timeout`](machine::Machine::poll_timeout) gave has come;
//!    - [`handle_command`](machine::Machine::handle_command) for an operator's command;
//!    - [`handle_durable`](machine::Machine::handle_durable) once writes are durable;
//!    - [`handle_read`](machine::Machine::handle_read) with a read request and the rows it asked
//!      for (one call for each request, even when the store held none of its keys).
//! 3. **Outputs**, after every input, until each queue is empty:
//!    - [`poll_write`](machine::Machine::poll_write): make each batch durable, **in order**, in one
//!      transaction, and only then call `handle_durable(batch.id)`. **Persist before you
//!      acknowledge**: a machine releases an answer, a receipt or a command's reply only once the
//!      write it depends on is durable, so a driver that reports durability early breaks the
//!      promise that nothing acknowledged is lost;
//!    - [`poll_transmit`](machine::Machine::poll_transmit): encode with [`wire::encode_frame`]
//!      and send to the peer (dropping is allowed: the protocol retries and resyncs);
//!    - [`poll_event`](machine::Machine::poll_event): log, count, alarm; close the connections of
//!      a peer named by [`Event::PeerNotAdmitted`](machine::Event::PeerNotAdmitted); hand
//!      [`Event::Replied`](machine::Event::Replied) to whoever sent the command;
//!    - [`poll_read`](machine::Machine::poll_read): read those keys of that table from the store
//!      (durable rows; a missing key is left out) and give the request and its rows to `handle_read`. A machine
//!      keeps in memory only what it needs for every input, and reads back the rest (a hub's
//!      delivered notifications, asked for again by an authority restored from an older copy;
//!      waiting notifications beyond its memory budget, when their turn comes).
//!
//! A care setting is not a machine but a client: [`setting::Setting`] signs lookups and checks
//! answers.
//!
//! # Example
//!
//! ```
//! use cpis_protocol::driver::MemDisk;
//! use cpis_protocol::harness::FederationSpec;
//! use cpis_protocol::machine::{Command, CommandId, Machine, RoleConfig};
//! use cpis_protocol::records::{Plan, PlanType};
//! use cpis_protocol::{ids::{NhsNumber, OdsCode, PlanRef}, time::Date};
//!
//! let fed = FederationSpec::new("doc").hub("HUB01").authority("204", "Hackney", &["HUB01"]).build();
//! let (code, now) = (OdsCode::parse("204").unwrap(), fed.start);
//! let config = RoleConfig::Authority(Default::default());
//! let mut disk = MemDisk::new();
//! let mut authority = Machine::restore(code, fed.identity("204"), fed.trusted(), config, disk.rows(), now).unwrap();
//! let plan = Plan {
//!     reference: PlanRef::parse("LAC-1").unwrap(),
//!     nhs: NhsNumber::parse("943 476 5919").unwrap(),
//!     plan_type: PlanType::LookedAfter,
//!     start: Date::parse("2026-01-05").unwrap(),
//!     end: None,
//!     due: None,
//!     withdrawn: false,
//! };
//! authority.handle_command(CommandId(1), Command::RecordPlan(plan), now);
//! // Persist every write, then say so: only then is the reply released.
//! while let Some(batch) = authority.poll_write() {
//!     disk.apply(&batch);
//!     authority.handle_durable(batch.id, now);
//! }
//! let replied = std::iter::from_fn(|| authority.poll_event())
//!     .any(|e| matches!(e, cpis_protocol::machine::Event::Replied { command: CommandId(1), .. }));
//! assert!(replied);
//! ```
#![forbid(unsafe_code)]

pub mod authority;
pub mod codec;
pub mod directory;
pub mod driver;
pub mod feed;
#[cfg(any(test, feature = "test-support"))]
pub mod harness;
pub mod hub;
pub mod ids;
pub mod machine;
pub mod merkle;
pub mod records;
pub mod refusal;
pub mod schema;
pub mod setting;
pub mod sign;
pub mod time;
pub mod wire;
