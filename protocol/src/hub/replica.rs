//! The hub's replicas: authorities' feeds taken only in whole runs that reproduce the
//! authority's signed head; hubs' visit feeds taken only from the hub that made them;
//! anti-entropy by digests and marks; pruning of old tombstones and visits.

use super::{After, Hub, InBatch, Incoming, PeerMarks, Replica, Staging};
use crate::authority::{FEED_ENTRIES_MAX, run_batches};
use crate::codec;
use crate::directory::Role;
use crate::feed::{Applied, EntryBody, FeedHead, LiveFeed, SignedEntry, SignedHead, verify_entry};
use crate::ids::{LookupId, OdsCode};
use crate::machine::{Event, Transmit};
use crate::refusal::Refusal;
use crate::schema::{self, StoreOp};
use crate::sign::Verified;
use crate::time::{DAY_MS, Timestamp};
use crate::wire::{BATCH_ENTRIES_MAX, DIGEST_BUCKETS, FeedBatch, Mark, Message, bucket_of};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A rough size of one entry on the wire, for a sync reply's byte budget.
const ENTRY_BYTES_ESTIMATE: usize = 320;

/// How long a run sent to a peer hub is not sent again up to the same point: a long run takes
/// seconds to reach the peer and be checked there, and every sync meanwhile (one a second, by
/// default) would otherwise send it whole once more; nor can a peer that names other marks in
/// each sync draw it again and again. A run lost on the way goes again after this, or at once if
/// the peer connects again.
pub(super) const RUN_RESEND_MS: u64 = 30_000;

/// A sync's scope when it covers every origin (a [`Message::Sync`]).
pub(super) const ALL_BUCKETS: u16 = u16::MAX;

fn in_scope(origin: &OdsCode, buckets: u16) -> bool {
    buckets & (1 << bucket_of(origin)) != 0
}

impl Hub {
    /// Puts a visit into its feed and the history index.
    pub(super) fn index_visit(&mut self, e: SignedEntry) {
        let (origin, seq) = (e.body.origin.clone(), e.body.seq);
        if let EntryBody::Visit(v) = &e.body.body {
            self.visits_by_nhs.entry(v.body.nhs).or_default().insert((v.body.at, origin.clone(), seq));
        }
        self.visits.entry(origin).or_default().entries.insert(seq, e);
    }

    /// Takes a visit out; returns the op that deletes it.
    pub(super) fn remove_visit(&mut self, origin: &OdsCode, seq: u64) -> Option<StoreOp> {
        let e = self.visits.get_mut(origin)?.entries.remove(&seq)?;
        if let EntryBody::Visit(v) = &e.body.body
            && let Some(set) = self.visits_by_nhs.get_mut(&v.body.nhs)
        {
            set.remove(&(v.body.at, origin.clone(), seq));
            if set.is_empty() {
                self.visits_by_nhs.remove(&v.body.nhs);
            }
        }
        Some(schema::ENTRIES.delete(&(origin.clone(), seq)))
    }

    /// Forgets an authority's replica (to be fetched again whole); returns the deletes.
    pub(super) fn drop_replica(&mut self, origin: &OdsCode) -> Vec<StoreOp> {
        let Some(replica) = self.authorities.remove(origin) else { return vec![] };
        let mut ops: Vec<StoreOp> =
            replica.feed.entries().map(|e| schema::ENTRIES.delete(&(origin.clone(), e.body.seq))).collect();
        ops.push(schema::HEADS.delete(origin));
        ops
    }

    pub(super) fn on_sync(
        &mut self,
        from: &OdsCode,
        role: Role,
        directory_version: u64,
        marks: &[Mark],
        buckets: u16,
        now: Timestamp,
    ) {
        self.offer_directories(from, directory_version);
        match role {
            // A setting syncs only its directory.
            Role::Setting => {}
            Role::Authority => {
                // Only an authority's word on its own feed counts.
                let Some(theirs) = marks.iter().find(|m| m.origin == *from) else { return };
                let ours = self.authority_mark(from);
                if theirs.seq > ours.seq {
                    self.out.send(from, Message::Sync { directory_version: self.dir.version(), marks: vec![ours] });
                } else if theirs.seq < ours.seq {
                    // Behind us (restored from an older copy): it takes back its feed whole.
                    self.send_run(from, from, 0);
                }
            }
            Role::Hub => {
                self.note_peer_marks(from, marks, buckets);
                let cap = self.config.sync_reply_bytes_max;
                let Some(peer) = self.peers.get_mut(from) else { return };
                let refill =
                    usize::try_from(now.since(peer.budget_at).saturating_mul(cap as u64) / 1_000).unwrap_or(cap);
                peer.sync_budget = peer.sync_budget.saturating_add(refill).min(cap);
                peer.budget_at = now.max(peer.budget_at);
                let budget = peer.sync_budget;
                let spent = self.send_missing(from, marks, buckets, budget, now);
                if let Some(peer) = self.peers.get_mut(from) {
                    peer.sync_budget = peer.sync_budget.saturating_sub(spent);
                }
            }
        }
    }

