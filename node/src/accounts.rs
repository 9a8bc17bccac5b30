//! The people who sign in at a node's web pages (a setting gateway's, a council's) and the
//! systems that call its APIs: one JSON file (`users.json`, owner-only), written by `cpis gateway
//! …` and `cpis council …` commands and read by the running node whenever it changes.
//!
//! A person has a user name, a display name, a job (what a lookup records as their role, "Staff
//! nurse" say), a role that says what they may do, and an argon2id password hash. A calling system
//! (a clinical system's integration) has a name and the SHA-256 of its bearer token; the token
//! itself is shown once, when it is made, and never stored.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use cpis_protocol::time::Date;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::Path;

/// Most people and most systems one accounts file holds.
pub const ACCOUNTS_MAX: usize = 10_000;
/// Shortest password accepted.
pub const PASSWORD_CHARS_MIN: usize = 12;
/// Longest password accepted (argon2 takes any length; this bounds the work per sign-in).
pub const PASSWORD_CHARS_MAX: usize = 256;
/// Days a calling system's token is accepted for, unless told otherwise.
pub const SYSTEM_TOKEN_DAYS_DEFAULT: u32 = 365;
/// Longest a calling system's token may be accepted for.
pub const SYSTEM_TOKEN_DAYS_MAX: u32 = 730;

/// What a calling system may read through the FHIR API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// Child protection alerts (`CareTeam`): a lookup, which the child's council is told of.
    Alerts,
    /// Visit histories (`AuditEvent`).
    History,
}

impl Access {
    pub const ALL: [Access; 2] = [Access::Alerts, Access::History];

    pub fn name(self) -> &'static str {
        match self {
            Access::Alerts => "alerts",
            Access::History => "history",
        }
    }

    pub fn parse(text: &str) -> Option<Access> {
        Access::ALL.into_iter().find(|a| a.name() == text)
    }

    /// What it reads, in words, with its FHIR resource.
    pub fn what(self) -> &'static str {
        match self {
            Access::Alerts => "child protection alerts (CareTeam)",
            Access::History => "visit histories (AuditEvent)",
        }
    }
}

fn all_access() -> Vec<Access> {
    Access::ALL.to_vec()
}

/// A date as `YYYY-MM-DD` in the accounts file.
mod day {
    use cpis_protocol::time::Date;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(date: &Option<Date>, s: S) -> Result<S::Ok, S::Error> {
        match date {
            Some(d) => s.serialize_str(&d.to_string()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Date>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| Date::parse(&t).map_err(|e| serde::de::Error::custom(format!("valid_until: {e}")))).transpose()
    }
}

/// What a signed-in person may do. A setting gateway takes the first three, a council's pages
/// the last three.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AccountRole {
    /// At a gateway: looks children up.
    Clinician,
    /// At a gateway: also reads the gateway's audit log.
    SafeguardingLead,
    /// Anywhere: what the others may, and the audit log (people are managed with `cpis`).
    Administrator,
    /// At a council: reads the inbox and plans, acknowledges notifications.
    SocialWorker,
    /// At a council: also records, ends and withdraws plans, and imports them.
    TeamManager,
}

impl AccountRole {
    /// The roles of a setting gateway.
    pub const GATEWAY: [AccountRole; 3] =
        [AccountRole::Clinician, AccountRole::SafeguardingLead, AccountRole::Administrator];
    /// The roles of a council's pages.
    pub const COUNCIL: [AccountRole; 3] =
        [AccountRole::SocialWorker, AccountRole::TeamManager, AccountRole::Administrator];

    pub fn name(self) -> &'static str {
        match self {
            AccountRole::Clinician => "clinician",
            AccountRole::SafeguardingLead => "safeguarding-lead",
            AccountRole::Administrator => "administrator",
            AccountRole::SocialWorker => "social-worker",
            AccountRole::TeamManager => "team-manager",
        }
    }

    /// Whether this role may read the audit log of the node it signs in to.
    pub fn reads_audit(self) -> bool {
        matches!(self, AccountRole::SafeguardingLead | AccountRole::Administrator)
    }

    /// Whether this role may change a council's plans (record, end, withdraw, import).
    pub fn changes_plans(self) -> bool {
        matches!(self, AccountRole::TeamManager | AccountRole::Administrator)
    }
}

