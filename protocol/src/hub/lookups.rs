//! Lookups: checked (signature, clock, replay, rate limits), made durable with their
//! notifications and visit, then answered with each authority's head and proof.

use super::{After, Hub, OutboxRecord};
use crate::directory::Role;
use crate::feed::{EntryBody, EntryKey, FeedEntry, SignedEntry};
use crate::ids::{NhsNumber, OdsCode, PlanRef};
use crate::machine::{Event, Transmit};
use crate::records::{AccessEvent, LookupKind};
use crate::refusal::Refusal;
use crate::schema::{self, StoreOp};
use crate::sign::{Signed, Verified};
use crate::time::{DAY_MS, Timestamp};
use crate::wire::{ANSWER_PLANS_MAX, AuthorityAnswer, FeedBatch, HISTORY_LEN_MAX, LookupAnswer, Message, Notification};
use std::collections::{BTreeMap, HashMap};

/// Most people whose lookup rate a hub tracks at once (the least recently seen leave first).
pub(super) const PERSON_BUCKETS_MAX: usize = 100_000;

/// A token bucket: `tokens` thousandths of a lookup, refilled evenly to a capacity.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    milli: u64,
    at: Timestamp,
}

impl Bucket {
    /// Takes one lookup from a bucket of `per_hour`, refilled evenly over the hour.
    fn take(&mut self, per_hour: u64, now: Timestamp) -> bool {
        let capacity = per_hour.saturating_mul(1000);
        let refill = now.since(self.at).saturating_mul(per_hour) / 3_600;
        self.milli = self.milli.saturating_add(refill).min(capacity);
        self.at = now.max(self.at);
        if self.milli < 1000 {
            return false;
        }
        self.milli -= 1000;
        true
    }
}

/// Lookup rate limits per setting and per person at a setting.
#[derive(Default)]
pub struct RateLimits {
    settings: HashMap<OdsCode, Bucket>,
    people: HashMap<(OdsCode, String), Bucket>,
}

impl RateLimits {
    /// Whether the setting, and the person there, may make one more lookup now.
    fn allow(&mut self, setting: &OdsCode, person: &str, limits: (u64, u64), now: Timestamp) -> Result<(), Refusal> {
        let (per_setting, per_person) = limits;
        let fresh = |per_hour: u64| Bucket { milli: per_hour.saturating_mul(1000), at: now };
        let s = self.settings.entry(setting.clone()).or_insert_with(|| fresh(per_setting));
        if !s.take(per_setting, now) {
            return Err(Refusal::SettingRateLimited(setting.clone()));
        }
        if self.people.len() >= PERSON_BUCKETS_MAX {
            self.prune(now);
        }
        let key = (setting.clone(), person.to_string());
        let p = self.people.entry(key).or_insert_with(|| fresh(per_person));
        if !p.take(per_person, now) {
            return Err(Refusal::PersonRateLimited(setting.clone()));
        }
        Ok(())
    }

    /// Forgets buckets untouched for an hour (they would be full again).
    pub(super) fn prune(&mut self, now: Timestamp) {
        self.settings.retain(|_, b| now.since(b.at) < 3_600_000);
        self.people.retain(|_, b| now.since(b.at) < 3_600_000);
        if self.people.len() >= PERSON_BUCKETS_MAX {
            // Still full within the hour: the oldest half goes.
            let mut ats: Vec<Timestamp> = self.people.values().map(|b| b.at).collect();
            ats.sort_unstable();
            let cut = ats[ats.len() / 2];
            self.people.retain(|_, b| b.at > cut);
        }
    }
}

/// Whether a lookup id is new or a retry of the very same signed lookup.
enum Seen {
    New,
    Retry,
}

/// A lookup as it reaches the hub: as signed on the wire, or with its signature already checked
/// by the driver (off the event loop) against the key the directory lists under its key id.
pub enum IncomingLookup {
    Signed(Signed<AccessEvent>),
    Verified(Verified<AccessEvent>),
}

impl IncomingLookup {
    fn signed(&self) -> &Signed<AccessEvent> {
        match self {
            IncomingLookup::Signed(s) => s,
            IncomingLookup::Verified(v) => v.signed(),
        }
    }
}