    /// A peer hub's digest: for each bucket whose fingerprint differs from ours, our marks there,
    /// so that the peer sends what we lack; nothing when the replicas are equal.
    pub(super) fn on_digest(&mut self, from: &OdsCode, directory: (u64, u64), theirs: &[u64; DIGEST_BUCKETS]) {
        let (directory_version, fingerprint) = directory;
        self.offer_directories(from, directory_version);
        // The same version with other content: ours goes to the peer, whose check finds the fork
        // (and its digest brings theirs here). Once per peer and version.
        if directory_version == self.dir.version()
            && fingerprint != self.dir.fingerprint()
            && self.forks_offered.insert(from.clone())
        {
            self.out.send(from, Message::Directories(vec![self.dir.trusted.signed().clone()]));
        }
        let own = self.own_marks();
        let buckets = (0..DIGEST_BUCKETS).filter(|&i| own.fingerprints[i] != theirs[i]).fold(0u16, |b, i| b | 1 << i);
        if buckets == 0 {
            // The peer holds exactly what we hold.
            self.peer_marks.insert(from.clone(), PeerMarks::Agreed(own));
            return;
        }
        // Where the fingerprints agree, the peer holds exactly what we hold.
        let same: Vec<Mark> = own.all().filter(|m| !in_scope(&m.origin, buckets)).cloned().collect();
        self.note_peer_marks(from, &same, !buckets);
        let marks = own.all().filter(|m| in_scope(&m.origin, buckets)).cloned().collect();
        self.out.send(from, Message::SyncPart { directory_version: self.dir.version(), buckets, marks });
    }

    /// Remembers how far peer hub `from` holds each authority's feed in `buckets`, from its marks
    /// there (an authority replica of ours it has no mark for, it does not hold), for
    /// [`Message::Held`].
    fn note_peer_marks(&mut self, from: &OdsCode, marks: &[Mark], buckets: u16) {
        let dir = &self.dir.trusted;
        let known = self.peer_marks.entry(from.clone()).or_insert_with(|| PeerMarks::Known(BTreeMap::new())).known();
        for origin in self.authorities.keys().filter(|o| in_scope(o, buckets)) {
            known.insert(origin.clone(), 0);
        }
        for m in marks.iter().filter(|m| in_scope(&m.origin, buckets)) {
            if dir.member(&m.origin).is_some_and(|member| member.role == Role::Authority) {
                known.insert(m.origin.clone(), m.seq);
            }
        }
    }

    /// A peer behind our directory version gets the versions it lacks.
    fn offer_directories(&mut self, to: &OdsCode, their_version: u64) {
        if their_version < self.dir.version() {
            self.out.send(to, Message::Directories(self.dir.after(their_version)));
        }
    }

    /// Whether a run of `origin` up to `upto` went to peer hub `to` less than [`RUN_RESEND_MS`]
    /// ago; if not, notes that one goes now.
    fn sent_lately(&mut self, to: &OdsCode, origin: &OdsCode, upto: u64, now: Timestamp) -> bool {
        let key = (to.clone(), origin.clone());
        if let Some(&(sent_upto, at)) = self.runs_sent.get(&key)
            && sent_upto == upto
            && now.since(at) < RUN_RESEND_MS
        {
            return true;
        }
        self.runs_sent.insert(key, (upto, now));
        false
    }

