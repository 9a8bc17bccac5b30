//! What the event loop reacts to, and the limits on how much may wait for it. The connection
//! tasks (`net`) and the operator API (`api`) only ever send these; the loop (`runtime`) owns all
//! state and answers through the channels they carry.

use crate::status::{PlansHeld, Snapshot};
use cpis_protocol::feed::FeedHead;
use cpis_protocol::ids::{OdsCode, PlanRef};
use cpis_protocol::machine::{Command, Reply};
use cpis_protocol::records::AccessEvent;
use cpis_protocol::sign::{PublicKey, Verified};
use cpis_protocol::wire::{Message, VerifiedBatch};
use tokio::sync::{OwnedSemaphorePermit, oneshot};

/// Inputs waiting for the event loop before senders wait (back-pressure onto the network).
pub const INPUT_QUEUE_MAX: usize = 16_384;
/// Bytes of decoded frames waiting for the event loop before connection readers wait.
pub const INPUT_QUEUE_BYTES_MAX: usize = 64 << 20;
/// Of those, the most one connection may hold (so that one peer cannot fill the queue).
pub const PEER_INPUT_BYTES_MAX: usize = 8 << 20;

/// What a connection hands the event loop.
pub enum Delivered {
    /// A decoded message.
    Message(Message),
    /// A care setting's lookup whose signature the connection's task already checked with the
    /// key the directory lists under its key id (so that verification runs beside the event
    /// loop, not on it).
    VerifiedLookup(Verified<AccessEvent>),
    /// A feed batch whose entries' signatures the connection's task already checked, likewise.
    VerifiedFeed(VerifiedBatch),
    /// An authority's head whose signature the connection's task already checked, likewise.
    VerifiedHead(Verified<FeedHead>),
}

/// How a connection carries our frames.
pub enum Link {
    /// A member (hub or authority): one stream each way for the life of the connection.
    Member,
    /// One lookup session of a care setting: a bidirectional stream answered once.
    Setting,
}

/// Everything the event loop reacts to.
pub enum Input {
    /// A member or a setting session connected and was admitted in the handshake.
    Connected {
        peer: OdsCode,
        key: PublicKey,
        conn_id: u64,
        link: Link,
        /// Frames towards the peer (whole frames, as `wire::encode_frame` made them).
        out: crate::net::FrameSender,
        conn: quinn::Connection,
    },
    /// That connection (or setting session) ended.
    Disconnected { peer: OdsCode, conn_id: u64 },
    /// A decoded message from a connection. The permits hold its bytes against
    /// [`INPUT_QUEUE_BYTES_MAX`] and the connection's [`PEER_INPUT_BYTES_MAX`] until the loop has
    /// handled it.
    Frame { from: OdsCode, conn_id: u64, message: Box<Delivered>, _bytes: [OwnedSemaphorePermit; 2] },
    /// A connection was refused (for metrics).
    Refused { reason: &'static str },
    /// A frame could not be decoded and its connection was closed (for metrics).
    BadFrame,
    /// An operator's command; the reply comes back once it is safe to give.
    Command { command: Command, reply: oneshot::Sender<Reply> },
    /// A snapshot of the node for status and metrics.
    Status(oneshot::Sender<Box<Snapshot>>),
    /// How far every hub holds an authority's feed, and the sequence of each named plan's latest
    /// version (the plans list and pages).
    PlansHeld { references: Vec<PlanRef>, reply: oneshot::Sender<PlansHeld> },
}

/// What the store's writer reports, on its own channel (never held back by input limits).
pub enum Durability {
    /// Every write up to this id is durable.
    Durable { write_id: u64 },
    /// The store failed: the node must stop rather than acknowledge what it cannot keep.
    Failed(String),
}
