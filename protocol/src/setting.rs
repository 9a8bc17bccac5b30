//! The care setting's side: it builds and signs a lookup, and checks every record of the answer
//! end to end, so that a hub can neither invent a plan nor hide who signed it.
//!
//! Call order: [`Setting::lookup`] gives the message to send (after a `Sync` carrying
//! [`Setting::directory_version`], so the hub can pass on newer directory versions); feed any
//! `Directories` reply to [`Setting::handle_directories`]; check the `Answer` with
//! [`Setting::verify_answer`].

use crate::directory::{DirectoryError, Role, SignedDirectory, TrustedDirectory};
use crate::feed::{EntryBody, SignedEntry, verify_entry};
use crate::ids::{LookupId, NhsNumber, OdsCode, PlanRef};
use crate::machine::DirectoryState;
use crate::records::{AccessEvent, Contacts, LookupKind, Person, Plan, SettingType, TextError};
use crate::sign::{Identity, Signed};
use crate::time::Timestamp;
use crate::wire::{Freshness, LookupAnswer};

/// A care setting's identity and the directory it trusts.
pub struct Setting {
    code: OdsCode,
    name: String,
    setting_type: SettingType,
    identity: Identity,
    dir: DirectoryState,
}

/// A plan as shown to a clinician, with whom to call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShownPlan {
    pub authority: OdsCode,
    pub authority_name: String,
    pub plan: Plan,
    pub contacts: Option<Contacts>,
    pub freshness: Option<Freshness>,
}

/// A previous unscheduled visit, as shown to a clinician.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShownVisit {
    pub at: Timestamp,
    pub setting: OdsCode,
    pub setting_name: String,
    pub setting_type: SettingType,
    pub hub: OdsCode,
}

/// An answer whose every record was verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedAnswer {
    pub lookup_id: LookupId,
    pub nhs: NhsNumber,
    pub hub: OdsCode,
    pub plans: Vec<ShownPlan>,
    pub history: Vec<ShownVisit>,
}

/// Why an answer cannot be trusted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// The answer is for another lookup or another NHS number.
    #[error("the answer is for another lookup")]
    NotOurLookup,
    /// A record's signature or rules do not hold.
    #[error("a record in the answer does not verify: {0}")]
    Record(#[from] crate::feed::EntryError),
    /// A record is of the wrong kind or for another child.
    #[error("the answer holds a record that does not belong in it ({0})")]
    Misplaced(&'static str),
}

impl Setting {
    /// The setting `code`, as listed in `directory`.
    pub fn new(code: OdsCode, identity: Identity, directory: TrustedDirectory) -> Option<Setting> {
        let member = directory.member(&code).filter(|m| m.role == Role::Setting)?;
        let (name, setting_type) = (member.name.clone(), member.setting_type?);
        Some(Setting { code, name, setting_type, identity, dir: DirectoryState::new(directory) })
    }

    pub fn code(&self) -> &OdsCode {
        &self.code
    }
    pub fn directory(&self) -> &TrustedDirectory {
        &self.dir.trusted
    }
    pub fn directory_version(&self) -> u64 {
        self.dir.version()
    }

    /// Newer directory versions from the hub.
    pub fn handle_directories(&mut self, chain: Vec<SignedDirectory>, now: Timestamp) -> Result<u64, DirectoryError> {
        self.dir.accept(chain, now)?;
        Ok(self.dir.version())
    }

    /// Builds and signs a lookup. `lookup_id` must be fresh (random).
    pub fn lookup(
        &self,
        nhs: NhsNumber,
        person: Person,
        kind: LookupKind,
        lookup_id: LookupId,
        now: Timestamp,
    ) -> Result<Signed<AccessEvent>, TextError> {
        let event = AccessEvent {
            lookup_id,
            setting: self.code.clone(),
            setting_name: self.name.clone(),
            setting_type: self.setting_type,
            person,
            at: now,
            nhs,
            kind,
        };
        event.check()?;
        Ok(self.identity.sign(event))
    }

    /// Checks every record of `answer` against the directory and against the lookup it answers.
    pub fn verify_answer(&self, lookup: &AccessEvent, answer: LookupAnswer) -> Result<VerifiedAnswer, AnswerError> {
        if answer.lookup_id != lookup.lookup_id || answer.nhs != lookup.nhs {
            return Err(AnswerError::NotOurLookup);
        }
        let dir = &self.dir.trusted;
        let mut contacts = std::collections::BTreeMap::new();
        for e in answer.contacts {
            let e = verify_entry(dir, e)?.into_signed();
            let EntryBody::Contacts(c) = e.body.body else {
                return Err(AnswerError::Misplaced("contacts"));
            };
            contacts.insert(e.body.origin, c);
        }
        let mut plans = Vec::new();
        let mut seen: std::collections::BTreeSet<(OdsCode, PlanRef)> = Default::default();
        for e in answer.plans {
            let e = verify_entry(dir, e)?.into_signed();
            let EntryBody::Plan(plan) = e.body.body else {
                return Err(AnswerError::Misplaced("plan"));
            };
            if plan.nhs != lookup.nhs || !plan.visible_on(answer.answered_at.date()) {
                return Err(AnswerError::Misplaced("plan of another child, or not visible"));
            }
            if !seen.insert((e.body.origin.clone(), plan.reference.clone())) {
                return Err(AnswerError::Misplaced("one plan twice"));
            }
            let authority = e.body.origin;
            let member = dir.member(&authority);
            plans.push(ShownPlan {
                authority_name: member.map_or_else(|| authority.to_string(), |m| m.name.clone()),
                contacts: contacts.get(&authority).cloned().or_else(|| member.and_then(|m| m.contacts.clone())),
                freshness: answer.freshness.iter().find(|f| f.authority == authority).cloned(),
                authority,
                plan,
            });
        }
        let history = answer.history.into_iter().map(|e| shown_visit(dir, e, lookup.nhs)).collect::<Result<_, _>>()?;
        Ok(VerifiedAnswer { lookup_id: answer.lookup_id, nhs: answer.nhs, hub: answer.hub, plans, history })
    }
}

fn shown_visit(dir: &TrustedDirectory, e: SignedEntry, nhs: NhsNumber) -> Result<ShownVisit, AnswerError> {
    let e = verify_entry(dir, e)?.into_signed();
    let EntryBody::Visit(v) = e.body.body else {
        return Err(AnswerError::Misplaced("visit"));
    };
    if v.body.nhs != nhs {
        return Err(AnswerError::Misplaced("visit of another child"));
    }
    Ok(ShownVisit {
        at: v.body.at,
        setting: v.body.setting,
        setting_name: v.body.setting_name,
        setting_type: v.body.setting_type,
        hub: e.body.origin,
    })
}