    /// Sends `to` the run of `origin`'s replica after `after`, its head on the last batch.
    pub(super) fn send_run(&mut self, to: &OdsCode, origin: &OdsCode, after: u64) -> usize {
        let Some(replica) = self.authorities.get(origin) else { return 0 };
        let Some(head) = replica.head.clone() else { return 0 };
        let live = replica.feed.entries_after(after).cloned();
        let batches = run_batches(origin, after, live, head);
        let count = batches.iter().map(|b| b.entries.len()).sum();
        for batch in batches {
            self.out.send(to, Message::Feed(batch));
        }
        count
    }

    /// Answers a hub's sync over the origins in `buckets`: every run it lacks (authorities' feeds,
    /// then the visits it may take from us) within `budget` bytes (the run that crosses it goes
    /// whole; none goes once it is spent), and newer heads. Returns the bytes spent.
    fn send_missing(&mut self, to: &OdsCode, marks: &[Mark], buckets: u16, budget: usize, now: Timestamp) -> usize {
        let theirs: HashMap<&OdsCode, &Mark> = marks.iter().map(|m| (&m.origin, m)).collect();
        let mut spent = 0usize;
        let mut more = false;
        let origins: Vec<OdsCode> = self.authorities.keys().filter(|o| in_scope(o, buckets)).cloned().collect();
        for origin in origins {
            let Some(head) = self.authorities.get(&origin).and_then(|r| r.head.clone()) else { continue };
            let their = theirs.get(&origin);
            let their_seq = their.map_or(0, |m| m.seq);
            if head.body.seq > their_seq {
                if spent >= budget {
                    more = true;
                    continue;
                }
                if self.sent_lately(to, &origin, head.body.seq, now) {
                    continue;
                }
                spent += ENTRY_BYTES_ESTIMATE * (1 + self.send_run(to, &origin, their_seq));
            } else if head.body.seq == their_seq && their.is_some_and(|m| head.body.at > m.head_at) {
                self.out.send(to, Message::Head(head));
            }
        }
        // Visits: ours, and theirs back to them (a hub restored from an empty store).
        for origin in [self.code.clone(), to.clone()] {
            if !in_scope(&origin, buckets) {
                continue;
            }
            let their_seq = theirs.get(&origin).map_or(0, |m| m.seq);
            let Some(feed) = self.visits.get(&origin).filter(|f| f.mark > their_seq || origin == *to) else { continue };
            let live: Vec<SignedEntry> =
                feed.entries.range(their_seq.saturating_add(1)..).map(|(_, e)| e.clone()).collect();
            if live.is_empty() && feed.mark <= their_seq {
                continue;
            }
            if spent >= budget {
                more = true;
                continue;
            }
            let mark = feed.mark;
            if self.sent_lately(to, &origin, mark, now) {
                continue;
            }
            spent += ENTRY_BYTES_ESTIMATE * (1 + live.len());
            let mut after = their_seq;
            let chunks: Vec<&[SignedEntry]> = live.chunks(BATCH_ENTRIES_MAX).collect();
            for (i, chunk) in chunks.iter().enumerate() {
                let upto = if i + 1 == chunks.len() {
                    mark.max(after.saturating_add(1))
                } else {
                    chunk[chunk.len() - 1].body.seq
                };
                let batch =
                    FeedBatch { origin: origin.clone(), after, upto, entries: chunk.to_vec(), head: None, more: false };
                self.out.send(to, Message::Feed(batch));
                after = upto;
            }
        }
        if more {
            // The budget stopped us: the last batch tells the peer to ask again.
            if let Some(Message::Feed(b)) =
                self.out.transmits.iter_mut().rev().find(|t| t.to == *to).map(|t| &mut t.message)
            {
                b.more = true;
            }
        }
        spent
    }

    pub(super) fn on_feed(&mut self, from: &OdsCode, role: Role, batch: InBatch, now: Timestamp) {
        if let Some(peer) = self.peers.get_mut(from).filter(|p| p.role == Role::Authority) {
            peer.feed_at = now;
        }
        let origin = batch.origin.clone();
        let more = batch.more;
        let result = match self.dir.trusted.member(&origin).map(|m| m.role) {
            Some(Role::Authority) if role == Role::Authority && origin != *from => Err(Refusal::NotOwnFeed),
            Some(Role::Authority) => self.on_authority_batch(from, role, batch, now),
            // Visits come only from the hub that made them (or, our own, back from anyone).
            Some(Role::Hub) if role == Role::Hub && (origin == *from || origin == self.code) => {
                self.on_visits(from, batch.map_entries(Incoming::into_signed), now)
            }
            Some(Role::Hub) => Err(Refusal::RelayedVisits(origin.clone())),
            _ => Err(Refusal::UnknownOrigin(origin.clone())),
        };
        if let Err(reason) = result {
            self.staging.remove(&(from.clone(), origin.clone()));
            match reason {
                // Its alarm says the proof is kept: once it is.
                Refusal::Equivocation(seq) | Refusal::HeadEquivocation { seq, .. } => {
                    self.event_when_durable(Event::Equivocation { origin, seq, from: from.clone() })
                }
                reason => self.out.event(Event::BatchRefused { from: from.clone(), origin, reason }),
            }
        }
        if more && role == Role::Hub {
            self.send_sync(from);
        }
    }

