//! The care setting's side: it builds and signs a lookup, and checks an answer instead of
//! trusting the hub that gave it.
//!
//! For every authority in its directory the setting looks for that authority's signed head in the
//! answer and checks the proof that the plans shown are exactly the authority's plans for the
//! child (or that it has none). An authority whose head is missing, invalid, from the future or
//! older than `stale_after_ms` is *unavailable*: its phones come from the directory, and the
//! answer never says "no records" while any authority is unavailable. Plans are shown by the
//! setting's own clock. A proof that does not hold means the hub misbehaved: the whole answer is
//! refused and the caller asks another hub.
//!
//! Call order: [`Setting::lookup`] gives the signed lookup to send (after a `Sync` carrying
//! [`Setting::directory_version`], so the hub can pass on newer directory versions); feed any
//! `Directories` reply to [`Setting::handle_directories`]; check the `Answer` with
//! [`Setting::verify_answer`].

use crate::directory::{DirectoryError, RecordError, Role, SignedDirectory, TrustedDirectory};
use crate::feed::{EntryBody, FeedEntry, FeedHead, SignedEntry, SignedHead, plans_value, verify_entry, verify_head};
use crate::ids::{LookupId, NhsNumber, OdsCode};
use crate::machine::DirectoryState;
use crate::merkle::{ProofError, key_of};
use crate::records::{AccessEvent, Contacts, LookupKind, Person, Plan, SettingType, TextError};
use crate::sign::{Identity, SignatureBytes, Signed, Verified};
use crate::time::Timestamp;
use crate::wire::{AuthorityAnswer, LookupAnswer};
use std::collections::{BTreeMap, HashMap};

/// Default age past which an authority's head no longer counts as fresh: 15 minutes (heads are
/// signed every minute while an authority is up).
pub const STALE_AFTER_MS_DEFAULT: u64 = 15 * 60_000;
/// How far ahead of the setting's clock a head may be dated (clocks drift).
pub const HEAD_SKEW_MAX_MS: u64 = 5 * 60_000;
/// Most verified heads a setting remembers (so that it checks each signature once).
pub const HEAD_CACHE_MAX: usize = 8_192;
/// Most verified visits a setting remembers: a child looked up again comes with the visits
/// already shown, each of whose signatures is checked once.
pub const VISIT_CACHE_MAX: usize = 8_192;

/// A care setting's identity and the directory it trusts.
pub struct Setting {
    code: OdsCode,
    setting_type: SettingType,
    identity: Identity,
    dir: DirectoryState,
    stale_after_ms: u64,
    /// Heads whose signatures were verified, by origin: the signed head as verified.
    verified_heads: HashMap<OdsCode, SignedHead>,
    /// Visits whose signatures were verified, by signature: the signed visit as verified.
    verified_visits: HashMap<SignatureBytes, SignedEntry>,
}

/// Why an authority could not be checked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    /// The hub holds no head of the authority.
    #[error("the hub holds no signed head of this authority")]
    NoHead,
    /// The head's signature does not hold now (a revoked key, say).
    #[error("its head is not validly signed: {0}")]
    HeadNotValid(RecordError),
    /// The head is dated ahead of this setting's clock.
    #[error("its head is dated {0}, ahead of this setting's clock")]
    FromTheFuture(Timestamp),
}

/// Whether an authority's plans could be checked, and as of when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthorityStatus {
    /// A fresh head proves exactly which plans it has for the child.
    Checked { as_of: Timestamp },
    /// A valid but old head: its plans are shown as of then, but absence is not proven now.
    Stale { as_of: Timestamp },
    /// Nothing could be checked.
    Unavailable(Unavailable),
}

/// One authority, as an answer shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorityView {
    pub code: OdsCode,
    pub name: String,
    /// From its head-committed contacts entry, else from the directory.
    pub contacts: Option<Contacts>,
    pub status: AuthorityStatus,
    /// Its plans for the child that are visible today (by the setting's clock).
    pub plans: Vec<Plan>,
}

impl AuthorityView {
    /// Whether this authority's data could be checked as fresh.
    pub fn checked(&self) -> bool {
        matches!(self.status, AuthorityStatus::Checked { .. })
    }

