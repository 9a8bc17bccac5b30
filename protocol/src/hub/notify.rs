//! Notifications: store-and-forward to the owning authority, directly or through one of its home
//! hubs, retried with capped backoff until the authority's signed receipt comes back.

use super::{After, Hub, OutboxItem, OutboxRecord};
use crate::codec;
use crate::directory::Role;
use crate::ids::OdsCode;
use crate::machine::{Event, Transmit, backoff_ms, outbox_key};
use crate::sign::Signed;
use crate::store::{StoreOp, Table};
use crate::time::Timestamp;
use crate::wire::{Message, Notification, Receipt};

impl Hub {
    /// Puts a durable notification in the delivery queue (no-op if already there).
    pub(super) fn queue(&mut self, record: OutboxRecord, now: Timestamp) {
        let n = &record.notification.body;
        let key = (n.event.body.lookup_id, n.authority.clone());
        self.outbox.entry(key).or_insert(OutboxItem {
            record,
            attempts: 0,
            next_attempt_at: now,
            overdue_reported: false,
        });
    }

    /// Where a notification for `authority` goes next: the authority itself if connected, else
    /// (only for lookups this hub answered: relayed ones go no further) a connected home hub of
    /// it, rotating with each attempt.
    fn route(&self, authority: &OdsCode, answered_here: bool, attempt: u32) -> Option<OdsCode> {
        if self.peers.get(authority) == Some(&Role::Authority) {
            return Some(authority.clone());
        }
        if !answered_here {
            return None;
        }
        let member = self.dir.trusted.member(authority)?;
        let hubs: Vec<&OdsCode> =
            member.home_hubs.iter().filter(|h| **h != self.code && self.peers.get(*h) == Some(&Role::Hub)).collect();
        if hubs.is_empty() {
            return None;
        }
        Some(hubs[attempt as usize % hubs.len()].clone())
    }

    /// Sends every notification whose retry time has come.
    pub(super) fn deliver_due(&mut self, now: Timestamp) {
        let due: Vec<_> =
            self.outbox.iter().filter(|(_, i)| i.next_attempt_at <= now).map(|(k, _)| k.clone()).collect();
        for key in due {
            let Some(item) = self.outbox.get(&key) else {
                continue;
            };
            let answered_here = item.record.notification.body.hub == self.code;
            let route = self.route(&key.1, answered_here, item.attempts);
            let salt = u64::from_le_bytes(key.0.0[..8].try_into().unwrap_or([0; 8]));
            let (base, cap, overdue) =
                (self.config.retry_base_ms, self.config.retry_cap_ms, self.config.overdue_after_ms);
            let Some(item) = self.outbox.get_mut(&key) else {
                continue;
            };
            if let Some(to) = route {
                self.out
                    .transmits
                    .push_back(Transmit { to, message: Message::Notify(item.record.notification.clone()) });
            }
            item.next_attempt_at = now.plus_ms(backoff_ms(item.attempts, base, cap, salt));
            item.attempts = item.attempts.saturating_add(1);
            let waiting_ms = now.since(item.record.queued_at);
            if !item.overdue_reported && waiting_ms > overdue {
                item.overdue_reported = true;
                self.out.event(Event::NotificationOverdue { lookup_id: key.0, authority: key.1.clone(), waiting_ms });
            }
        }
    }

    /// A peer reappeared: retry at once what could go to it.
    pub(super) fn wake_notifications_for(&mut self, peer: &OdsCode, now: Timestamp) {
        let dir = &self.dir.trusted;
        for ((_, authority), item) in self.outbox.iter_mut() {
            let via_home_hub = dir.member(authority).is_some_and(|m| m.home_hubs.contains(peer));
            if authority == peer || via_home_hub {
                item.next_attempt_at = item.next_attempt_at.min(now);
            }
        }
        self.deliver_due(now);
    }

    /// Another hub hands us a notification for an authority we are a home hub of.
    pub(super) fn on_relay(&mut self, from: &OdsCode, signed: Signed<Notification>, now: Timestamp) {
        let n = &signed.body;
        let key = (n.event.body.lookup_id, n.authority.clone());
        if self.outbox.contains_key(&key) {
            // Already held (and verified when it arrived): a retry changes nothing.
            return;
        }
        let serves = self.dir.trusted.member(&n.authority).is_some_and(|m| m.home_hubs.contains(&self.code));
        if !serves {
            return self.refuse(from, "notify", format!("{} is not a home hub of {}", self.code, n.authority));
        }
        let dir = &self.dir.trusted;
        let checked = dir
            .verify(signed.clone(), &n.hub, Role::Hub)
            .and_then(|_| dir.verify(n.event.clone(), &n.event.body.setting, Role::Setting));
        if let Err(e) = checked {
            return self.refuse(from, "notify", e.to_string());
        }
        let record = OutboxRecord { notification: signed, queued_at: now };
        let op = StoreOp::Put { table: Table::Outbox, key: outbox_key(key.0, &key.1), value: codec::encode(&record) };
        self.out.write(vec![op], vec![After::Queue(Box::new(record))]);
    }

    /// An authority's receipt, directly or relayed: the notification is done here, and the
    /// receipt goes on to the hub that answered if that is not us.
    pub(super) fn on_receipt(&mut self, from: &OdsCode, signed: Signed<Receipt>, now: Timestamp) {
        let r = signed.body.clone();
        if let Err(e) = self.dir.trusted.verify(signed.clone(), &r.authority, Role::Authority) {
            return self.refuse(from, "receipt", e.to_string());
        }
        let key = (r.lookup_id, r.authority.clone());
        let Some(item) = self.outbox.remove(&key) else {
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
        } else if self.peers.get(&r.hub) == Some(&Role::Hub) {
            after.push(After::Send(Box::new(Transmit { to: r.hub.clone(), message: Message::Receipt(signed) })));
        }
        let op = StoreOp::Delete { table: Table::Outbox, key: outbox_key(key.0, &key.1) };
        self.out.write(vec![op], after);
    }
}
