//! Lookups: checked, made durable with their notifications and visit, then answered.

use super::{After, Hub, LookupError, OutboxRecord};
use crate::codec;
use crate::directory::Role;
use crate::feed::{EntryBody, FeedEntry, SignedEntry};
use crate::ids::{NhsNumber, OdsCode, PlanRef};
use crate::machine::{Event, Transmit, entry_key, outbox_key};
use crate::records::{AccessEvent, LookupKind};
use crate::sign::Signed;
use crate::store::{StoreOp, Table};
use crate::time::{DAY_MS, Timestamp};
use crate::wire::{Freshness, HISTORY_LEN_MAX, LookupAnswer, Message, Notification};
use std::collections::BTreeMap;

impl Hub {
    pub(super) fn on_lookup(&mut self, from: &OdsCode, signed: Signed<AccessEvent>, now: Timestamp) {
        let lookup_id = signed.body.lookup_id;
        match self.check_lookup(from, &signed, now) {
            Err(e) => return self.refuse_lookup(from, lookup_id, e.to_string()),
            Ok(Seen::Retry) => return self.answer_retry(from, &signed, now),
            Ok(Seen::New) => {}
        }
        let event = &signed.body;
        let plans = self.visible_plans(event.nhs, now);
        let answer = self.answer(&signed, plans.clone(), now);
        let mut ops =
            vec![StoreOp::Put { table: Table::AccessLog, key: lookup_id.0.to_vec(), value: codec::encode(&signed) }];
        let mut after = Vec::new();
        let by_authority = group_by_authority(&plans);
        if event.kind == LookupKind::Unscheduled && !plans.is_empty() {
            after.extend(self.record_visit(&signed, now, &mut ops));
            for (authority, matched) in &by_authority {
                let notification = self.identity.sign(Notification {
                    event: signed.clone(),
                    authority: authority.clone(),
                    matched: matched.clone(),
                    hub: self.code.clone(),
                    answered_at: now,
                });
                let record = OutboxRecord { notification, queued_at: now };
                let key = outbox_key(lookup_id, authority);
                ops.push(StoreOp::Put { table: Table::Outbox, key, value: codec::encode(&record) });
                after.push(After::Queue(Box::new(record)));
            }
        }
        self.recent_lookups.insert(lookup_id, (event.at, signed.signature));
        after.push(After::Send(Box::new(Transmit { to: from.clone(), message: Message::Answer(answer) })));
        after.push(After::Event(Event::LookupAnswered {
            lookup_id,
            setting: from.clone(),
            kind: event.kind,
            authorities: by_authority.into_keys().collect(),
        }));
        self.out.write(ops, after);
    }

    /// The same signed lookup again (a setting retrying after a lost answer): answered again,
    /// once everything before it is durable, with no new notification or visit.
    fn answer_retry(&mut self, from: &OdsCode, signed: &Signed<AccessEvent>, now: Timestamp) {
        let plans = self.visible_plans(signed.body.nhs, now);
        let answer = self.answer(signed, plans, now);
        let send = After::Send(Box::new(Transmit { to: from.clone(), message: Message::Answer(answer) }));
        if let Some(After::Send(t)) = self.out.after_pending(send) {
            self.out.transmits.push_back(*t);
        }
    }

    fn check_lookup(&self, from: &OdsCode, signed: &Signed<AccessEvent>, now: Timestamp) -> Result<Seen, LookupError> {
        let event = &signed.body;
        if event.setting != *from {
            return Err(LookupError::NotFromSetting { claimed: event.setting.clone(), from: from.clone() });
        }
        self.dir.trusted.verify_at(signed.clone(), from, Role::Setting, signed.body.at)?;
        event.check()?;
        let skew_ms = self.config.clock_skew_max_ms;
        if now.since(event.at) > skew_ms || event.at.since(now) > skew_ms {
            return Err(LookupError::Stale { at: event.at, now, skew_ms });
        }
        let listed = self.dir.trusted.member(from).and_then(|m| m.setting_type);
        if listed != Some(event.setting_type) {
            let listed = listed.map_or("no setting type", |t| t.name());
            return Err(LookupError::WrongSettingType { listed, claimed: event.setting_type.name() });
        }
        match self.recent_lookups.get(&event.lookup_id) {
            None => Ok(Seen::New),
            Some((_, signature)) if *signature == signed.signature => Ok(Seen::Retry),
            Some(_) => Err(LookupError::Replayed(event.lookup_id)),
        }
    }

    /// Adds the visit to this hub's own feed; returns the work to do once it is durable.
    fn record_visit(&mut self, signed: &Signed<AccessEvent>, now: Timestamp, ops: &mut Vec<StoreOp>) -> Vec<After> {
        let own = self.code.clone();
        let hw = self.feeds.get(&own).map_or(0, |f| f.hw);
        // Sequence by clock, so that a hub restored from an empty store never reuses a number.
        let seq = hw.saturating_add(1).max(now.as_millis());
        let entry =
            self.identity.sign(FeedEntry { origin: own.clone(), seq, at: now, body: EntryBody::Visit(signed.clone()) });
        ops.push(StoreOp::Put { table: Table::Entries, key: entry_key(&own, seq), value: codec::encode(&entry) });
        ops.push(StoreOp::Put {
            table: Table::HighWater,
            key: own.as_str().as_bytes().to_vec(),
            value: seq.to_be_bytes().to_vec(),
        });
        self.index_entry(entry.clone());
        let feed = self.feeds.entry(own.clone()).or_default();
        feed.hw = seq;
        feed.as_of = now;
        let batch = crate::wire::FeedBatch { origin: own, after: hw, upto: seq, entries: vec![entry], as_of: now };
        vec![After::Forward(batch, None)]
    }

    fn answer(&self, signed: &Signed<AccessEvent>, plans: Vec<SignedEntry>, now: Timestamp) -> LookupAnswer {
        let event = &signed.body;
        let authorities: Vec<OdsCode> = group_by_authority(&plans).into_keys().collect();
        let contacts = authorities.iter().filter_map(|a| self.contacts_entry(a).cloned()).collect();
        let freshness = authorities
            .iter()
            .map(|a| {
                let feed = self.feeds.get(a);
                Freshness {
                    authority: a.clone(),
                    seq: feed.map_or(0, |f| f.hw),
                    as_of: feed.map_or(Timestamp(0), |f| f.as_of),
                }
            })
            .collect();
        LookupAnswer {
            lookup_id: event.lookup_id,
            nhs: event.nhs,
            hub: self.code.clone(),
            answered_at: now,
            plans,
            contacts,
            freshness,
            history: self.history(event.nhs),
        }
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
            let Some(entry) = self.feeds.get(origin).and_then(|f| f.entries.get(seq)) else {
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

/// Whether a lookup id is new or a retry of the very same signed lookup.
enum Seen {
    New,
    Retry,
}

/// Plan references per owning authority.
fn group_by_authority(plans: &[SignedEntry]) -> BTreeMap<OdsCode, Vec<PlanRef>> {
    let mut by: BTreeMap<OdsCode, Vec<PlanRef>> = BTreeMap::new();
    for e in plans {
        if let EntryBody::Plan(p) = &e.body.body {
            by.entry(e.body.origin.clone()).or_default().push(p.reference.clone());
        }
    }
    by
}