    /// Stages an authority's batch; applies the run once its head arrives.
    fn on_authority_batch(
        &mut self,
        from: &OdsCode,
        role: Role,
        batch: InBatch,
        now: Timestamp,
    ) -> Result<(), Refusal> {
        let InBatch { origin, after, upto, entries, head, .. } = batch;
        if after > upto {
            return Err(Refusal::BatchBounds { after, upto });
        }
        if let Some(head) = &head
            && head.body.seq != upto
        {
            return Err(Refusal::HeadNotAtUpto { head_seq: head.body.seq, upto });
        }
        let held = self.authorities.get(&origin).and_then(|r| r.head.as_ref()).map_or(0, |h| h.body.seq);
        let key = (from.clone(), origin.clone());
        // Every run this peer has begun, across origins, counts against one bound.
        let staged_by_peer: usize = self
            .staging
            .iter()
            .filter(|((peer, o), _)| peer == from && *o != origin)
            .map(|(_, s)| s.entries.len())
            .sum();
        let staged = self.staging.entry(key.clone()).or_insert(Staging { after, upto, entries: vec![] });
        if (staged.after, staged.upto) != (after, upto) {
            // A run begun and abandoned before its head came: refused, and dropped.
            if !staged.entries.is_empty() {
                let reason = Refusal::MissingHead(origin.clone());
                self.out.event(Event::BatchRefused { from: from.clone(), origin: origin.clone(), reason });
            }
            *staged = Staging { after, upto, entries: vec![] };
        }
        if staged_by_peer + staged.entries.len() + entries.len() > FEED_ENTRIES_MAX {
            return Err(Refusal::RunTooLong(FEED_ENTRIES_MAX));
        }
        let mut prev = staged.entries.last().map_or(after, |e| e.body().seq);
        for e in entries.iter().map(Incoming::body) {
            if e.origin != origin {
                return Err(Refusal::EntryOrigin(e.origin.clone()));
            }
            if e.seq <= prev || e.seq > upto {
                return Err(Refusal::EntryOrder { seq: e.seq });
            }
            prev = e.seq;
        }
        // A run up to what we hold already: only its head counts (a fresher signature of it, or an
        // equivocation), its entries are not kept. Entries kept until a newer run's head comes
        // are first checked as their origin's (the driver's check failed, or it had none): a
        // peer cannot park what no authority signed.
        if upto <= held {
            staged.entries.clear();
        } else if head.is_some() {
            staged.entries.extend(entries);
        } else {
            let dir = &self.dir.trusted;
            for e in entries {
                staged.entries.push(match e {
                    Incoming::Signed(e) => Incoming::Verified(verify_entry(dir, e)?),
                    verified => verified,
                });
            }
        }
        let Some(head) = head else { return Ok(()) };
        let run = self.staging.remove(&key).map(|s| s.entries).unwrap_or_default();
        self.apply_run(from, role, &origin, after, run, head, now)
    }

    /// Checks a head: its origin's signature with a key valid at its time, not from the future.
    fn check_head(
        &self,
        origin: &OdsCode,
        head: Incoming<FeedHead>,
        now: Timestamp,
    ) -> Result<Verified<FeedHead>, Refusal> {
        let (signer, at) = (head.body().origin.clone(), head.body().at);
        let dir = &self.dir.trusted;
        let head = match head {
            // Each hub receives a head about once per home hub of its authority: the copies
            // after the first are the head held, whose signature is not checked again.
            Incoming::Signed(head) => {
                let held = self.authorities.get(origin).and_then(|r| r.head.as_ref());
                dir.verify_at_or_held(head, held, &signer, Role::Authority, at)
            }
            Incoming::Verified(head) => dir.admit_verified_at(&head, &signer, Role::Authority, at).map(|()| head),
        }
        .map_err(|source| Refusal::Head { origin: origin.clone(), source })?;
        if at.since(now) > self.config.clock_skew_max_ms {
            return Err(Refusal::HeadFromTheFuture { origin: origin.clone(), at, now });
        }
        Ok(head)
    }