impl Hub {
    pub(super) fn on_lookup(&mut self, from: &OdsCode, lookup: IncomingLookup, now: Timestamp) {
        let lookup_id = lookup.signed().body.lookup_id;
        let (signed, kind) = match self.check_lookup(from, lookup, now) {
            Err(reason) => {
                if let Refusal::SettingRateLimited(_) | Refusal::PersonRateLimited(_) = reason {
                    let per_person = matches!(reason, Refusal::PersonRateLimited(_));
                    self.out.event(Event::RateLimited { setting: from.clone(), per_person });
                }
                return self.refuse_lookup(from, lookup_id, reason);
            }
            Ok((Seen::Retry, signed, _)) => return self.answer_retry(from, &signed, now),
            Ok((Seen::New, signed, kind)) => (signed, kind),
        };
        let nhs = signed.body.nhs;
        let answer = self.answer(&signed.body, now);
        let matched = self.visible_matches(nhs, now);
        let mut ops = vec![schema::ACCESS_LOG.put(&(now, lookup_id), &signed)];
        let mut after = Vec::new();
        let notify = kind == LookupKind::Unscheduled && !matched.is_empty();
        if notify {
            after.extend(self.record_visit(&signed, now, &mut ops));
            for (authority, plans) in &matched {
                let notification = self.identity.sign(Notification {
                    event: signed.clone(),
                    authority: authority.clone(),
                    matched: plans.clone(),
                    hub: self.code.clone(),
                    answered_at: now,
                    signed_at: now,
                });
                let record = OutboxRecord { notification, queued_at: now };
                ops.push(schema::OUTBOX.put(&(lookup_id, authority.clone()), &record));
                after.push(After::Queue(Box::new(record)));
            }
        }
        self.recent_lookups.insert(lookup_id, (signed.body.at, signed.signature));
        after.push(After::Send(Box::new(Transmit { to: from.clone(), message: Message::Answer(answer) })));
        let notified = if notify { matched.into_keys().collect() } else { vec![] };
        after.push(After::Event(Event::LookupAnswered { lookup_id, setting: from.clone(), kind, notified }));
        self.out.write(ops, after);
    }

    /// The same signed lookup again (a setting retrying after a lost answer): answered again,
    /// once everything before it is durable, with no new notification or visit.
    fn answer_retry(&mut self, from: &OdsCode, signed: &Signed<AccessEvent>, now: Timestamp) {
        let answer = self.answer(&signed.body, now);
        let send = After::Send(Box::new(Transmit { to: from.clone(), message: Message::Answer(answer) }));
        if let Some(After::Send(t)) = self.out.after_pending(send) {
            self.out.transmits.push_back(*t);
        }
    }

    /// Checks a lookup, cheapest refusals first after the signature; returns whether it is new,
    /// the signed lookup, and what kind of lookup the setting's type in the directory makes it.
    fn check_lookup(
        &mut self,
        from: &OdsCode,
        lookup: IncomingLookup,
        now: Timestamp,
    ) -> Result<(Seen, Signed<AccessEvent>, LookupKind), Refusal> {
        let own = self.identity.key_id();
        let me = self.dir.trusted.member(&self.code);
        if !me.and_then(|m| m.key(own)).is_some_and(|k| k.usable_at(now)) {
            return Err(Refusal::OwnKeyNotUsable(own));
        }
        let claimed = &lookup.signed().body.setting;
        if claimed != from {
            return Err(Refusal::NotFromSetting { claimed: claimed.clone(), from: from.clone() });
        }
        let signed = match lookup {
            IncomingLookup::Signed(s) => {
                let at = s.body.at;
                self.dir.trusted.verify_at(s, from, Role::Setting, at)?.into_signed()
            }
            IncomingLookup::Verified(v) => {
                self.dir.trusted.admit_verified_at(&v, from, Role::Setting, v.body().at)?;
                v.into_signed()
            }
        };
        let event = &signed.body;
        event.check()?;
        let skew_ms = self.config.clock_skew_max_ms;
        if now.since(event.at) > skew_ms || event.at.since(now) > skew_ms {
            return Err(Refusal::ClockSkew { at: event.at, now, skew_ms });
        }
        let kind = self
            .dir
            .trusted
            .member(from)
            .and_then(|m| m.setting_type)
            .map_or(LookupKind::Scheduled, |t| t.lookup_kind());
        let seen = match self.recent_lookups.get(&event.lookup_id) {
            None => Seen::New,
            Some((_, signature)) if *signature == signed.signature => return Ok((Seen::Retry, signed, kind)),
            Some(_) => return Err(Refusal::Replayed(event.lookup_id)),
        };
        let limits = (self.config.setting_lookups_per_hour, self.config.person_lookups_per_hour);
        self.limits.allow(from, &event.person.id, limits, now)?;
        Ok((seen, signed, kind))
    }

