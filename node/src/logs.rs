//! Log lines that others can cause at will (anyone who reaches the port, with a refused
//! handshake; a member, with refused messages or sessions turned away), held to a rate: each kind
//! writes at most [`LINES_PER_MINUTE`] lines a minute, and the first line after a pause says how
//! many of its kind were held back (`held_back`). The metrics still count every one a peer
//! causes; refused sign-ins have only these lines.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Lines of one kind a node writes in a minute at most.
pub const LINES_PER_MINUTE: u32 = 20;
const WINDOW: Duration = Duration::from_secs(60);

/// Writes a line with `tracing`'s `$level` if `$throttle` lets it, with `held_back` among its
/// fields: `throttled!(logs::BAD_FRAME, warn!(%peer, "bad frame"))`.
macro_rules! throttled {
    ($throttle:expr, $level:ident!($($line:tt)*)) => {
        if let Some(held_back) = $throttle.admit() {
            tracing::$level!(held_back, $($line)*);
        }
    };
}
pub(crate) use throttled;

/// A connection refused in its handshake, or after it (a key the directory does not admit).
pub static CONNECTION_REFUSED: Throttle = Throttle::new();
/// A bad frame from a member or a setting, or more frames than a lookup session holds.
pub static BAD_FRAME: Throttle = Throttle::new();
/// A setting's session turned away (too many open) or let go (its frames too slow).
pub static SESSION_TURNED_AWAY: Throttle = Throttle::new();
/// A frame dropped because its peer's queue was full.
pub static FRAME_DROPPED: Throttle = Throttle::new();
/// Something a peer sent that the protocol refused: a message, a lookup, a feed batch.
pub static REFUSED: Throttle = Throttle::new();
/// A directory a peer passed on that was refused (not a fork: that is an error, never held back).
pub static DIRECTORY_REFUSED: Throttle = Throttle::new();
/// A peer's refusal of what we sent (a council refusing a notification, say): apart, so that
/// what a hostile member sends cannot crowd these out.
pub static REFUSED_BY_PEER: Throttle = Throttle::new();

/// A sign-in refused (a wrong password, a locked name): anyone who reaches the pages can cause one.
pub static SIGN_IN_REFUSED: Throttle = Throttle::new();

/// The rate of one kind of line, shared by every task of the process that writes it.
pub struct Throttle {
    window: Mutex<Window>,
}

struct Window {
    started: Option<Instant>,
    lines: u32,
    held_back: u64,
}

impl Throttle {
    pub const fn new() -> Throttle {
        Throttle { window: Mutex::new(Window { started: None, lines: 0, held_back: 0 }) }
    }

    /// Whether a line of this kind may be written now: if so, how many were held back since the
    /// last one written.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        if w.started.is_none_or(|s| now.saturating_duration_since(s) >= WINDOW) {
            w.started = Some(now);
            w.lines = 0;
        }
        if w.lines >= LINES_PER_MINUTE {
            w.held_back = w.held_back.saturating_add(1);
            return None;
        }
        w.lines += 1;
        Some(std::mem::take(&mut w.held_back))
    }
}

impl Default for Throttle {
    fn default() -> Throttle {
        Throttle::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_writes_its_lines_a_minute_then_says_how_many_it_held_back() {
        let throttle = Throttle::new();
        let start = Instant::now();
        let written = (0..100).filter(|_| throttle.admit_at(start).is_some()).count();
        assert_eq!(written, LINES_PER_MINUTE as usize);
        assert_eq!(throttle.admit_at(start + Duration::from_secs(59)), None, "still the same minute");
        assert_eq!(throttle.admit_at(start + WINDOW), Some(100 - u64::from(LINES_PER_MINUTE) + 1));
        assert_eq!(throttle.admit_at(start + WINDOW), Some(0), "counted once");
    }

    #[test]
    fn kinds_are_held_back_apart() {
        let (a, b) = (Throttle::new(), Throttle::new());
        let now = Instant::now();
        for _ in 0..=LINES_PER_MINUTE {
            a.admit_at(now);
        }
        assert_eq!(a.admit_at(now), None);
        assert_eq!(b.admit_at(now), Some(0));
    }
}