    /// Applies a whole run if, and only if, it reproduces its head. Nothing changes otherwise.
    #[allow(clippy::too_many_arguments)]
    fn apply_run(
        &mut self,
        from: &OdsCode,
        role: Role,
        origin: &OdsCode,
        after: u64,
        entries: Vec<Incoming>,
        head: SignedHead,
        now: Timestamp,
    ) -> Result<(), Refusal> {
        let upto = head.body.seq;
        let head = self.check_head(origin, Incoming::Signed(head), now)?;
        if head.body().origin != *origin {
            return Err(Refusal::HeadNotAtUpto { head_seq: head.body().seq, upto });
        }
        let current = self.authorities.get(origin).and_then(|r| r.head.clone());
        if let Some(cur) = &current
            && head.body().seq <= cur.body.seq
        {
            return self.same_or_older_head(from, origin, cur.clone(), head);
        }
        let mark = current.as_ref().map_or(0, |h| h.body.seq);
        if after != 0 && (after > mark || current.is_none()) {
            // A gap: ask the sender for what we lack.
            let marks = vec![self.authority_mark(origin)];
            self.out.send(from, Message::Sync { directory_version: self.dir.version(), marks });
            return Ok(());
        }
        let mut verified = Vec::with_capacity(entries.len());
        for e in entries {
            let e = e.verify(&self.dir.trusted)?;
            self.check_equivocation(from, &e)?;
            verified.push(e);
        }
        let applied =
            if after == 0 { self.replace(origin, verified, &head) } else { self.merge(origin, verified, &head) };
        let Some((ops, count)) = applied else {
            self.on_mismatch(from, role, origin);
            return Err(Refusal::HeadMismatch { origin: origin.clone(), seq: upto });
        };
        self.commit_run(from, origin, mark, after, ops, count, head.into_signed());
        Ok(())
    }

    /// A head at or below ours: a newer signature of the same state (fresher), a replay (nothing),
    /// or a different state at our sequence (an equivocation).
    fn same_or_older_head(
        &mut self,
        from: &OdsCode,
        origin: &OdsCode,
        current: SignedHead,
        head: Verified<FeedHead>,
    ) -> Result<(), Refusal> {
        let seq = head.body().seq;
        if seq < current.body.seq {
            return Ok(());
        }
        if current.body.conflicts_with(head.body()) {
            // The alarm is raised once; the same equivocation seen again (the authority re-signs
            // its head every minute) is refused as known.
            if !self.keep_equivocation(origin, seq, codec::encode(&current), codec::encode(head.signed())) {
                return Err(Refusal::KnownEquivocation(seq));
            }
            return Err(Refusal::HeadEquivocation { origin: origin.clone(), seq });
        }
        if head.body().at > current.body.at {
            self.update_head(from, origin, head.into_signed());
        }
        Ok(())
    }

    /// Refuses an entry that differs from the one held at its origin and sequence, keeping both
    /// as proof.
    fn check_equivocation(&mut self, from: &OdsCode, e: &SignedEntry) -> Result<(), Refusal> {
        let origin = &e.body.origin;
        let seq = e.body.seq;
        let Some(mine) = self.authorities.get(origin).and_then(|r| r.feed.at(seq)) else { return Ok(()) };
        if mine.body == e.body {
            return Ok(());
        }
        let (mine, theirs) = (codec::encode(mine), codec::encode(e));
        if !self.keep_equivocation(origin, seq, mine, theirs) {
            return Err(Refusal::KnownEquivocation(seq));
        }
        let _ = from;
        Err(Refusal::Equivocation(seq))
    }

    /// Keeps the proof of an equivocation; false if this one was already proven.
    fn keep_equivocation(&mut self, origin: &OdsCode, seq: u64, mine: Vec<u8>, theirs: Vec<u8>) -> bool {
        if !self.equivocations.insert((origin.clone(), seq)) {
            return false;
        }
        self.out.write(vec![schema::EQUIVOCATIONS.put(&(origin.clone(), seq), &(mine, theirs))], vec![]);
        true
    }

