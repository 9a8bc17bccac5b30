//! The records the federation shares: plans, authority contacts and access events (docs/records.md).

use crate::ids::{LookupId, NhsNumber, OdsCode, PlanRef};
use crate::time::{Date, Timestamp};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Days a plan stays visible after its end date.
pub const VISIBLE_AFTER_END_DAYS: i32 = 365;
/// Days an unborn-child plan stays visible after the expected due date.
pub const VISIBLE_AFTER_DUE_DAYS: i32 = 28;
/// Longest free-text field (names, roles, phone numbers) accepted in a record.
pub const TEXT_LEN_MAX: usize = 128;

/// The kind of plan, each with its SNOMED CT code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PlanType {
    /// Child protection plan.
    ChildProtection,
    /// Looked after child (in care).
    LookedAfter,
    /// Unborn child subject to a child protection plan, held against the pregnant woman's number.
    UnbornChildProtection,
}

impl PlanType {
    pub const ALL: [PlanType; 3] = [PlanType::ChildProtection, PlanType::LookedAfter, PlanType::UnbornChildProtection];

    pub fn snomed_code(self) -> &'static str {
        match self {
            PlanType::ChildProtection => "342191000000101",
            PlanType::LookedAfter => "764841000000100",
            PlanType::UnbornChildProtection => "818901000000100",
        }
    }

    /// A short name used in files and on screen: `CPP`, `LAC`, `UCPP`.
    pub fn short_name(self) -> &'static str {
        match self {
            PlanType::ChildProtection => "CPP",
            PlanType::LookedAfter => "LAC",
            PlanType::UnbornChildProtection => "UCPP",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            PlanType::ChildProtection => "child protection plan",
            PlanType::LookedAfter => "looked after child",
            PlanType::UnbornChildProtection => "unborn child subject to a child protection plan",
        }
    }

    /// Parses a short name (`CPP`, `LAC`, `UCPP`, any case) or a SNOMED CT code.
    pub fn parse(text: &str) -> Option<PlanType> {
        let t = text.trim();
        PlanType::ALL.into_iter().find(|p| p.short_name().eq_ignore_ascii_case(t) || p.snomed_code() == t)
    }
}

/// One plan as its authority holds it, and the alert summary hubs replicate: nothing more than
/// this (no names, addresses, dates of birth or case notes) ever leaves an authority.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub reference: PlanRef,
    pub nhs: NhsNumber,
    pub plan_type: PlanType,
    pub start: Date,
    pub end: Option<Date>,
    /// Expected due date; present exactly for unborn-child plans.
    pub due: Option<Date>,
    /// Entered in error: shown nowhere.
    pub withdrawn: bool,
}

impl fmt::Debug for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plan")
            .field("reference", &self.reference)
            .field("nhs", &self.nhs)
            .field("plan_type", &self.plan_type)
            .field("withdrawn", &self.withdrawn)
            .finish_non_exhaustive()
    }
}

/// Why a plan is not a valid plan.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The end date is before the start date.
    #[error("the end date is before the start date")]
    EndBeforeStart,
    /// An unborn-child plan without an expected due date.
    #[error("an unborn-child plan needs an expected due date")]
    MissingDueDate,
    /// A due date on a plan that is not for an unborn child.
    #[error("only an unborn-child plan has an expected due date")]
    UnexpectedDueDate,
    /// A start date after tomorrow (a plan is recorded once it has started).
    #[error("the start date {0} is in the future (a plan is recorded once it has started)")]
    StartInTheFuture(Date),
    /// A start date before 1990 (a mistyped year, or a placeholder date).
    #[error("the start date {0} is before 1990 (a mistyped year?)")]
    StartTooEarly(Date),
    /// An expected due date more than a year away.
    #[error("the expected due date {0} is more than a year away")]
    DueTooLate(Date),
}

/// The earliest start date a plan may be recorded with.
pub const EARLIEST_START: (i32, u32, u32) = (1990, 1, 1);