    /// When the plans shown were current, if they were checked at all.
    pub fn as_of(&self) -> Option<Timestamp> {
        match self.status {
            AuthorityStatus::Checked { as_of } | AuthorityStatus::Stale { as_of } => Some(as_of),
            AuthorityStatus::Unavailable(_) => None,
        }
    }
}

/// A previous unscheduled visit, as shown to a clinician.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShownVisit {
    pub at: Timestamp,
    pub setting: OdsCode,
    pub setting_name: String,
    pub setting_type: Option<SettingType>,
    pub role: String,
    pub hub: OdsCode,
}

/// An answer whose every head, proof and record was verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedAnswer {
    pub lookup_id: LookupId,
    pub nhs: NhsNumber,
    pub hub: OdsCode,
    /// Every authority of the directory, in directory order.
    pub authorities: Vec<AuthorityView>,
    pub history: Vec<ShownVisit>,
}

impl VerifiedAnswer {
    /// Every plan to show, with its authority.
    pub fn plans(&self) -> impl Iterator<Item = (&AuthorityView, &Plan)> {
        self.authorities.iter().flat_map(|a| a.plans.iter().map(move |p| (a, p)))
    }

    /// Authorities that could not be checked as fresh (stale or unavailable).
    pub fn unavailable(&self) -> impl Iterator<Item = &AuthorityView> {
        self.authorities.iter().filter(|a| !a.checked())
    }

    /// "No records" may be said only when every authority's fresh head proves absence.
    pub fn no_records(&self) -> bool {
        self.authorities.iter().all(|a| a.checked() && a.plans.is_empty())
    }
}