    /// A whole live set replacing the replica, if it matches the head.
    fn replace(
        &mut self,
        origin: &OdsCode,
        entries: Vec<SignedEntry>,
        head: &Verified<FeedHead>,
    ) -> Option<(Vec<StoreOp>, usize)> {
        let mut fresh = LiveFeed::new();
        for e in entries {
            fresh.apply(e);
        }
        if !fresh.matches(head.body()) {
            return None;
        }
        let old = self.authorities.remove(origin).unwrap_or_default();
        let mut ops: Vec<StoreOp> = old
            .feed
            .entries()
            .filter(|e| fresh.at(e.body.seq).is_none_or(|f| f.body != e.body))
            .map(|e| schema::ENTRIES.delete(&(origin.clone(), e.body.seq)))
            .collect();
        let deleted = ops.len();
        ops.extend(
            fresh
                .entries()
                .filter(|e| old.feed.at(e.body.seq).is_none_or(|o| o.body != e.body))
                .map(|e| schema::ENTRIES.put(&(origin.clone(), e.body.seq), e)),
        );
        let count = ops.len() - deleted;
        self.authorities.insert(origin.clone(), Replica { feed: fresh, head: old.head });
        Some((ops, count))
    }

    /// New entries merged into the replica, if the result matches the head; else undone.
    fn merge(
        &mut self,
        origin: &OdsCode,
        entries: Vec<SignedEntry>,
        head: &Verified<FeedHead>,
    ) -> Option<(Vec<StoreOp>, usize)> {
        let replica = self.authorities.entry(origin.clone()).or_default();
        // Boxed, as `apply` gives them: most entries supersede nothing, and a run may be long.
        let mut undo: Vec<(u64, Option<Box<SignedEntry>>)> = Vec::new();
        let mut ops = Vec::new();
        for e in entries {
            let (seq, put) = (e.body.seq, schema::ENTRIES.put(&(origin.clone(), e.body.seq), &e));
            if let Applied::New { superseded } = replica.feed.apply(e) {
                if let Some(old) = &superseded {
                    ops.push(schema::ENTRIES.delete(&(origin.clone(), old.body.seq)));
                }
                ops.push(put);
                undo.push((seq, superseded));
            }
        }
        if replica.feed.matches(head.body()) {
            return Some((ops, undo.len()));
        }
        for (seq, superseded) in undo.into_iter().rev() {
            replica.feed.take(seq);
            if let Some(old) = superseded {
                replica.feed.apply(*old);
            }
        }
        // Recompute the (unchanged) root now, so that proofs read cached hashes.
        replica.feed.matches(head.body());
        None
    }