impl Plan {
    /// Checks the rules that tie a plan's fields together.
    pub fn check(&self) -> Result<(), PlanError> {
        if matches!(self.end, Some(end) if end < self.start) {
            return Err(PlanError::EndBeforeStart);
        }
        match (self.plan_type, self.due) {
            (PlanType::UnbornChildProtection, None) => Err(PlanError::MissingDueDate),
            (PlanType::ChildProtection | PlanType::LookedAfter, Some(_)) => Err(PlanError::UnexpectedDueDate),
            _ => Ok(()),
        }
    }

    /// [`Plan::check`], and the dates a council may record on `today`: a start no later than
    /// tomorrow (a council's today may be UTC's yesterday) and not before 1990, a due date within
    /// a year. Replicated plans are not judged by this (they were recorded on their own day).
    pub fn check_recorded_on(&self, today: Date) -> Result<(), PlanError> {
        self.check()?;
        if self.start > today.plus_days(1) {
            return Err(PlanError::StartInTheFuture(self.start));
        }
        let (y, m, d) = EARLIEST_START;
        if Date::from_ymd(y, m, d).is_ok_and(|earliest| self.start < earliest) {
            return Err(PlanError::StartTooEarly(self.start));
        }
        match self.due {
            Some(due) if due > today.plus_days(365) => Err(PlanError::DueTooLate(due)),
            _ => Ok(()),
        }
    }

    /// Whether a care setting may be shown this plan on `today`: not withdrawn, and within 365
    /// days of its end (unborn: within 28 days of the due date).
    pub fn visible_on(&self, today: Date) -> bool {
        if self.withdrawn {
            return false;
        }
        if let Some(end) = self.end
            && today > end.plus_days(VISIBLE_AFTER_END_DAYS)
        {
            return false;
        }
        if let Some(due) = self.due
            && today > due.plus_days(VISIBLE_AFTER_DUE_DAYS)
        {
            return false;
        }
        true
    }

    /// Whether the plan is open (started, not ended, not withdrawn) on `today`.
    pub fn open_on(&self, today: Date) -> bool {
        !self.withdrawn && self.start <= today && self.end.is_none_or(|end| today <= end)
    }
}

/// How to reach an authority's children's social care.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contacts {
    pub name: String,
    /// Office-hours phone.
    pub office_phone: String,
    /// Out-of-hours phone (emergency duty team).
    pub out_of_hours_phone: String,
}

/// The kind of care setting looking a child up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SettingType {
    EmergencyDepartment,
    WalkInCentre,
    MinorInjuriesUnit,
    UrgentTreatmentCentre,
    OutOfHoursGp,
    Maternity,
    Ambulance,
    Nhs111,
    GeneralPractice,
    HealthVisiting,
    SchoolNursing,
}

impl SettingType {
    pub const ALL: [SettingType; 11] = [
        SettingType::EmergencyDepartment,
        SettingType::WalkInCentre,
        SettingType::MinorInjuriesUnit,
        SettingType::UrgentTreatmentCentre,
        SettingType::OutOfHoursGp,
        SettingType::Maternity,
        SettingType::Ambulance,
        SettingType::Nhs111,
        SettingType::GeneralPractice,
        SettingType::HealthVisiting,
        SettingType::SchoolNursing,
    ];

