//! Notifications: store-and-forward to the owning authority, directly or through one of its home
//! hubs, retried with capped backoff until the authority's signed receipt comes back.

use super::{
    After, DELIVERED_KEPT_DAYS, DELIVERED_PER_AUTHORITY_MAX, DeliveredRecord, Hub, OutboxItem, OutboxRecord,
    REDELIVER_PAGE_MAX,
};
use crate::directory::Role;
use crate::ids::{LookupId, OdsCode};
use crate::machine::ReadRequest;
use crate::machine::{Event, Transmit, backoff_ms};
use crate::records::LookupKind;
use crate::refusal::{Refusal, RefusalCode};
use crate::schema::{self, StoreOp};
use crate::sign::Signed;
use crate::time::Timestamp;
use crate::wire::{Message, Notification, Receipt, Refused};

/// Most notifications a hub sends in one round of retries (the rest wait for the next round).
pub(super) const DELIVERIES_PER_ROUND_MAX: usize = 4_096;

impl Hub {
    /// Puts a durable notification in the delivery queue (no-op if already there).
    pub(super) fn queue(&mut self, record: OutboxRecord, now: Timestamp) {
        let n = &record.notification.body;
        let key = (n.event.body.lookup_id, n.authority.clone());
        if self.outbox.contains_key(&key) {
            return;
        }
        self.due.insert((now, key.0, key.1.clone()));
        let item = OutboxItem {
            queued_at: record.queued_at,
            answered_by: n.hub.clone(),
            answered_at: n.answered_at,
            key_id: record.notification.key_id,
            notification: (self.outbox_bodies < self.config.outbox_bodies_max).then_some(record.notification),
            attempts: 0,
            next_attempt_at: now,
            overdue_reported: false,
            reading: false,
        };
        self.outbox_bodies += usize::from(item.notification.is_some());
        self.outbox.insert(key, item);
    }

    /// Puts back the body of a waiting notification read from the store.
    pub(super) fn restore_body(&mut self, key: &(LookupId, OdsCode), notification: Signed<Notification>) {
        if let Some(item) = self.outbox.get_mut(key) {
            item.reading = false;
            if item.notification.is_none() {
                item.notification = Some(notification);
                self.outbox_bodies += 1;
            }
        }
    }

    /// Lets go of a body held beyond the budget (it is in the store).
    fn spill(&mut self, key: &(LookupId, OdsCode)) {
        if self.outbox_bodies > self.config.outbox_bodies_max
            && let Some(item) = self.outbox.get_mut(key)
            && item.notification.take().is_some()
        {
            self.outbox_bodies -= 1;
        }
    }

    pub(super) fn reschedule(&mut self, key: &(LookupId, OdsCode), at: Timestamp) {
        if let Some(item) = self.outbox.get_mut(key) {
            self.due.remove(&(item.next_attempt_at, key.0, key.1.clone()));
            item.next_attempt_at = at;
            self.due.insert((at, key.0, key.1.clone()));
        }
    }

    fn unqueue(&mut self, key: &(LookupId, OdsCode)) -> Option<OutboxItem> {
        let item = self.outbox.remove(key)?;
        self.outbox_bodies -= usize::from(item.notification.is_some());
        self.receipts_waiting.remove(key);
        self.due.remove(&(item.next_attempt_at, key.0, key.1.clone()));
        Some(item)
    }

    /// Where a notification for `authority` goes next: the authority itself if connected, else
    /// (only for lookups this hub answered: relayed ones go no further) a connected home hub of
    /// it, rotating with each attempt.
    fn route(&self, authority: &OdsCode, answered_here: bool, attempt: u32) -> Option<OdsCode> {
        if self.peers.get(authority).map(|p| p.role) == Some(Role::Authority) {
            return Some(authority.clone());
        }
        if !answered_here {
            return None;
        }
        let member = self.dir.trusted.member(authority)?;
        let hubs: Vec<&OdsCode> = member
            .home_hubs
            .iter()
            .filter(|h| **h != self.code && self.peers.get(*h).map(|p| p.role) == Some(Role::Hub))
            .collect();
        if hubs.is_empty() {
            return None;
        }
        Some(hubs[attempt as usize % hubs.len()].clone())
    }