    /// A run did not reproduce its head: from the authority itself, it gets our copy whole (it
    /// was restored from an older store); from a hub, the replica is fetched whole from another.
    fn on_mismatch(&mut self, from: &OdsCode, role: Role, origin: &OdsCode) {
        if role == Role::Authority {
            self.send_run(from, origin, 0);
            return;
        }
        let other = self.peers.iter().find(|(c, p)| p.role == Role::Hub && *c != from).map(|(c, _)| c.clone());
        if let Some(peer) = other {
            let marks = vec![Mark { origin: origin.clone(), seq: 0, head_at: Timestamp(0) }];
            self.out.send(&peer, Message::Sync { directory_version: self.dir.version(), marks });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn commit_run(
        &mut self,
        from: &OdsCode,
        origin: &OdsCode,
        mark: u64,
        after: u64,
        mut ops: Vec<StoreOp>,
        count: usize,
        head: SignedHead,
    ) {
        ops.push(schema::HEADS.put(origin, &head));
        let upto = head.body.seq;
        if let Some(replica) = self.authorities.get_mut(origin) {
            replica.head = Some(head.clone());
        }
        let mut after_write =
            vec![After::Event(Event::EntriesAccepted { origin: origin.clone(), from: from.clone(), count, upto })];
        if self.first_hop(from) {
            after_write.push(if after == 0 {
                // A replaced replica: peers behind will ask; tell them there is a newer head.
                After::Forward(Box::new(Message::Head(head)), Some(from.clone()))
            } else {
                // The run is read from the replica once durable, not held twice until then.
                After::ForwardRun { origin: origin.clone(), after: mark, except: from.clone() }
            });
        }
        self.out.write(ops, after_write);
    }

    /// A newer signature over the live set we hold: freshness. Stored; if it came from the
    /// authority itself, passed on by one of its home hubs (the first in the directory connected
    /// to us) to every hub but its home hubs. A hub that misses it takes it at its next sync.
    fn update_head(&mut self, from: &OdsCode, origin: &OdsCode, head: SignedHead) {
        if let Some(replica) = self.authorities.get_mut(origin) {
            replica.head = Some(head.clone());
        }
        let mut after = vec![];
        let homes = self.dir.trusted.member(origin).map_or(&[][..], |m| &m.home_hubs[..]);
        let relay = homes.iter().find(|h| **h == self.code || self.peers.contains_key(*h));
        if self.first_hop(from) && relay == Some(&self.code) {
            for (peer, p) in &self.peers {
                if p.role == Role::Hub && !homes.contains(peer) {
                    let message = Message::Head(head.clone());
                    after.push(After::Send(Box::new(Transmit { to: peer.clone(), message })));
                }
            }
        }
        self.out.write(vec![schema::HEADS.put(origin, &head)], after);
    }

    /// Whether what came from `from` is passed on to every peer hub: only from the authority
    /// itself. Hubs are a full mesh, so the authority's home hubs reach every hub in one hop, and
    /// a hub that missed it (its link was down) takes it at its next sync. Each hub receives a
    /// change about once per home hub, however many hubs there are.
    fn first_hop(&self, from: &OdsCode) -> bool {
        self.peers.get(from).is_some_and(|p| p.role == Role::Authority)
    }

    pub(super) fn on_head(&mut self, from: &OdsCode, role: Role, head: Incoming<FeedHead>, now: Timestamp) {
        let origin = head.body().origin.clone();
        let result = (|| {
            if role == Role::Authority && origin != *from {
                return Err(Refusal::NotOwnFeed);
            }
            if self.dir.trusted.member(&origin).map(|m| m.role) != Some(Role::Authority) {
                return Err(Refusal::UnknownOrigin(origin.clone()));
            }
            let head = self.check_head(&origin, head, now)?;
            let current = self.authorities.get(&origin).and_then(|r| r.head.clone());
            match current {
                Some(cur) if head.body().seq <= cur.body.seq => self.same_or_older_head(from, &origin, cur, head),
                // The head of an authority with nothing published yet, and nothing held here.
                None if head.body().seq == 0 && LiveFeed::new().matches(head.body()) => {
                    self.authorities.entry(origin.clone()).or_default();
                    self.update_head(from, &origin, head.into_signed());
                    Ok(())
                }
                // We lack entries under it: ask the sender.
                _ => {
                    let marks = vec![self.authority_mark(&origin)];
                    self.out.send(from, Message::Sync { directory_version: self.dir.version(), marks });
                    Ok(())
                }
            }
        })();
        if let Err(reason) = result {
            match reason {
                Refusal::HeadEquivocation { seq, .. } => {
                    self.event_when_durable(Event::Equivocation { origin, seq, from: from.clone() })
                }
                reason => self.out.event(Event::BatchRefused { from: from.clone(), origin, reason }),
            }
        }
    }

    /// Whether `origin`'s visits hold one of the lookup `e` is a visit of.
    fn visit_held(&self, origin: &OdsCode, e: &SignedEntry) -> bool {
        let (EntryBody::Visit(v), Some(feed)) = (&e.body.body, self.visits.get(origin)) else { return false };
        let Some(of_child) = self.visits_by_nhs.get(&v.body.nhs) else { return false };
        let same_time = (v.body.at, origin.clone(), 0)..=(v.body.at, origin.clone(), u64::MAX);
        of_child
            .range(same_time)
            .any(|(_, _, seq)| feed.entries.get(seq).and_then(visit_lookup) == Some(v.body.lookup_id))
    }

    /// A run of a hub's visits, from that hub (or ours, back from a peer).
    fn on_visits(&mut self, from: &OdsCode, batch: FeedBatch, _now: Timestamp) -> Result<(), Refusal> {
        let origin = batch.origin.clone();
        let mark = self.visits.get(&origin).map_or(0, |f| f.mark);
        if batch.after >= batch.upto {
            return Err(Refusal::BatchBounds { after: batch.after, upto: batch.upto });
        }
        if batch.after > mark {
            // A gap: ask the sender for everything after our mark.
            self.send_sync(from);
            return Ok(());
        }
        let mut prev = batch.after;
        let mut new = Vec::new();
        let mut lookups = BTreeSet::new();
        for e in batch.entries {
            if e.body.origin != origin {
                return Err(Refusal::EntryOrigin(e.body.origin.clone()));
            }
            if e.body.seq <= prev || e.body.seq > batch.upto || !matches!(e.body.body, EntryBody::Visit(_)) {
                return Err(Refusal::EntryOrder { seq: e.body.seq });
            }
            prev = e.body.seq;
            let held = self.visits.get(&origin).and_then(|f| f.entries.get(&e.body.seq));
            match held {
                Some(mine) if mine.body == e.body => continue,
                Some(mine) => {
                    let (mine, theirs) = (codec::encode(mine), codec::encode(&e));
                    let e = verify_entry(&self.dir.trusted, e)?;
                    let seq = e.body().seq;
                    return Err(if self.keep_equivocation(&origin, seq, mine, theirs) {
                        Refusal::Equivocation(seq)
                    } else {
                        Refusal::KnownEquivocation(seq)
                    });
                }
                None if e.body.seq <= mark && origin != self.code => continue,
                // A hub records a lookup once: another visit of it from the same hub (a hostile
                // one wrapping the access events it relays) adds nothing.
                None if self.visit_held(&origin, &e) => continue,
                None if visit_lookup(&e).is_some_and(|id| !lookups.insert(id)) => continue,
                None => new.push(verify_entry(&self.dir.trusted, e)?.into_signed()),
            }
        }
        // The hub's own word moves its mark to `upto`; our own visits come back only as far as
        // the last one carried.
        let upto = if origin == *from { batch.upto } else { new.last().map_or(mark, |e| e.body.seq) }.max(mark);
        let mut ops: Vec<StoreOp> = new.iter().map(|e| schema::ENTRIES.put(&(origin.clone(), e.body.seq), e)).collect();
        if upto != mark {
            ops.push(schema::MARKS.put(&origin, &upto));
        }
        if ops.is_empty() {
            return Ok(());
        }
        let count = new.len();
        for e in new {
            self.index_visit(e);
        }
        self.visits.entry(origin.clone()).or_default().mark = upto;
        let event = Event::EntriesAccepted { origin, from: from.clone(), count, upto };
        self.out.write(ops, vec![After::Event(event)]);
        Ok(())
    }

    /// Drops tombstones past their retention and visits past theirs.
    pub(super) fn prune(&mut self, now: Timestamp) {
        let visit_cutoff = now.minus_ms(self.config.visit_retention_days.saturating_mul(DAY_MS));
        let tombstone_cutoff = now.minus_ms(self.config.tombstone_retention_days.saturating_mul(DAY_MS));
        let mut ops = Vec::new();
        for (origin, replica) in self.authorities.iter_mut() {
            let old: Vec<u64> = replica
                .feed
                .entries()
                .filter(|e| matches!(e.body.body, EntryBody::Removed(_)) && e.body.at < tombstone_cutoff)
                .map(|e| e.body.seq)
                .collect();
            for seq in old {
                replica.feed.take(seq);
                ops.push(schema::ENTRIES.delete(&(origin.clone(), seq)));
            }
        }
        let visits: Vec<(OdsCode, u64)> = self
            .visits
            .iter()
            .flat_map(|(o, f)| {
                f.entries.values().filter(|e| e.body.at < visit_cutoff).map(move |e| (o.clone(), e.body.seq))
            })
            .collect();
        for (origin, seq) in visits {
            ops.extend(self.remove_visit(&origin, seq));
        }
        ops.extend(self.prune_delivered(now));
        if !ops.is_empty() {
            self.out.write(ops, vec![]);
        }
        let config = &self.config;
        self.recent_lookups.retain(|_, (at, _)| config.remembers_lookup(*at, now));
        self.limits.prune(now);
    }
}

/// The lookup a visit entry records.
fn visit_lookup(e: &SignedEntry) -> Option<LookupId> {
    match &e.body.body {
        EntryBody::Visit(v) => Some(v.body.lookup_id),
        _ => None,
    }
}