/// Why an answer cannot be trusted (the hub misbehaved: ask another).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// The answer is for another lookup or another NHS number.
    #[error("the answer is for another lookup")]
    NotOurLookup,
    /// A record's signature or rules do not hold.
    #[error("a record in the answer does not verify: {0}")]
    Record(#[from] crate::feed::EntryError),
    /// A proof does not lead to its authority's signed root.
    #[error("the proof for authority {authority} does not hold: {source}")]
    Proof { authority: OdsCode, source: ProofError },
    /// A record is of the wrong kind, for another child or authority, or given twice.
    #[error("the answer holds a record that does not belong in it ({0})")]
    Misplaced(&'static str),
}

impl Setting {
    /// The setting `code`, as listed in `directory`.
    pub fn new(code: OdsCode, identity: Identity, directory: TrustedDirectory) -> Option<Setting> {
        let member = directory.member(&code).filter(|m| m.role == Role::Setting)?;
        let setting_type = member.setting_type?;
        Some(Setting {
            code,
            setting_type,
            identity,
            dir: DirectoryState::new(directory),
            stale_after_ms: STALE_AFTER_MS_DEFAULT,
            verified_heads: HashMap::new(),
            verified_visits: HashMap::new(),
        })
    }

    /// Sets how old an authority's head may be and still count as fresh.
    pub fn with_stale_after_ms(mut self, ms: u64) -> Setting {
        self.stale_after_ms = ms;
        self
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
    /// What this setting's lookups are, by its type in the directory.
    pub fn kind(&self) -> LookupKind {
        self.setting_type.lookup_kind()
    }

    /// Newer directory versions from a hub.
    pub fn handle_directories(&mut self, chain: Vec<SignedDirectory>, now: Timestamp) -> Result<u64, DirectoryError> {
        let ops = self.dir.accept(chain, now)?;
        if !ops.is_empty() {
            // Keys may have been revoked: every head and visit is checked again.
            self.verified_heads.clear();
            self.verified_visits.clear();
        }
        Ok(self.dir.version())
    }

    /// Builds and signs a lookup. `lookup_id` must be fresh (random).
    pub fn lookup(
        &self,
        nhs: NhsNumber,
        person: Person,
        lookup_id: LookupId,
        now: Timestamp,
    ) -> Result<Signed<AccessEvent>, TextError> {
        let event = AccessEvent { lookup_id, setting: self.code.clone(), person, at: now, nhs };
        event.check()?;
        Ok(self.identity.sign(event))
    }

    /// Checks every head, proof and record of `answer` against the directory and the lookup it
    /// answers, at the setting's clock `now`.
    pub fn verify_answer(
        &mut self,
        lookup: &AccessEvent,
        answer: LookupAnswer,
        now: Timestamp,
    ) -> Result<VerifiedAnswer, AnswerError> {
        if answer.lookup_id != lookup.lookup_id || answer.nhs != lookup.nhs {
            return Err(AnswerError::NotOurLookup);
        }
        let mut given: BTreeMap<OdsCode, AuthorityAnswer> = BTreeMap::new();
        for a in answer.authorities {
            let origin = a.head.body.origin.clone();
            if self.dir.trusted.member(&origin).map(|m| m.role) != Some(Role::Authority) {
                return Err(AnswerError::Misplaced("a head of a member that is not an authority"));
            }
            if given.insert(origin, a).is_some() {
                return Err(AnswerError::Misplaced("two heads of one authority"));
            }
        }
        let members: Vec<(OdsCode, String, Option<Contacts>)> = self
            .dir
            .trusted
            .with_role(Role::Authority)
            .map(|m| (m.code.clone(), m.name.clone(), m.contacts.clone()))
            .collect();
        let mut authorities = Vec::with_capacity(members.len());
        for (code, name, listed) in members {
            let view = match given.remove(&code) {
                None => AuthorityView {
                    code,
                    name,
                    contacts: listed,
                    status: AuthorityStatus::Unavailable(Unavailable::NoHead),
                    plans: vec![],
                },
                Some(a) => self.check_authority(code, name, listed, a, lookup.nhs, now)?,
            };
            authorities.push(view);
        }
        let mut history = Vec::with_capacity(answer.history.len());
        for visit in answer.history {
            let visit = self.visit_valid(visit)?;
            history.push(shown_visit(&self.dir.trusted, visit, lookup.nhs)?);
        }
        Ok(VerifiedAnswer { lookup_id: answer.lookup_id, nhs: answer.nhs, hub: answer.hub, authorities, history })
    }

    /// Remembers heads verified elsewhere (a driver may verify an answer's heads on several
    /// threads with [`verify_head`] before calling [`Setting::verify_answer`]); only verified heads
    /// can be given.
    pub fn remember_heads(&mut self, heads: impl IntoIterator<Item = Verified<FeedHead>>) {
        for head in heads {
            if self.verified_heads.len() >= HEAD_CACHE_MAX {
                self.verified_heads.clear();
            }
            let head = head.into_signed();
            self.verified_heads.insert(head.body.origin.clone(), head);
        }
    }

    /// Whether this very head (same bytes) was verified before.
    pub fn knows_head(&self, head: &SignedHead) -> bool {
        self.verified_heads.get(&head.body.origin) == Some(head)
    }

    /// Verifies a head once; a head already verified (same bytes) is taken as it is.
    fn head_valid(&mut self, head: &SignedHead) -> Result<(), RecordError> {
        if self.knows_head(head) {
            return Ok(());
        }
        verify_head(&self.dir.trusted, head.clone())?;
        if self.verified_heads.len() >= HEAD_CACHE_MAX {
            self.verified_heads.clear();
        }
        self.verified_heads.insert(head.body.origin.clone(), head.clone());
        Ok(())
    }

    /// Verifies a visit once; a visit already verified (same bytes) is taken as it is.
    fn visit_valid(&mut self, visit: SignedEntry) -> Result<SignedEntry, AnswerError> {
        if self.verified_visits.get(&visit.signature) == Some(&visit) {
            return Ok(visit);
        }
        let visit = verify_entry(&self.dir.trusted, visit)?.into_signed();
        if self.verified_visits.len() >= VISIT_CACHE_MAX {
            self.verified_visits.clear();
        }
        self.verified_visits.insert(visit.signature, visit.clone());
        Ok(visit)
    }

    fn check_authority(
        &mut self,
        code: OdsCode,
        name: String,
        listed: Option<Contacts>,
        a: AuthorityAnswer,
        nhs: NhsNumber,
        now: Timestamp,
    ) -> Result<AuthorityView, AnswerError> {
        let unavailable = |why, contacts| AuthorityView {
            code: code.clone(),
            name: name.clone(),
            contacts,
            status: AuthorityStatus::Unavailable(why),
            plans: vec![],
        };
        if let Err(e) = self.head_valid(&a.head) {
            return Ok(unavailable(Unavailable::HeadNotValid(e), listed));
        }
        let head = &a.head.body;
        if head.at.since(now) > HEAD_SKEW_MAX_MS {
            return Ok(unavailable(Unavailable::FromTheFuture(head.at), listed));
        }
        let plans = check_plans(&code, head.seq, nhs, &a.plans)?;
        let value = (!plans.is_empty()).then(|| plans_value(nhs, a.plans.iter()));
        a.proof
            .verify(&head.plans_root, &key_of(nhs), value.as_ref())
            .map_err(|source| AnswerError::Proof { authority: code.clone(), source })?;
        let contacts = match a.contacts {
            Some(c) if plans.is_empty() => return Err(misplaced(c, "contacts without plans")),
            Some(c) => Some(check_contacts(&code, head.contacts, c)?),
            None => listed,
        };
        let today = now.date();
        let visible: Vec<Plan> = plans.into_iter().filter(|p| p.visible_on(today)).collect();
        let status = if now.since(head.at) <= self.stale_after_ms {
            AuthorityStatus::Checked { as_of: head.at }
        } else {
            AuthorityStatus::Stale { as_of: head.at }
        };
        Ok(AuthorityView { code, name, contacts, status, plans: visible })
    }
}

fn misplaced(_: FeedEntry, what: &'static str) -> AnswerError {
    AnswerError::Misplaced(what)
}

/// The plans of an authority's answer: its own, for this child, under its head, in order.
fn check_plans(code: &OdsCode, head_seq: u64, nhs: NhsNumber, entries: &[FeedEntry]) -> Result<Vec<Plan>, AnswerError> {
    let mut plans: Vec<Plan> = Vec::with_capacity(entries.len());
    for e in entries {
        if e.origin != *code || e.seq > head_seq {
            return Err(AnswerError::Misplaced("a plan of another authority, or after its head"));
        }
        crate::feed::check_body(e)?;
        let EntryBody::Plan(p) = &e.body else {
            return Err(AnswerError::Misplaced("an entry that is not a plan"));
        };
        if p.nhs != nhs {
            return Err(AnswerError::Misplaced("a plan of another child"));
        }
        if plans.last().is_some_and(|last| last.reference >= p.reference) {
            return Err(AnswerError::Misplaced("plans out of order, or one plan twice"));
        }
        plans.push(p.clone());
    }
    Ok(plans)
}

/// The contacts entry an answer gives, checked against the digest its head signs.
fn check_contacts(
    code: &OdsCode,
    signed: Option<crate::merkle::Digest>,
    entry: FeedEntry,
) -> Result<Contacts, AnswerError> {
    if entry.origin != *code || Some(entry.digest()) != signed {
        return Err(AnswerError::Misplaced("contacts the head does not sign"));
    }
    match entry.body {
        EntryBody::Contacts(c) => Ok(*c),
        _ => Err(AnswerError::Misplaced("contacts that are not contacts")),
    }
}

/// A visit whose signature was verified, as shown.
fn shown_visit(dir: &TrustedDirectory, e: SignedEntry, nhs: NhsNumber) -> Result<ShownVisit, AnswerError> {
    let EntryBody::Visit(v) = e.body.body else {
        return Err(AnswerError::Misplaced("visit"));
    };
    if v.body.nhs != nhs {
        return Err(AnswerError::Misplaced("visit of another child"));
    }
    let member = dir.member(&v.body.setting);
    Ok(ShownVisit {
        at: v.body.at,
        setting_name: member.map_or_else(|| v.body.setting.to_string(), |m| m.name.clone()),
        setting_type: member.and_then(|m| m.setting_type),
        setting: v.body.setting,
        role: v.body.person.role,
        hub: e.body.origin,
    })
}
