//! The hub's replica: feeds accepted in order, equivocations caught, anti-entropy by high-water
//! marks, pruning past visibility.

use super::{After, Hub, OriginFeed};
use crate::codec;
use crate::directory::Role;
use crate::feed::{EntryBody, EntryKey, SignedEntry, verify_entry};
use crate::ids::OdsCode;
use crate::machine::{Event, entry_key};
use crate::store::{StoreOp, Table};
use crate::time::{DAY_MS, Timestamp};
use crate::wire::{BATCH_ENTRIES_MAX, FeedBatch, HighWater, Message};

/// Why a feed batch is refused; nothing changes.
#[derive(Debug, thiserror::Error)]
pub(super) enum BatchError {
    #[error("batch bounds are wrong: after {after}, upto {upto}")]
    Bounds { after: u64, upto: u64 },
    #[error("entry {seq} is outside the batch or out of order")]
    Order { seq: u64 },
    #[error("entry of {0} in a batch of another origin")]
    Origin(OdsCode),
    #[error("an authority may send only its own feed")]
    NotOwnFeed,
    #[error("{0} is not a member that writes a feed")]
    UnknownOrigin(OdsCode),
    #[error(transparent)]
    Entry(#[from] crate::feed::EntryError),
    #[error("equivocation at sequence {0}")]
    Equivocation(u64),
    #[error("entry {0} equivocates (already proven): refused")]
    KnownEquivocation(u64),
}

impl Hub {
    /// Puts an entry into memory and the indexes (restore, or after verification).
    pub(super) fn index_entry(&mut self, e: SignedEntry) {
        let (origin, seq) = (e.body.origin.clone(), e.body.seq);
        if let Some(old) = self.latest.get(&(origin.clone(), e.body.key())).copied() {
            if old >= seq {
                return;
            }
            self.remove_entry(&origin, old);
        }
        match &e.body.body {
            EntryBody::Plan(p) => {
                self.plans_by_nhs.entry(p.nhs).or_default().insert((origin.clone(), p.reference.clone()));
            }
            EntryBody::Visit(v) => {
                self.visits_by_nhs.entry(v.body.nhs).or_default().insert((v.body.at, origin.clone(), seq));
            }
            EntryBody::Contacts(_) => {}
        }
        self.latest.insert((origin.clone(), e.body.key()), seq);
        self.feeds.entry(origin).or_default().entries.insert(seq, e);
    }

    /// Takes an entry out of memory and the indexes; returns the store op that deletes it.
    pub(super) fn remove_entry(&mut self, origin: &OdsCode, seq: u64) -> Option<StoreOp> {
        let e = self.feeds.get_mut(origin)?.entries.remove(&seq)?;
        let key = e.body.key();
        if self.latest.get(&(origin.clone(), key.clone())) == Some(&seq) {
            self.latest.remove(&(origin.clone(), key));
        }
        match &e.body.body {
            EntryBody::Plan(p) => {
                if let Some(set) = self.plans_by_nhs.get_mut(&p.nhs) {
                    set.remove(&(origin.clone(), p.reference.clone()));
                    if set.is_empty() {
                        self.plans_by_nhs.remove(&p.nhs);
                    }
                }
            }
            EntryBody::Visit(v) => {
                if let Some(set) = self.visits_by_nhs.get_mut(&v.body.nhs) {
                    set.remove(&(v.body.at, origin.clone(), seq));
                    if set.is_empty() {
                        self.visits_by_nhs.remove(&v.body.nhs);
                    }
                }
            }
            EntryBody::Contacts(_) => {}
        }
        Some(StoreOp::Delete { table: Table::Entries, key: entry_key(origin, seq) })
    }

    pub(super) fn on_sync(&mut self, from: &OdsCode, directory_version: u64, have: &[HighWater], now: Timestamp) {
        if directory_version < self.dir.version() {
            self.out.send(from, Message::Directories(self.dir.after(directory_version)));
        }
        let role = self.peers.get(from).copied();
        // Freshness is taken from hubs, and from an authority for its own feed only.
        let trusted = |h: &&HighWater| role == Some(Role::Hub) || (role == Some(Role::Authority) && h.origin == *from);
        for h in have.iter().filter(trusted) {
            if let Some(feed) = self.feeds.get_mut(&h.origin)
                && feed.hw >= h.seq
            {
                // The sender knew of nothing newer at h.as_of (an authority's own word is now).
                let as_of = if role == Some(Role::Authority) { now } else { h.as_of.min(now) };
                feed.as_of = feed.as_of.max(as_of);
            }
        }
        if role == Some(Role::Authority)
            && let Some(h) = have.iter().find(|h| h.origin == *from)
            && self.feeds.get(from).is_none_or(|f| f.hw < h.seq)
        {
            // The authority has more than we do: ask for it.
            let seq = self.feeds.get(from).map_or(0, |f| f.hw);
            let have = vec![HighWater { origin: from.clone(), seq, as_of: now }];
            self.out.send(from, Message::Sync { directory_version: self.dir.version(), have });
        }
        if role == Some(Role::Hub) {
            self.send_missing(from, have);
        }
    }