/// One person who signs in at the gateway's page.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub user: String,
    pub name: String,
    /// Recorded in each access event as the person's role.
    pub job: String,
    pub role: AccountRole,
    /// An argon2id PHC string.
    pub password: String,
    #[serde(default)]
    pub disabled: bool,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User").field("user", &self.user).field("role", &self.role).finish_non_exhaustive()
    }
}

/// One clinical system that calls the FHIR API with its own bearer token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct System {
    pub system: String,
    pub name: String,
    /// Hex SHA-256 of the token.
    pub token_sha256: String,
    #[serde(default)]
    pub disabled: bool,
    /// The last day (UTC) its token is accepted; none for a system added before tokens expired
    /// (renew it to give it one).
    #[serde(default, with = "day")]
    pub valid_until: Option<Date>,
    /// What it may read (both, unless it was added with less).
    #[serde(default = "all_access")]
    pub may: Vec<Access>,
}

impl System {
    /// Why this system may not read `access` on `today`, if it may not.
    pub fn refusal(&self, access: Access, today: Date) -> Option<String> {
        if let Some(until) = self.valid_until.filter(|until| today > *until) {
            return Some(format!(
                "the token of calling system {} expired after {until}: ask the gateway's administrator for a new one (cpis gateway renew-system)",
                self.system
            ));
        }
        (!self.may.contains(&access)).then(|| format!("calling system {} may not read {}", self.system, access.what()))
    }
}

impl fmt::Debug for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("System").field("system", &self.system).finish_non_exhaustive()
    }
}

/// Everyone the gateway knows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Accounts {
    #[serde(default)]
    pub users: Vec<User>,
    #[serde(default)]
    pub systems: Vec<System>,
}

/// Why an accounts change or file was refused (each names what is wrong).
#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not a valid accounts file: {message}")]
    Parse { path: String, message: String },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("{field}: {rule}")]
    Invalid { field: &'static str, rule: String },
    #[error("there is already a {kind} named {name}")]
    Exists { kind: &'static str, name: String },
    #[error("there is no {kind} named {name}")]
    Missing { kind: &'static str, name: String },
    #[error("an accounts file holds at most {ACCOUNTS_MAX} people and {ACCOUNTS_MAX} systems")]
    Full,
}

fn check_name(field: &'static str, text: &str, max: usize) -> Result<(), AccountsError> {
    let ok = !text.trim().is_empty() && text.chars().count() <= max && !text.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(AccountsError::Invalid { field, rule: format!("1 to {max} characters, no control characters") })
    }
}

fn check_handle(field: &'static str, text: &str) -> Result<(), AccountsError> {
    let ok = (1..=64).contains(&text.len())
        && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@'));
    if ok {
        Ok(())
    } else {
        Err(AccountsError::Invalid { field, rule: "1 to 64 of letters, digits and . - _ @".into() })
    }
}

/// The hash a sign-in with no such account is checked against: of a random password, with the
/// same parameters as every account's.
static NO_ACCOUNT_HASH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| hash_password(&hex::encode(rand::random::<[u8; 16]>())).unwrap_or_default());

/// The argon2id hash of a password, as a PHC string.
pub fn hash_password(password: &str) -> Result<String, AccountsError> {
    let chars = password.chars().count();
    if !(PASSWORD_CHARS_MIN..=PASSWORD_CHARS_MAX).contains(&chars) {
        return Err(AccountsError::Invalid {
            field: "password",
            rule: format!("{PASSWORD_CHARS_MIN} to {PASSWORD_CHARS_MAX} characters"),
        });
    }
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| AccountsError::Invalid { field: "password", rule: e.to_string() })?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AccountsError::Invalid { field: "password", rule: e.to_string() })
}