    /// The kebab-case name used in config files and on screen.
    pub fn name(self) -> &'static str {
        match self {
            SettingType::EmergencyDepartment => "emergency-department",
            SettingType::WalkInCentre => "walk-in-centre",
            SettingType::MinorInjuriesUnit => "minor-injuries-unit",
            SettingType::UrgentTreatmentCentre => "urgent-treatment-centre",
            SettingType::OutOfHoursGp => "out-of-hours-gp",
            SettingType::Maternity => "maternity",
            SettingType::Ambulance => "ambulance",
            SettingType::Nhs111 => "nhs-111",
            SettingType::GeneralPractice => "general-practice",
            SettingType::HealthVisiting => "health-visiting",
            SettingType::SchoolNursing => "school-nursing",
        }
    }

    /// What people call it, as pages and FHIR resources show it.
    pub fn description(self) -> &'static str {
        match self {
            SettingType::EmergencyDepartment => "Emergency department",
            SettingType::WalkInCentre => "Walk-in centre",
            SettingType::MinorInjuriesUnit => "Minor injuries unit",
            SettingType::UrgentTreatmentCentre => "Urgent treatment centre",
            SettingType::OutOfHoursGp => "Out-of-hours GP",
            SettingType::Maternity => "Maternity unit",
            SettingType::Ambulance => "Ambulance service",
            SettingType::Nhs111 => "NHS 111",
            SettingType::GeneralPractice => "General practice",
            SettingType::HealthVisiting => "Health visiting",
            SettingType::SchoolNursing => "School nursing",
        }
    }

    pub fn parse(text: &str) -> Option<SettingType> {
        SettingType::ALL.into_iter().find(|s| s.name() == text.trim())
    }

    /// What a lookup from this kind of setting is: emergency and urgent care are unscheduled
    /// (they notify and enter the visit history); GP, health visiting and school nursing are
    /// scheduled (audited only). No user chooses it.
    pub fn lookup_kind(self) -> LookupKind {
        match self {
            SettingType::GeneralPractice | SettingType::HealthVisiting | SettingType::SchoolNursing => {
                LookupKind::Scheduled
            }
            _ => LookupKind::Unscheduled,
        }
    }
}

/// Whether a lookup notifies the owning authority and enters the visit history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LookupKind {
    /// Emergency and urgent care: notifies and enters the history.
    Unscheduled,
    /// GP, health visiting, school nursing: audited only.
    Scheduled,
}

/// The person at the care setting who looked.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    pub id: String,
    pub name: String,
    pub role: String,
}

impl fmt::Debug for Person {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Person").field("id", &self.id).finish_non_exhaustive()
    }
}

/// One lookup of an NHS number at a care setting, signed by the setting. The setting's name and
/// type, and so whether the lookup notifies, come from the directory, never from the event.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEvent {
    pub lookup_id: LookupId,
    pub setting: OdsCode,
    pub person: Person,
    pub at: Timestamp,
    pub nhs: NhsNumber,
}

impl fmt::Debug for AccessEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessEvent")
            .field("lookup_id", &self.lookup_id)
            .field("setting", &self.setting)
            .field("at", &self.at)
            .field("nhs", &self.nhs)
            .finish_non_exhaustive()
    }
}

