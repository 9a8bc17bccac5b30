//! A timed queue: what an actor (or the cluster core) has to do, and when, in true time.
//!
//! Ties are broken by the order in which things were put in, so a run never depends on how a
//! heap happens to order equal keys.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

struct Item<E> {
    at: u64,
    seq: u64,
    ev: E,
}

impl<E> PartialEq for Item<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<E> Eq for Item<E> {}
impl<E> PartialOrd for Item<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<E> Ord for Item<E> {
    // Reversed: the heap pops the earliest, ties in the order they were put in.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Most things an agenda holds; past it new ones are dropped and counted (a run that drops any
/// fails).
pub const AGENDA_MAX: usize = 1 << 24;

/// Things to do at given times.
pub struct Agenda<E> {
    heap: BinaryHeap<Item<E>>,
    next_seq: u64,
    dropped: u64,
}

impl<E> Default for Agenda<E> {
    fn default() -> Self {
        Agenda { heap: BinaryHeap::new(), next_seq: 0, dropped: 0 }
    }
}

impl<E> Agenda<E> {
    pub fn new() -> Self {
        Agenda::default()
    }

    /// Puts `ev` in for time `at`.
    pub fn at(&mut self, at: u64, ev: E) {
        if self.heap.len() >= AGENDA_MAX {
            self.dropped += 1;
            return;
        }
        self.next_seq += 1;
        self.heap.push(Item { at, seq: self.next_seq, ev });
    }

    /// When the next thing is due.
    pub fn next_at(&self) -> Option<u64> {
        self.heap.peek().map(|i| i.at)
    }

    /// Takes the next thing out, with its time.
    pub fn pop(&mut self) -> Option<(u64, E)> {
        self.heap.pop().map(|i| (i.at, i.ev))
    }

    /// How many things were dropped because the agenda was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
#[allow(non_snake_case)] // Test names read as specifications: situation__expectation.
mod tests {
    use super::*;

    #[test]
    fn earliest_first__ties_in_the_order_put_in() {
        let mut a = Agenda::new();
        a.at(5, "b");
        a.at(3, "a");
        a.at(5, "c");
        assert_eq!(a.pop(), Some((3, "a")));
        assert_eq!(a.pop(), Some((5, "b")));
        assert_eq!(a.pop(), Some((5, "c")));
        assert_eq!(a.pop(), None);
    }
}