    /// Sends every notification whose retry time has come (at most a round's worth).
    pub(super) fn deliver_due(&mut self, now: Timestamp) {
        let due: Vec<(LookupId, OdsCode)> = self
            .due
            .iter()
            .take_while(|(t, _, _)| *t <= now)
            .take(DELIVERIES_PER_ROUND_MAX)
            .map(|(_, id, a)| (*id, a.clone()))
            .collect();
        let (base, cap, overdue) = (self.config.retry_base_ms, self.config.retry_cap_ms, self.config.overdue_after_ms);
        let mut read = Vec::new();
        for key in due {
            let Some(item) = self.outbox.get_mut(&key) else { continue };
            let Some(notification) = item.notification.clone() else {
                // In the store: read back, then sent (it stays due meanwhile).
                if !item.reading {
                    item.reading = true;
                    read.push(schema::OUTBOX.key(&key));
                }
                continue;
            };
            let (answered_here, attempts, waiting_ms) =
                (item.answered_by == self.code, item.attempts, now.since(item.queued_at));
            let route = self.route(&key.1, answered_here, attempts);
            let salt = u64::from_le_bytes([
                key.0.0[0], key.0.0[1], key.0.0[2], key.0.0[3], key.0.0[4], key.0.0[5], key.0.0[6], key.0.0[7],
            ]);
            let next = now.plus_ms(backoff_ms(attempts, base, cap, salt));
            let message = Message::Notify(notification);
            if let Some(to) = route {
                self.out.transmits.push_back(Transmit { to, message });
            }
            // Beyond the budget it waits in the store, sent or not (a receipt reads it back).
            self.spill(&key);
            self.reschedule(&key, next);
            let Some(item) = self.outbox.get_mut(&key) else { continue };
            item.attempts = item.attempts.saturating_add(1);
            if !item.overdue_reported && waiting_ms > overdue {
                item.overdue_reported = true;
                self.out.event(Event::NotificationOverdue { lookup_id: key.0, authority: key.1.clone(), waiting_ms });
            }
        }
        if !read.is_empty() {
            self.out.reads.push_back(ReadRequest { table: schema::Table::Outbox, keys: read });
        }
    }

