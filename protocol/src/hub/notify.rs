//! Notifications: store-and-forward to the owning authority, directly or through one of its home
//! hubs, retried with capped backoff until the authority's signed receipt comes back.

use super::{After, Hub, OutboxItem, OutboxRecord};
use crate::directory::Role;
use crate::ids::{LookupId, OdsCode};
use crate::machine::{Event, Transmit, backoff_ms};
use crate::records::LookupKind;
use crate::refusal::Refusal;
use crate::schema;
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
        self.outbox.insert(key, OutboxItem { record, attempts: 0, next_attempt_at: now, overdue_reported: false });
    }

    fn reschedule(&mut self, key: &(LookupId, OdsCode), at: Timestamp) {
        if let Some(item) = self.outbox.get_mut(key) {
            self.due.remove(&(item.next_attempt_at, key.0, key.1.clone()));
            item.next_attempt_at = at;
            self.due.insert((at, key.0, key.1.clone()));
        }
    }

    fn unqueue(&mut self, key: &(LookupId, OdsCode)) -> Option<OutboxItem> {
        let item = self.outbox.remove(key)?;
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
        for key in due {
            let Some(item) = self.outbox.get(&key) else { continue };
            let answered_here = item.record.notification.body.hub == self.code;
            let route = self.route(&key.1, answered_here, item.attempts);
            let salt = u64::from_le_bytes([
                key.0.0[0], key.0.0[1], key.0.0[2], key.0.0[3], key.0.0[4], key.0.0[5], key.0.0[6], key.0.0[7],
            ]);
            let next = now.plus_ms(backoff_ms(item.attempts, base, cap, salt));
            let (message, waiting_ms) =
                (Message::Notify(item.record.notification.clone()), now.since(item.record.queued_at));
            if let Some(to) = route {
                self.out.transmits.push_back(Transmit { to, message });
            }
            self.reschedule(&key, next);
            let Some(item) = self.outbox.get_mut(&key) else { continue };
            item.attempts = item.attempts.saturating_add(1);
            if !item.overdue_reported && waiting_ms > overdue {
                item.overdue_reported = true;
                self.out.event(Event::NotificationOverdue { lookup_id: key.0, authority: key.1.clone(), waiting_ms });
            }
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
        if self.outbox.contains_key(&key) {
            // Already held (and checked when it arrived): a retry changes nothing.
            return;
        }
        if let Err(reason) = self.check_relayed(&signed) {
            return self.refuse(from, "notify", reason);
        }
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
        dir.verify_at(signed.clone(), &n.hub, Role::Hub, n.answered_at)?;
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
        let Some(item) = self.unqueue(&key) else {
            return;
        };
        let mut after = Vec::new();
        if r.hub == self.code {
            let latency_ms = now.since(item.record.notification.body.answered_at);
            after.push(After::Event(Event::NotificationDelivered {
                lookup_id: r.lookup_id,
                authority: r.authority,
                latency_ms,
            }));
        } else if self.peers.get(&r.hub).map(|p| p.role) == Some(Role::Hub) {
            after.push(After::Send(Box::new(Transmit { to: r.hub.clone(), message: Message::Receipt(signed) })));
        }
        self.out.write(vec![schema::OUTBOX.delete(&key)], after);
    }

    /// A peer refused something we sent (an authority refusing a notification, a hub a relay):
    /// reported; a notification stays queued and is reported overdue in time, never dropped.
    pub(super) fn on_refused(&mut self, from: &OdsCode, refused: Refused) {
        self.out.event(Event::RefusedByPeer { from: from.clone(), lookup_id: refused.lookup_id, code: refused.code });
    }
}