    /// Sends a hub every entry it lacks according to its high-water marks.
    fn send_missing(&mut self, to: &OdsCode, have: &[HighWater]) {
        let theirs: std::collections::HashMap<&OdsCode, u64> = have.iter().map(|h| (&h.origin, h.seq)).collect();
        let mut batches = Vec::new();
        for (origin, feed) in &self.feeds {
            let their = theirs.get(origin).copied().unwrap_or(0);
            if feed.hw <= their {
                continue;
            }
            let live: Vec<&SignedEntry> = feed.entries.range(their + 1..).map(|(_, e)| e).collect();
            let mut after = their;
            let chunks: Vec<&[&SignedEntry]> = live.chunks(BATCH_ENTRIES_MAX).collect();
            if chunks.is_empty() {
                batches.push(FeedBatch {
                    origin: origin.clone(),
                    after,
                    upto: feed.hw,
                    entries: vec![],
                    as_of: feed.as_of,
                });
            }
            for (i, chunk) in chunks.iter().enumerate() {
                let upto = if i + 1 == chunks.len() { feed.hw } else { chunk[chunk.len() - 1].body.seq };
                let entries = chunk.iter().map(|e| (*e).clone()).collect();
                batches.push(FeedBatch { origin: origin.clone(), after, upto, entries, as_of: feed.as_of });
                after = upto;
            }
        }
        for batch in batches {
            self.out.send(to, Message::Feed(batch));
        }
    }

    pub(super) fn on_feed(&mut self, from: &OdsCode, batch: FeedBatch, now: Timestamp) {
        let origin = batch.origin.clone();
        let hw = self.feeds.get(&origin).map_or(0, |f| f.hw);
        if batch.after > hw {
            // A gap: ask the sender for everything after our mark.
            let have = self.high_waters();
            return self.out.send(from, Message::Sync { directory_version: self.dir.version(), have });
        }
        match self.check_batch(from, &batch, hw) {
            Ok(new) => self.apply_batch(from, batch, new, hw, now),
            Err(BatchError::Equivocation(seq)) => {
                self.out.event(Event::Equivocation { origin, seq, from: from.clone() })
            }
            Err(e) => self.out.event(Event::BatchRefused { from: from.clone(), origin, reason: e.to_string() }),
        }
    }

    /// Checks a whole batch before anything changes. Returns the verified entries above `hw`.
    fn check_batch(&mut self, from: &OdsCode, batch: &FeedBatch, hw: u64) -> Result<Vec<SignedEntry>, BatchError> {
        if batch.after >= batch.upto || batch.entries.len() > BATCH_ENTRIES_MAX {
            return Err(BatchError::Bounds { after: batch.after, upto: batch.upto });
        }
        if self.peers.get(from) == Some(&Role::Authority) && batch.origin != *from {
            return Err(BatchError::NotOwnFeed);
        }
        let role = self.dir.trusted.member(&batch.origin).map(|m| m.role);
        if !matches!(role, Some(Role::Authority | Role::Hub)) {
            return Err(BatchError::UnknownOrigin(batch.origin.clone()));
        }
        let mut prev = batch.after;
        let mut new = Vec::new();
        for e in &batch.entries {
            if e.body.origin != batch.origin {
                return Err(BatchError::Origin(e.body.origin.clone()));
            }
            if e.body.seq <= prev || e.body.seq > batch.upto {
                return Err(BatchError::Order { seq: e.body.seq });
            }
            prev = e.body.seq;
            let held = self.feeds.get(&batch.origin).and_then(|f| f.entries.get(&e.body.seq));
            match held {
                Some(mine) if mine.body == e.body => continue,
                Some(mine) => {
                    let mine = mine.clone();
                    verify_entry(&self.dir.trusted, e.clone())?;
                    if !self.keep_equivocation(mine, e.clone()) {
                        return Err(BatchError::KnownEquivocation(e.body.seq));
                    }
                    return Err(BatchError::Equivocation(e.body.seq));
                }
                // Below the mark and not held: superseded or pruned here, skip it; except our own
                // entries, which a hub restored from an empty store takes back from its peers.
                None if e.body.seq <= hw && batch.origin != self.code => continue,
                None => new.push(verify_entry(&self.dir.trusted, e.clone())?.into_signed()),
            }
        }
        Ok(new)
    }