/// Whether `password` matches the PHC string `hash` (false for a malformed hash).
pub fn password_matches(hash: &str, password: &str) -> bool {
    if password.chars().count() > PASSWORD_CHARS_MAX {
        return false;
    }
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// The last day a token made on `today` and accepted for `days` days is accepted.
fn token_valid_until(days: u32, today: Date) -> Result<Date, AccountsError> {
    if !(1..=SYSTEM_TOKEN_DAYS_MAX).contains(&days) {
        let rule = format!("a token is accepted for 1 to {SYSTEM_TOKEN_DAYS_MAX} days, not {days}");
        return Err(AccountsError::Invalid { field: "valid-days", rule });
    }
    Ok(Date(today.0.saturating_add(days as i32 - 1)))
}

/// Hex SHA-256 of a bearer token.
pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Accounts {
    /// Reads the accounts file; a missing file is an empty one.
    pub fn load(path: &Path) -> Result<Accounts, AccountsError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Accounts::default()),
            Err(source) => return Err(AccountsError::Read { path: path.display().to_string(), source }),
        };
        let accounts: Accounts = serde_json::from_str(&text)
            .map_err(|e| AccountsError::Parse { path: path.display().to_string(), message: e.to_string() })?;
        if accounts.users.len() > ACCOUNTS_MAX || accounts.systems.len() > ACCOUNTS_MAX {
            return Err(AccountsError::Full);
        }
        Ok(accounts)
    }

    /// Writes the file whole (a new file renamed over the old), owner-only.
    pub fn save(&self, path: &Path) -> Result<(), AccountsError> {
        let write = |source| AccountsError::Write { path: path.display().to_string(), source };
        if let Some(dir) = path.parent() {
            crate::config::create_private_dir(dir).map_err(write)?;
        }
        let text = serde_json::to_string_pretty(self).map_err(|e| write(std::io::Error::other(e)))?;
        crate::config::replace_file(path, text.as_bytes()).map_err(write)
    }

    /// Adds a person; the password is hashed here.
    pub fn add_user(
        &mut self,
        user: &str,
        name: &str,
        job: &str,
        role: AccountRole,
        password: &str,
    ) -> Result<(), AccountsError> {
        check_handle("user", user)?;
        check_name("name", name, 100)?;
        check_name("job", job, 60)?;
        if self.users.iter().any(|u| u.user == user) {
            return Err(AccountsError::Exists { kind: "user", name: user.into() });
        }
        if self.users.len() >= ACCOUNTS_MAX {
            return Err(AccountsError::Full);
        }
        let password = hash_password(password)?;
        self.users.push(User {
            user: user.into(),
            name: name.into(),
            job: job.into(),
            role,
            password,
            disabled: false,
        });
        Ok(())
    }

    /// Sets a person's password (and enables the account).
    pub fn set_password(&mut self, user: &str, password: &str) -> Result<(), AccountsError> {
        let hash = hash_password(password)?;
        let found = self.users.iter_mut().find(|u| u.user == user);
        let found = found.ok_or_else(|| AccountsError::Missing { kind: "user", name: user.into() })?;
        found.password = hash;
        found.disabled = false;
        Ok(())
    }

    /// Disables a person or a system, by name.
    pub fn disable(&mut self, name: &str) -> Result<(), AccountsError> {
        if let Some(u) = self.users.iter_mut().find(|u| u.user == name) {
            u.disabled = true;
            return Ok(());
        }
        if let Some(s) = self.systems.iter_mut().find(|s| s.system == name) {
            s.disabled = true;
            return Ok(());
        }
        Err(AccountsError::Missing { kind: "user or system", name: name.into() })
    }

    /// Adds a calling system that may read `may`, its token accepted for `valid_days` from
    /// `today`, and returns the new bearer token (shown once, never stored).
    pub fn add_system(
        &mut self,
        system: &str,
        name: &str,
        may: &[Access],
        valid_days: u32,
        today: Date,
    ) -> Result<String, AccountsError> {
        check_handle("system", system)?;
        check_name("name", name, 100)?;
        if may.is_empty() {
            return Err(AccountsError::Invalid { field: "may", rule: "name at least one of alerts, history".into() });
        }
        let valid_until = token_valid_until(valid_days, today)?;
        if self.systems.iter().any(|s| s.system == system) {
            return Err(AccountsError::Exists { kind: "system", name: system.into() });
        }
        if self.systems.len() >= ACCOUNTS_MAX {
            return Err(AccountsError::Full);
        }
        let token = hex::encode(rand::random::<[u8; 32]>());
        let mut may = may.to_vec();
        may.sort();
        may.dedup();
        self.systems.push(System {
            system: system.into(),
            name: name.into(),
            token_sha256: token_digest(&token),
            disabled: false,
            valid_until: Some(valid_until),
            may,
        });
        Ok(token)
    }

    /// Gives a calling system a new token, accepted for `valid_days` from `today`, and returns it;
    /// the old token stops working as soon as the gateway reads the file again.
    pub fn renew_system(&mut self, system: &str, valid_days: u32, today: Date) -> Result<String, AccountsError> {
        let valid_until = token_valid_until(valid_days, today)?;
        let entry = self
            .systems
            .iter_mut()
            .find(|s| s.system == system)
            .ok_or_else(|| AccountsError::Missing { kind: "system", name: system.into() })?;
        if entry.disabled {
            return Err(AccountsError::Invalid { field: "system", rule: format!("{system} is disabled") });
        }
        let token = hex::encode(rand::random::<[u8; 32]>());
        entry.token_sha256 = token_digest(&token);
        entry.valid_until = Some(valid_until);
        Ok(token)
    }

    /// The enabled person with this user name and password. A name that is no enabled account
    /// costs the same password check, so that the time taken does not tell which names exist.
    pub fn sign_in(&self, user: &str, password: &str) -> Option<&User> {
        match self.users.iter().find(|u| u.user == user && !u.disabled) {
            Some(u) => password_matches(&u.password, password).then_some(u),
            None => {
                password_matches(&NO_ACCOUNT_HASH, password);
                None
            }
        }
    }

    /// Whether `user` names a person's account (enabled or not).
    pub fn has_user(&self, user: &str) -> bool {
        self.users.iter().any(|u| u.user == user)
    }

    /// The enabled system whose token this is.
    pub fn system_with_token(&self, token: &str) -> Option<&System> {
        let digest = token_digest(token);
        self.systems.iter().find(|s| !s.disabled && s.token_sha256 == digest)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, non_snake_case)]
    use super::*;

    #[test]
    fn a_person_signs_in_with_their_password_only__and_no_secret_is_in_debug() {
        let mut accounts = Accounts::default();
        accounts.add_user("sam", "Sam Patel", "Staff nurse", AccountRole::Clinician, "correct horse battery").unwrap();
        assert!(accounts.users[0].password.starts_with("$argon2id$"));
        assert_eq!(accounts.sign_in("sam", "correct horse battery").map(|u| u.name.as_str()), Some("Sam Patel"));
        assert!(accounts.sign_in("sam", "wrong horse battery").is_none());
        assert!(accounts.sign_in("nobody", "correct horse battery").is_none());
        assert!(NO_ACCOUNT_HASH.starts_with("$argon2id$"), "a name with no account costs a real check");
        assert!(accounts.has_user("sam") && !accounts.has_user("correct horse battery"));
        let token = accounts.add_system("EPIC", "Epic ED", &Access::ALL, 30, Date(20_000)).unwrap();
        assert_eq!(accounts.system_with_token(&token).map(|s| s.system.as_str()), Some("EPIC"));
        assert!(accounts.system_with_token("not-a-token").is_none());
        let debug = format!("{accounts:?}");
        assert!(!debug.contains("argon2") && !debug.contains(&accounts.systems[0].token_sha256), "{debug}");
        accounts.disable("sam").unwrap();
        assert!(accounts.sign_in("sam", "correct horse battery").is_none());
    }

    #[test]
    fn a_system_token_expires_after_its_last_day__renewal_replaces_it__and_a_system_reads_only_what_it_may() {
        let mut accounts = Accounts::default();
        let today = Date(20_000);
        let old = accounts.add_system("EPIC", "Epic ED", &[Access::Alerts], 30, today).unwrap();
        let system = accounts.system_with_token(&old).unwrap().clone();
        assert_eq!(system.valid_until, Some(Date(20_029)), "30 days, today included");
        assert_eq!(system.refusal(Access::Alerts, Date(20_029)), None, "accepted on its last day");
        let expired = system.refusal(Access::Alerts, Date(20_030)).unwrap();
        assert!(expired.contains("expired after") && expired.contains("renew-system"), "{expired}");
        let history = system.refusal(Access::History, today).unwrap();
        assert!(history.contains("may not read visit histories"), "{history}");

        let new = accounts.renew_system("EPIC", 60, Date(20_030)).unwrap();
        assert!(accounts.system_with_token(&old).is_none(), "the old token is gone");
        let renewed = accounts.system_with_token(&new).unwrap();
        assert_eq!((renewed.valid_until, renewed.refusal(Access::Alerts, Date(20_030))), (Some(Date(20_089)), None));

        // Out of range or unknown: refused, naming it, and nothing changes.
        let before = accounts.clone();
        for days in [0, SYSTEM_TOKEN_DAYS_MAX + 1] {
            let e = accounts.renew_system("EPIC", days, today).unwrap_err().to_string();
            assert!(e.starts_with("valid-days"), "{e}");
            let e = accounts.add_system("CERNER", "Cerner", &Access::ALL, days, today).unwrap_err().to_string();
            assert!(e.starts_with("valid-days"), "{e}");
        }
        assert!(accounts.add_system("CERNER", "Cerner", &[], 30, today).unwrap_err().to_string().starts_with("may"));
        assert!(accounts.renew_system("NOBODY", 30, today).is_err());
        assert_eq!(accounts, before);

        // A file written before tokens expired: both kinds of read, no expiry.
        let text = r#"{"systems": [{"system": "OLD", "name": "Old", "token_sha256": "00"}]}"#;
        let old: Accounts = serde_json::from_str(text).unwrap();
        assert_eq!((old.systems[0].may.clone(), old.systems[0].valid_until), (Access::ALL.to_vec(), None));
        let saved = serde_json::to_string(&accounts).unwrap();
        assert!(saved.contains(r#""valid_until":"2025-01-01""#), "a readable date: {saved}");
    }

    #[test]
    fn bad_accounts_are_refused_naming_the_field__and_nothing_changes() {
        let mut accounts = Accounts::default();
        let refused = |r: Result<(), AccountsError>| r.unwrap_err().to_string();
        assert!(
            refused(accounts.add_user("sam", "Sam", "Nurse", AccountRole::Clinician, "short")).starts_with("password")
        );
        assert!(
            refused(accounts.add_user("sa m", "Sam", "Nurse", AccountRole::Clinician, "long enough pass"))
                .starts_with("user")
        );
        assert!(
            refused(accounts.add_user("sam", "", "Nurse", AccountRole::Clinician, "long enough pass"))
                .starts_with("name")
        );
        assert!(accounts.users.is_empty());
        accounts.add_user("sam", "Sam", "Nurse", AccountRole::Clinician, "long enough pass").unwrap();
        let again = refused(accounts.add_user("sam", "Sam", "Nurse", AccountRole::Clinician, "long enough pass"));
        assert!(again.contains("already"), "{again}");
    }

    #[test]
    fn the_file_round_trips_and_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway").join("users.json");
        let mut accounts = Accounts::default();
        accounts
            .add_user("sam", "Sam Patel", "Staff nurse", AccountRole::SafeguardingLead, "long enough pass")
            .unwrap();
        accounts.save(&path).unwrap();
        assert_eq!(Accounts::load(&path).unwrap(), accounts);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o077, 0);
        std::fs::write(&path, "{\"users\": [{\"user\": 1}]}").unwrap();
        assert!(matches!(Accounts::load(&path), Err(AccountsError::Parse { .. })));
    }
}