    /// A peer reappeared: retry at once what could go to it.
    pub(super) fn wake_notifications_for(&mut self, peer: &OdsCode, now: Timestamp) {
        let dir = &self.dir.trusted;
        let woken: Vec<(LookupId, OdsCode)> = self
            .outbox
            .iter()
            .filter(|((_, authority), item)| {
                let via_home_hub = dir.member(authority).is_some_and(|m| m.home_hubs.contains(peer));
                (authority == peer || via_home_hub) && item.next_attempt_at > now
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in woken {
            self.reschedule(&key, now);
        }
        self.deliver_due(now);
    }

    /// Another hub hands us a notification for an authority we are a home hub of.
    pub(super) fn on_relay(&mut self, from: &OdsCode, signed: Signed<Notification>, now: Timestamp) {
        let n = &signed.body;
        let key = (n.event.body.lookup_id, n.authority.clone());
        if let Some(held) = self.outbox.get(&key) {
            // A retry of what is held changes nothing; nor does another hub's copy of a lookup
            // held already (answered here too, say, when the setting asked both): this hub's own
            // is its promise, and a copy with other matches (a hostile hub's) that the authority
            // refused would take it down too. Only the same answering hub, re-signing under its
            // new key, replaces its copy; another's may come once this one is done.
            if held.key_id == signed.key_id || held.answered_by == self.code || held.answered_by != n.hub {
                return;
            }
        }
        if let Err(reason) = self.check_relayed(&signed) {
            return self.refuse(from, "notify", reason);
        }
        // Held under another key: the answering hub re-signed it under its new key.
        self.unqueue(&key);
        let record = OutboxRecord { notification: signed, queued_at: now };
        let op = schema::OUTBOX.put(&key, &record);
        self.out.write(vec![op], vec![After::Queue(Box::new(record))]);
    }

    fn check_relayed(&self, signed: &Signed<Notification>) -> Result<(), Refusal> {
        let n = &signed.body;
        let dir = &self.dir.trusted;
        if !dir.member(&n.authority).is_some_and(|m| m.home_hubs.contains(&self.code)) {
            return Err(Refusal::NotHomeHub(n.authority.clone()));
        }
        dir.verify_at(signed.clone(), &n.hub, Role::Hub, n.signed_at)?;
        let e = &n.event.body;
        dir.verify_at(n.event.clone(), &e.setting, Role::Setting, e.at)?;
        let kind = dir.member(&e.setting).and_then(|m| m.setting_type).map(|t| t.lookup_kind());
        if kind != Some(LookupKind::Unscheduled) {
            return Err(Refusal::Scheduled);
        }
        Ok(())
    }

    /// An authority's receipt, directly or relayed: the notification is done here, and the
    /// receipt goes on to the hub that answered if that is not us.
    pub(super) fn on_receipt(&mut self, from: &OdsCode, signed: Signed<Receipt>, now: Timestamp) {
        let r = signed.body.clone();
        if let Err(e) = self.dir.trusted.verify_at(signed.clone(), &r.authority, Role::Authority, r.stored_at) {
            return self.refuse(from, "receipt", e.into());
        }
        let key = (r.lookup_id, r.authority.clone());
        let delivered_by_us = *from == r.authority;
        match self.outbox.get_mut(&key) {
            None => return,
            // Kept as delivered with its body: read it back first.
            Some(item) if delivered_by_us && item.notification.is_none() => {
                if !item.reading {
                    item.reading = true;
                    self.out
                        .reads
                        .push_back(ReadRequest { table: schema::Table::Outbox, keys: vec![schema::OUTBOX.key(&key)] });
                }
                self.receipts_waiting.insert(key, (from.clone(), signed));
                return;
            }
            Some(_) => {}
        }
        let Some(item) = self.unqueue(&key) else { return };
        let mut ops = vec![schema::OUTBOX.delete(&key)];
        if let (true, Some(notification)) = (delivered_by_us, item.notification) {
            // Delivered by us: kept for a while, in case the authority loses it (a restore).
            let record = DeliveredRecord { notification, receipt: signed.clone(), receipted_at: now };
            ops.push(schema::DELIVERED.put(&key, &record));
            ops.extend(self.keep_delivered(&r.authority, r.lookup_id, record.receipted_at));
        }
        let mut after = Vec::new();
        if r.hub == self.code {
            let latency_ms = now.since(item.answered_at);
            after.push(After::Event(Event::NotificationDelivered {
                lookup_id: r.lookup_id,
                authority: r.authority,
                latency_ms,
            }));
        } else if self.peers.get(&r.hub).map(|p| p.role) == Some(Role::Hub) {
            after.push(After::Send(Box::new(Transmit { to: r.hub.clone(), message: Message::Receipt(signed) })));
        }
        self.out.write(ops, after);
    }

    /// Indexes a delivered notification (its record is in the store), dropping the authority's
    /// oldest beyond [`DELIVERED_PER_AUTHORITY_MAX`]; returns the deletions that drop makes.
    fn keep_delivered(&mut self, authority: &OdsCode, lookup_id: LookupId, receipted_at: Timestamp) -> Vec<StoreOp> {
        let kept = self.delivered.entry(authority.clone()).or_default();
        kept.insert((receipted_at, lookup_id));
        let mut ops = Vec::new();
        while kept.len() > DELIVERED_PER_AUTHORITY_MAX {
            if let Some((_, id)) = kept.pop_first() {
                ops.push(schema::DELIVERED.delete(&(id, authority.clone())));
            }
        }
        ops
    }

    /// Drops what was delivered more than [`DELIVERED_KEPT_DAYS`] ago.
    pub(super) fn prune_delivered(&mut self, now: Timestamp) -> Vec<StoreOp> {
        let cutoff = now.minus_ms(DELIVERED_KEPT_DAYS.saturating_mul(crate::time::DAY_MS));
        let mut ops = Vec::new();
        for (authority, kept) in &mut self.delivered {
            let keep = kept.split_off(&(cutoff, LookupId([0; 16])));
            for (_, id) in std::mem::replace(kept, keep) {
                ops.push(schema::DELIVERED.delete(&(id, authority.clone())));
            }
        }
        self.delivered.retain(|_, kept| !kept.is_empty());
        ops
    }

    /// An authority (restored from an older copy, perhaps) asks again for what we delivered to it
    /// from `(since, from)` on: a page of at most [`REDELIVER_PAGE_MAX`], each with its own receipt
    /// for it (it stores what it lacks), then where the next page starts. The records stay in the
    /// store: they are read back, and sent in [`Hub::handle_read`].
    pub(super) fn redeliver(&mut self, authority: &OdsCode, since: Timestamp, from: LookupId) {
        let (keys, next) = match self.delivered.get(authority) {
            Some(kept) => {
                let mut page = kept.range((since, from)..);
                let keys: Vec<Vec<u8>> = page
                    .by_ref()
                    .take(REDELIVER_PAGE_MAX)
                    .map(|(_, id)| schema::DELIVERED.key(&(*id, authority.clone())))
                    .collect();
                (keys, page.next().copied())
            }
            None => (Vec::new(), None),
        };
        if keys.is_empty() {
            return self.out.send(authority, Message::RedeliverPage { next: None });
        }
        self.redelivery_next.insert(authority.clone(), next);
        self.out.reads.push_back(ReadRequest { table: schema::Table::Delivered, keys });
    }

    /// A peer refused something we sent (an authority refusing a notification, a hub a relay):
    /// reported; a notification this hub answered stays queued and is reported overdue in time,
    /// never dropped. A copy held only as a relay that the authority itself refuses is dropped:
    /// the hub that answered keeps its own (its promise), and a hostile hub cannot make an honest
    /// one retry a notification it invented for ever.
    pub(super) fn on_refused(&mut self, from: &OdsCode, refused: Refused) {
        self.out.event(Event::RefusedByPeer { from: from.clone(), lookup_id: refused.lookup_id, code: refused.code });
        let Some(lookup_id) = refused.lookup_id else { return };
        let from_authority = self.peers.get(from).map(|p| p.role) == Some(Role::Authority);
        let judged = matches!(refused.code, RefusalCode::BadNotification | RefusalCode::BadSignature);
        let key = (lookup_id, from.clone());
        let relayed = self.outbox.get(&key).is_some_and(|i| i.answered_by != self.code);
        if from_authority && judged && relayed && self.unqueue(&key).is_some() {
            self.out.write(vec![schema::OUTBOX.delete(&key)], vec![]);
        }
    }
}