/// Why a free-text field was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// The named field is empty.
    #[error("{0} is empty")]
    Empty(&'static str),
    /// The named field is longer than [`TEXT_LEN_MAX`].
    #[error("{0} is longer than 128 characters")]
    TooLong(&'static str),
    /// The named field holds a control character.
    #[error("{0} holds a control character")]
    Control(&'static str),
}

/// Checks a required free-text field.
pub fn check_text(field: &'static str, text: &str) -> Result<(), TextError> {
    if text.trim().is_empty() {
        return Err(TextError::Empty(field));
    }
    if text.len() > TEXT_LEN_MAX {
        return Err(TextError::TooLong(field));
    }
    if text.chars().any(char::is_control) {
        return Err(TextError::Control(field));
    }
    Ok(())
}

impl Contacts {
    pub fn check(&self) -> Result<(), TextError> {
        check_text("contact name", &self.name)?;
        check_text("office-hours phone", &self.office_phone)?;
        check_text("out-of-hours phone", &self.out_of_hours_phone)
    }
}

impl AccessEvent {
    pub fn check(&self) -> Result<(), TextError> {
        check_text("person id", &self.person.id)?;
        check_text("person name", &self.person.name)?;
        check_text("person role", &self.person.role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(plan_type: PlanType, start: &str, end: Option<&str>, due: Option<&str>) -> Plan {
        Plan {
            reference: PlanRef::parse("REF-1").unwrap(),
            nhs: NhsNumber::parse("9434765919").unwrap(),
            plan_type,
            start: Date::parse(start).unwrap(),
            end: end.map(|d| Date::parse(d).unwrap()),
            due: due.map(|d| Date::parse(d).unwrap()),
            withdrawn: false,
        }
    }

    #[test]
    fn plan_types_carry_their_snomed_codes() {
        assert_eq!(PlanType::ChildProtection.snomed_code(), "342191000000101");
        assert_eq!(PlanType::LookedAfter.snomed_code(), "764841000000100");
        assert_eq!(PlanType::UnbornChildProtection.snomed_code(), "818901000000100");
        assert_eq!(PlanType::parse("764841000000100"), Some(PlanType::LookedAfter));
        assert_eq!(PlanType::parse("lac"), Some(PlanType::LookedAfter));
        assert_eq!(PlanType::parse("XYZ"), None);
    }

    #[test]
    fn a_council_records_start_dates_from_1990_to_tomorrow_and_due_dates_within_a_year() {
        let today = Date::parse("2026-11-30").unwrap();
        let at = |start: &str| plan(PlanType::LookedAfter, start, None, None).check_recorded_on(today);
        assert_eq!(at("2026-12-01"), Ok(()), "tomorrow: a council ahead of UTC");
        assert_eq!(at("1990-01-01"), Ok(()));
        let (future, early) = (Date::parse("2099-01-01").unwrap(), Date::parse("1900-01-01").unwrap());
        assert_eq!(at("2099-01-01"), Err(PlanError::StartInTheFuture(future)));
        assert_eq!(at("1900-01-01"), Err(PlanError::StartTooEarly(early)));
        let unborn = |due: &str| plan(PlanType::UnbornChildProtection, "2026-11-01", None, Some(due));
        assert_eq!(unborn("2027-06-01").check_recorded_on(today), Ok(()));
        let late = Date::parse("2028-06-01").unwrap();
        assert_eq!(unborn("2028-06-01").check_recorded_on(today), Err(PlanError::DueTooLate(late)));
        assert_eq!(unborn("2028-06-01").check(), Ok(()), "a replicated plan is not judged by today");
    }

    #[test]
    fn ended_plan_is_visible_for_365_days_after_its_end() {
        let p = plan(PlanType::ChildProtection, "2024-01-01", Some("2025-01-01"), None);
        assert!(p.visible_on(Date::parse("2026-01-01").unwrap()));
        assert!(!p.visible_on(Date::parse("2026-01-02").unwrap()));
        assert!(!p.open_on(Date::parse("2025-01-02").unwrap()));
    }

    #[test]
    fn unborn_plan_is_visible_until_28_days_after_due_date() {
        let p = plan(PlanType::UnbornChildProtection, "2026-01-01", None, Some("2026-06-01"));
        assert!(p.visible_on(Date::parse("2026-06-29").unwrap()));
        assert!(!p.visible_on(Date::parse("2026-06-30").unwrap()));
    }

    #[test]
    fn withdrawn_plan_is_never_visible() {
        let mut p = plan(PlanType::LookedAfter, "2026-01-01", None, None);
        p.withdrawn = true;
        assert!(!p.visible_on(Date::parse("2026-01-02").unwrap()));
    }

    #[test]
    fn plan_rules_name_what_is_wrong() {
        assert_eq!(
            plan(PlanType::ChildProtection, "2026-01-02", Some("2026-01-01"), None).check(),
            Err(PlanError::EndBeforeStart)
        );
        assert_eq!(
            plan(PlanType::UnbornChildProtection, "2026-01-01", None, None).check(),
            Err(PlanError::MissingDueDate)
        );
        assert_eq!(
            plan(PlanType::LookedAfter, "2026-01-01", None, Some("2026-02-01")).check(),
            Err(PlanError::UnexpectedDueDate)
        );
        assert_eq!(plan(PlanType::LookedAfter, "2026-01-01", None, None).check(), Ok(()));
    }

    #[test]
    fn text_checks_name_the_field() {
        assert_eq!(check_text("person id", " "), Err(TextError::Empty("person id")));
        assert_eq!(check_text("person id", &"x".repeat(129)), Err(TextError::TooLong("person id")));
        assert_eq!(check_text("person id", "a\nb"), Err(TextError::Control("person id")));
    }
}