    /// Adds the visit to this hub's own feed; returns the work to do once it is durable.
    fn record_visit(&mut self, signed: &Signed<AccessEvent>, now: Timestamp, ops: &mut Vec<StoreOp>) -> Vec<After> {
        let own = self.code.clone();
        let mark = self.visits.get(&own).map_or(0, |f| f.mark);
        // Sequence by clock, so that a hub restored from an empty store never reuses a number.
        let seq = mark.saturating_add(1).max(now.as_millis());
        let entry = self.identity.sign(FeedEntry {
            origin: own.clone(),
            seq,
            at: now,
            body: EntryBody::Visit(Box::new(signed.clone())),
        });
        ops.push(schema::ENTRIES.put(&(own.clone(), seq), &entry));
        ops.push(schema::MARKS.put(&own, &seq));
        self.index_visit(entry.clone());
        self.visits.entry(own.clone()).or_default().mark = seq;
        let batch = FeedBatch { origin: own, after: mark, upto: seq, entries: vec![entry], head: None, more: false };
        vec![After::Forward(Box::new(Message::Feed(batch)), None)]
    }

    /// The answer: for every authority whose head we hold, its head, its published plans for the
    /// child (and its contacts if there are any) and the proof; and the visit history.
    fn answer(&self, event: &AccessEvent, now: Timestamp) -> LookupAnswer {
        let nhs = event.nhs;
        let authorities = self
            .authorities
            .values()
            .filter_map(|r| {
                let head = r.head.clone()?;
                let plans: Vec<FeedEntry> =
                    r.feed.plans_of(nhs).into_iter().take(ANSWER_PLANS_MAX).map(|e| e.body.clone()).collect();
                let contacts =
                    (!plans.is_empty()).then(|| r.feed.latest(&EntryKey::Contacts).map(|e| e.body.clone())).flatten();
                Some(AuthorityAnswer { head, plans, contacts, proof: r.feed.prove(nhs) })
            })
            .collect();
        LookupAnswer {
            lookup_id: event.lookup_id,
            nhs,
            hub: self.code.clone(),
            answered_at: now,
            authorities,
            history: self.history(nhs),
        }
    }

    /// Per authority, its published plans for `nhs` visible on today's date: whom a lookup
    /// notifies.
    pub fn visible_matches(&self, nhs: NhsNumber, now: Timestamp) -> BTreeMap<OdsCode, Vec<PlanRef>> {
        let today = now.date();
        let mut by = BTreeMap::new();
        for (origin, r) in &self.authorities {
            if r.head.is_none() {
                continue;
            }
            let plans: Vec<PlanRef> = r
                .feed
                .plans_of(nhs)
                .into_iter()
                .filter_map(|e| match &e.body.body {
                    EntryBody::Plan(p) if p.visible_on(today) => Some(p.reference.clone()),
                    _ => None,
                })
                .collect();
            if !plans.is_empty() {
                by.insert(origin.clone(), plans);
            }
        }
        by
    }

    /// The most recent unscheduled visits for `nhs`, newest first: repeat lookups by the same
    /// person at the same setting within 24 hours count as one visit.
    pub fn history(&self, nhs: NhsNumber) -> Vec<SignedEntry> {
        let Some(visits) = self.visits_by_nhs.get(&nhs) else {
            return vec![];
        };
        let mut shown: Vec<SignedEntry> = Vec::new();
        let mut last_shown: BTreeMap<(OdsCode, String), Timestamp> = BTreeMap::new();
        // Oldest first, so that the first lookup of a visit is the one kept.
        for (at, origin, seq) in visits.iter() {
            let Some(entry) = self.visits.get(origin).and_then(|f| f.entries.get(seq)) else {
                continue;
            };
            let EntryBody::Visit(v) = &entry.body.body else {
                continue;
            };
            let who = (v.body.setting.clone(), v.body.person.id.clone());
            if last_shown.get(&who).is_some_and(|t| at.since(*t) < DAY_MS) {
                continue;
            }
            last_shown.insert(who, *at);
            shown.push(entry.clone());
        }
        shown.reverse();
        shown.truncate(HISTORY_LEN_MAX);
        shown
    }
}