    /// Keeps the proof of an equivocation; false if this one was already proven.
    fn keep_equivocation(&mut self, mine: SignedEntry, theirs: SignedEntry) -> bool {
        if !self.equivocations.insert((mine.body.origin.clone(), mine.body.seq)) {
            return false;
        }
        let key = entry_key(&mine.body.origin, mine.body.seq);
        let value = codec::encode(&(mine, theirs));
        self.out.write(vec![StoreOp::Put { table: Table::Equivocations, key, value }], vec![]);
        true
    }

    fn apply_batch(&mut self, from: &OdsCode, batch: FeedBatch, new: Vec<SignedEntry>, hw: u64, now: Timestamp) {
        let origin = batch.origin.clone();
        // Only the origin's own word moves the mark past the entries it signed: a relaying hub
        // cannot make others skip entries they have not seen.
        let last_signed = batch.entries.last().map_or(0, |e| e.body.seq);
        let claimed = if *from == origin { batch.upto } else { batch.upto.min(last_signed) };
        let upto = claimed.max(hw);
        let mut ops = Vec::new();
        for e in &new {
            ops.push(StoreOp::Put {
                table: Table::Entries,
                key: entry_key(&origin, e.body.seq),
                value: codec::encode(e),
            });
            if let Some(old) = self.latest.get(&(origin.clone(), e.body.key())).copied() {
                ops.extend(self.remove_entry(&origin, old));
            }
            self.index_entry(e.clone());
        }
        // The sender's copy was current at its as_of; the origin's own word is current now.
        let fresh = if self.peers.get(from) == Some(&Role::Authority) { now } else { batch.as_of };
        let feed: &mut OriginFeed = self.feeds.entry(origin.clone()).or_default();
        if batch.upto >= feed.hw {
            feed.as_of = feed.as_of.max(fresh.min(now));
        }
        let moved = upto != feed.hw;
        if moved {
            feed.hw = upto;
            let key = origin.as_str().as_bytes().to_vec();
            ops.push(StoreOp::Put { table: Table::HighWater, key, value: upto.to_be_bytes().to_vec() });
        }
        if ops.is_empty() {
            return;
        }
        let count = new.len();
        let as_of = feed.as_of;
        let mut after =
            vec![After::Event(Event::EntriesAccepted { origin: origin.clone(), from: from.clone(), count, upto })];
        if moved {
            let forward = FeedBatch { origin, after: hw, upto, entries: new, as_of };
            after.push(After::Forward(forward, Some(from.clone())));
        }
        self.out.write(ops, after);
    }

    /// Sends newly accepted entries on to every connected hub but the one they came from.
    pub(super) fn forward(&mut self, batch: FeedBatch, except: Option<&OdsCode>) {
        let hubs: Vec<OdsCode> =
            self.peers.iter().filter(|(p, r)| **r == Role::Hub && Some(*p) != except).map(|(p, _)| p.clone()).collect();
        for hub in hubs {
            self.out.send(&hub, Message::Feed(batch.clone()));
        }
    }

    /// Drops plan summaries past visibility (data minimisation) and visits past retention.
    pub(super) fn prune(&mut self, now: Timestamp) {
        let today = now.date();
        let visit_cutoff = now.minus_ms(self.config.visit_retention_days.saturating_mul(DAY_MS));
        let tombstone_cutoff = now.minus_ms(self.config.tombstone_retention_days.saturating_mul(DAY_MS));
        let doomed: Vec<(OdsCode, u64)> = self
            .entries()
            .filter(|e| match &e.body.body {
                EntryBody::Plan(p) => !p.visible_on(today) && e.body.at < tombstone_cutoff,
                EntryBody::Visit(v) => v.body.at < visit_cutoff,
                EntryBody::Contacts(_) => false,
            })
            .map(|e| (e.body.origin.clone(), e.body.seq))
            .collect();
        let ops: Vec<StoreOp> = doomed.into_iter().filter_map(|(o, s)| self.remove_entry(&o, s)).collect();
        if !ops.is_empty() {
            self.out.write(ops, vec![]);
        }
        let window = self.config.clock_skew_max_ms.saturating_mul(2);
        self.recent_lookups.retain(|_, (at, _)| now.since(*at) <= window);
    }

    /// The signed contacts entry of an authority, if its feed has one.
    pub(super) fn contacts_entry(&self, authority: &OdsCode) -> Option<&SignedEntry> {
        self.feed_entry(authority, EntryKey::Contacts)
    }
}
