//! The federation administrator's work: create a federation (root keys and the first directory),
//! enrol members (a key, a ready config and the next directory version), show a directory.
//!
//! A federation folder holds `roots/root-<n>.key` (the root keys: owner-only, to be kept
//! offline), `directory.cpis` (the newest version) and `versions/directory-v<N>.cpis` (every
//! version, so that a node that is behind can be sent the chain it lacks).

use cpis_node::config::{ConfigError, NodeConfig, SettingConfig, read_directory, read_key, write_directory, write_key};
use cpis_protocol::directory::{
    Directory, DirectoryError, KeyStatus, Member, MemberKey, ROOTS_MAX, Role, SignedDirectory, TrustedDirectory,
};
use cpis_protocol::ids::OdsCode;
use cpis_protocol::records::{Contacts, SettingType, check_text};
use cpis_protocol::sign::Identity;
use cpis_protocol::time::{DAY_MS, Timestamp};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Folder of the root keys inside a federation folder.
pub const ROOTS_DIR: &str = "roots";
/// Folder of every directory version inside a federation folder.
pub const VERSIONS_DIR: &str = "versions";
/// The newest directory, in a federation folder and in a member's folder.
pub const DIRECTORY_FILE: &str = "directory.cpis";
/// Longest validity of a directory version or a key, in days.
pub const VALID_DAYS_MAX: u64 = 3_650;
/// Key validity is backdated this much, so that a clock a little behind still accepts it.
const KEY_BACKDATE_MS: u64 = 3_600_000;

/// Why an administrator's command did nothing (or, for enrolment, what was left half done).
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A key, directory or config file is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An option breaks a rule; the text names the option and what to do.
    #[error("{0}")]
    Invalid(String),
    /// The folder already holds a federation.
    #[error("{0} already holds a federation ({DIRECTORY_FILE}): choose another --dir")]
    Exists(PathBuf),
    /// The member's folder already holds a key or a config.
    #[error("{0} already exists: enrol into an empty --out folder")]
    OutputExists(PathBuf),
    /// A directory version breaks a rule of the directory.
    #[error("the {what} directory: {source}")]
    Directory { what: &'static str, source: DirectoryError },
    /// Too few of the federation's root keys were found to sign.
    #[error(
        "only {found} of the {need} root keys needed to sign were found in {dir}: bring the offline root keys and pass --roots-dir"
    )]
    NotEnoughRoots { found: usize, need: usize, dir: PathBuf },
    /// The operating system's random number generator failed.
    #[error("cannot draw a random key: {0}")]
    Random(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AdminError + '_ {
    move |source| AdminError::Io { path: path.to_path_buf(), source }
}

/// A fresh identity from the operating system's randomness.
pub fn random_identity() -> Result<Identity, AdminError> {
    use rand::TryRngCore;
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.try_fill_bytes(&mut seed).map_err(|e| AdminError::Random(e.to_string()))?;
    Ok(Identity::from_seed(seed))
}

fn days(n: u64, option: &str) -> Result<u64, AdminError> {
    if n == 0 || n > VALID_DAYS_MAX {
        return Err(AdminError::Invalid(format!("{option} must be 1 to {VALID_DAYS_MAX} days")));
    }
    Ok(n * DAY_MS)
}

/// What `cpis federation create` needs.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    pub dir: PathBuf,
    pub name: String,
    pub roots: u8,
    pub threshold: u8,
    pub valid_days: u64,
}

/// A new federation.
#[derive(Debug)]
pub struct Created {
    pub directory: SignedDirectory,
    pub root_key_files: Vec<PathBuf>,
}

/// Creates the root keys and directory version 1 (no members yet).
pub fn create(options: &CreateOptions, now: Timestamp) -> Result<Created, AdminError> {
    check_text("federation name", &options.name).map_err(|e| AdminError::Invalid(format!("--name: {e}")))?;
    let roots = usize::from(options.roots);
    if !(1..=ROOTS_MAX).contains(&roots) {
        return Err(AdminError::Invalid(format!("--roots must be 1 to {ROOTS_MAX}")));
    }
    if options.threshold == 0 || options.threshold > options.roots {
        return Err(AdminError::Invalid("--threshold must be at least 1 and at most --roots".into()));
    }
    let valid_ms = days(options.valid_days, "--valid-days")?;
    let directory_path = options.dir.join(DIRECTORY_FILE);
    if directory_path.exists() {
        return Err(AdminError::Exists(options.dir.clone()));
    }
    let roots_dir = options.dir.join(ROOTS_DIR);
    create_private_dir(&roots_dir)?;
    let mut identities = Vec::with_capacity(roots);
    let mut root_key_files = Vec::with_capacity(roots);
    for n in 1..=roots {
        let identity = random_identity()?;
        let path = roots_dir.join(format!("root-{n}.key"));
        write_key(&path, &identity.seed())?;
        root_key_files.push(path);
        identities.push(identity);
    }
    let directory = Directory {
        federation: options.name.trim().to_string(),
        version: 1,
        expires_at: now.plus_ms(valid_ms),
        roots: identities.iter().map(Identity::public).collect(),
        threshold: options.threshold,
        members: Vec::new(),
    };
    let signers: Vec<&Identity> = identities.iter().collect();
    let signed = SignedDirectory::sign(directory, &signers);
    TrustedDirectory::bootstrap(signed.clone(), now).map_err(|source| AdminError::Directory { what: "new", source })?;
    publish_version(&options.dir, &signed)?;
    Ok(Created { directory: signed, root_key_files })
}

fn create_private_dir(path: &Path) -> Result<(), AdminError> {
    std::fs::create_dir_all(path).map_err(io(path))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(io(path))?;
    }
    Ok(())
}

/// Writes a version as `versions/directory-v<N>.cpis` and as the newest `directory.cpis`.
fn publish_version(dir: &Path, signed: &SignedDirectory) -> Result<(), AdminError> {
    let versions = dir.join(VERSIONS_DIR);
    std::fs::create_dir_all(&versions).map_err(io(&versions))?;
    let path = version_path(dir, signed.directory.version);
    write_directory(&path, signed).map_err(io(&path))?;
    let newest = dir.join(DIRECTORY_FILE);
    write_directory(&newest, signed).map_err(io(&newest))
}

/// Where version `version` is kept in a federation folder.
pub fn version_path(dir: &Path, version: u64) -> PathBuf {
    dir.join(VERSIONS_DIR).join(format!("directory-v{version}.cpis"))
}

/// The versions after `after` up to the newest, oldest first, from a federation folder.
pub fn chain_after(dir: &Path, after: u64) -> Result<Vec<SignedDirectory>, AdminError> {
    let newest = read_directory(&dir.join(DIRECTORY_FILE))?;
    (after + 1..=newest.directory.version).map(|v| Ok(read_directory(&version_path(dir, v))?)).collect()
}

/// Reads the newest directory of a federation folder and checks its signatures. An expired
/// version is still accepted here, so that the administrator can sign its successor.
pub fn current(dir: &Path, now: Timestamp) -> Result<TrustedDirectory, AdminError> {
    let signed = read_directory(&dir.join(DIRECTORY_FILE))?;
    let at = now.min(signed.directory.expires_at.minus_ms(1));
    TrustedDirectory::bootstrap(signed, at).map_err(|source| AdminError::Directory { what: "current", source })
}

/// The root keys found in `roots_dir` that `directory` lists, at most `threshold` of them.
fn signing_roots(directory: &Directory, roots_dir: &Path) -> Result<Vec<Identity>, AdminError> {
    let need = usize::from(directory.threshold);
    let mut found = Vec::new();
    let entries = std::fs::read_dir(roots_dir).map_err(io(roots_dir))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "key"))
        .collect();
    paths.sort();
    for path in paths {
        let identity = Identity::from_seed(read_key(&path)?);
        if directory.roots.contains(&identity.public())
            && !found.iter().any(|f: &Identity| f.public() == identity.public())
        {
            found.push(identity);
        }
        if found.len() == need {
            return Ok(found);
        }
    }
    Err(AdminError::NotEnoughRoots { found: found.len(), need, dir: roots_dir.to_path_buf() })
}

/// Signs the successor of `trusted` that `change` makes, checks that it would be accepted, and
/// writes it to the federation folder.
pub fn sign_next(
    dir: &Path,
    roots_dir: &Path,
    trusted: &TrustedDirectory,
    valid_days: u64,
    now: Timestamp,
    change: impl FnOnce(&mut Directory),
) -> Result<SignedDirectory, AdminError> {
    let mut next = trusted.directory().clone();
    next.version += 1;
    next.expires_at = now.plus_ms(days(valid_days, "--valid-days")?);
    change(&mut next);
    let roots = signing_roots(trusted.directory(), roots_dir)?;
    let signers: Vec<&Identity> = roots.iter().collect();
    let signed = SignedDirectory::sign(next, &signers);
    trusted.accept_update(signed.clone(), now).map_err(|source| AdminError::Directory { what: "new", source })?;
    publish_version(dir, &signed)?;
    Ok(signed)
}

/// What `cpis federation enrol` needs.
#[derive(Clone, Debug)]
pub struct EnrolOptions {
    pub dir: PathBuf,
    /// Where the root keys are; default `<dir>/roots`.
    pub roots_dir: Option<PathBuf>,
    pub role: Role,
    pub code: String,
    pub name: String,
    pub addresses: Vec<String>,
    pub home_hubs: Vec<String>,
    pub setting_type: Option<String>,
    pub contact_name: Option<String>,
    pub office_phone: Option<String>,
    pub out_of_hours_phone: Option<String>,
    /// A hub's QUIC listen address; default from its first address.
    pub listen: Option<SocketAddr>,
    pub out: PathBuf,
    pub key_valid_days: u64,
    pub valid_days: u64,
}

/// A member enrolled.
#[derive(Debug)]
pub struct Enrolled {
    pub member: Member,
    pub directory: SignedDirectory,
    pub key_file: PathBuf,
    pub config_file: PathBuf,
}

/// Enrols a member: its key (in `out`), the next directory version, and a ready config.
pub fn enrol(options: &EnrolOptions, now: Timestamp) -> Result<Enrolled, AdminError> {
    let trusted = current(&options.dir, now)?;
    let mut member = new_member(options, &trusted)?;
    let (key_name, config_name) = match options.role {
        Role::Setting => ("setting.key", "setting.toml"),
        Role::Hub | Role::Authority => ("node.key", "node.toml"),
    };
    let key_file = options.out.join(key_name);
    let config_file = options.out.join(config_name);
    for path in [&key_file, &config_file] {
        if path.exists() {
            return Err(AdminError::OutputExists(path.clone()));
        }
    }
    std::fs::create_dir_all(&options.out).map_err(io(&options.out))?;
    let identity = random_identity()?;
    member.keys.push(MemberKey {
        public: identity.public(),
        valid_from: now.minus_ms(KEY_BACKDATE_MS),
        valid_until: now.plus_ms(days(options.key_valid_days, "--key-valid-days")?),
        status: KeyStatus::Active,
    });
    let roots_dir = options.roots_dir.clone().unwrap_or_else(|| options.dir.join(ROOTS_DIR));
    // Check that the roots are at hand before writing anything.
    signing_roots(trusted.directory(), &roots_dir)?;
    write_key(&key_file, &identity.seed())?;
    let added = member.clone();
    let signed = sign_next(&options.dir, &roots_dir, &trusted, options.valid_days, now, |d| d.members.push(added))?;
    let member_directory = options.out.join(DIRECTORY_FILE);
    write_directory(&member_directory, &signed).map_err(io(&member_directory))?;
    write_config(options, &member, &config_file)?;
    Ok(Enrolled { member, directory: signed, key_file, config_file })
}

/// The member an enrolment adds (without its key), after checking every option.
fn new_member(options: &EnrolOptions, trusted: &TrustedDirectory) -> Result<Member, AdminError> {
    let invalid = |text: String| AdminError::Invalid(text);
    let code = match options.role {
        Role::Authority => OdsCode::authority(&options.code),
        Role::Hub | Role::Setting => OdsCode::parse(&options.code),
    }
    .map_err(|e| invalid(format!("--code: {e}")))?;
    if trusted.member(&code).is_some() {
        return Err(invalid(format!("--code: {code} is already a member of the federation")));
    }
    check_text("name", &options.name).map_err(|e| invalid(format!("--name: {e}")))?;
    let home_hubs = home_hubs(options, trusted)?;
    let addresses = addresses(options)?;
    let setting_type = match (options.role, &options.setting_type) {
        (Role::Setting, Some(t)) => Some(SettingType::parse(t).ok_or_else(|| {
            let names: Vec<&str> = SettingType::ALL.iter().map(|t| t.name()).collect();
            invalid(format!("--setting-type: use one of {}", names.join(", ")))
        })?),
        (Role::Setting, None) => return Err(invalid("a setting needs --setting-type".into())),
        (_, Some(_)) => return Err(invalid("only a setting takes --setting-type".into())),
        (_, None) => None,
    };
    Ok(Member {
        code,
        role: options.role,
        name: options.name.trim().to_string(),
        contacts: contacts(options)?,
        addresses,
        home_hubs,
        setting_type,
        keys: Vec::new(),
    })
}

fn home_hubs(options: &EnrolOptions, trusted: &TrustedDirectory) -> Result<Vec<OdsCode>, AdminError> {
    if options.role == Role::Hub {
        if !options.home_hubs.is_empty() {
            return Err(AdminError::Invalid("a hub takes no --home-hub".into()));
        }
        return Ok(Vec::new());
    }
    if options.home_hubs.is_empty() {
        let who = match options.role {
            Role::Authority => "an authority",
            _ => "a setting",
        };
        return Err(AdminError::Invalid(format!("{who} needs at least one --home-hub (enrol the hubs first)")));
    }
    let mut hubs = Vec::new();
    for text in &options.home_hubs {
        let code = OdsCode::parse(text).map_err(|e| AdminError::Invalid(format!("--home-hub {text}: {e}")))?;
        if !trusted.member(&code).is_some_and(|m| m.role == Role::Hub) {
            return Err(AdminError::Invalid(format!("--home-hub {code}: no hub with this code is enrolled")));
        }
        if hubs.contains(&code) {
            return Err(AdminError::Invalid(format!("--home-hub {code} is given twice")));
        }
        hubs.push(code);
    }
    Ok(hubs)
}

fn addresses(options: &EnrolOptions) -> Result<Vec<String>, AdminError> {
    if options.role != Role::Hub {
        if !options.addresses.is_empty() || options.listen.is_some() {
            return Err(AdminError::Invalid("only a hub takes --address and --listen".into()));
        }
        return Ok(Vec::new());
    }
    if options.addresses.is_empty() {
        return Err(AdminError::Invalid(
            "a hub needs at least one --address host:port where settings and peers reach it".into(),
        ));
    }
    for a in &options.addresses {
        let port = a.rsplit_once(':').map(|(host, port)| (host, port.parse::<u16>()));
        if !matches!(port, Some((host, Ok(p))) if !host.is_empty() && p != 0) {
            return Err(AdminError::Invalid(format!(
                "--address {a}: write host:port, e.g. hub-north.example.org:7401"
            )));
        }
    }
    Ok(options.addresses.clone())
}

fn contacts(options: &EnrolOptions) -> Result<Option<Contacts>, AdminError> {
    let phones = (&options.office_phone, &options.out_of_hours_phone);
    if options.role != Role::Authority {
        if phones.0.is_some() || phones.1.is_some() || options.contact_name.is_some() {
            return Err(AdminError::Invalid("only an authority takes contact details".into()));
        }
        return Ok(None);
    }
    let (Some(office), Some(out_of_hours)) = phones else {
        return Err(AdminError::Invalid("an authority needs --office-phone and --out-of-hours-phone".into()));
    };
    let contacts = Contacts {
        name: options.contact_name.clone().unwrap_or_else(|| format!("{} children's social care", options.name.trim())),
        office_phone: office.trim().to_string(),
        out_of_hours_phone: out_of_hours.trim().to_string(),
    };
    contacts.check().map_err(|e| AdminError::Invalid(format!("contacts: {e}")))?;
    Ok(Some(contacts))
}

/// The QUIC address a hub listens on: `--listen`, else its first address's port on the
/// address itself when it is a literal IP (tests), else on every interface.
fn hub_listen(options: &EnrolOptions, member: &Member) -> String {
    if let Some(listen) = options.listen {
        return listen.to_string();
    }
    let first = member.addresses.first().map(String::as_str).unwrap_or("");
    if let Ok(addr) = first.parse::<SocketAddr>() {
        return addr.to_string();
    }
    let port = first.rsplit_once(':').map_or("7401", |(_, p)| p);
    format!("0.0.0.0:{port}")
}

fn write_config(options: &EnrolOptions, member: &Member, path: &Path) -> Result<(), AdminError> {
    let text = match member.role {
        Role::Setting => setting_config(member),
        Role::Hub | Role::Authority => node_config(member, &hub_listen(options, member)),
    };
    std::fs::write(path, text).map_err(io(path))?;
    // Pair the writer with the reader: the config must load as written.
    match member.role {
        Role::Setting => SettingConfig::load(path).map(|_| ())?,
        Role::Hub | Role::Authority => NodeConfig::load(path).map(|_| ())?,
    }
    Ok(())
}

fn setting_config(member: &Member) -> String {
    format!(
        r#"# Lookup client config for care setting {code} ({name}), written by `cpis federation enrol`.
# Look a child up with:  cpis lookup --config <this file> --nhs NUMBER --user-id ID --user-name NAME --role ROLE

# The setting's ODS site code in the directory.
code = "{code}"
# The setting's secret key (owner-only permissions; never share or copy it elsewhere).
key_file = "setting.key"
# The directory to trust; newer versions passed on by a hub are saved here.
directory_file = "{DIRECTORY_FILE}"
# How long to wait for each hub before trying the next (milliseconds). Default 5000.
hub_timeout_ms = 5000

# Hub addresses to use instead of those in the directory (`CODE = "host:port"`). Default none.
# [hub_addresses]
# HUBN = "127.0.0.1:7401"
"#,
        code = member.code,
        name = member.name,
    )
}

fn node_config(member: &Member, listen: &str) -> String {
    let role = member.role.name();
    let listen_line = match member.role {
        Role::Hub => {
            format!("# QUIC address to listen on for hubs, authorities and care settings.\nlisten = \"{listen}\"\n")
        }
        _ => "# An authority only dials out to its home hubs: it does not listen.\n".to_string(),
    };
    format!(
        r#"# Node config for {role} {code} ({name}), written by `cpis federation enrol`.
# Start it with:  cpis-node run --config <this file>

role = "{role}"
code = "{code}"
# Folder for the key (node.key), the directory (directory.cpis), the store (node.redb), the API
# token (api.token) and the addresses bound (api.addr, quic.addr). Relative to this file.
data_dir = "."
{listen_line}# Local operator API (loopback only); port 0 picks a free one, written to api.addr.
api_listen = "127.0.0.1:0"
# Logs: "text" (default) or "json".
log_format = "text"

# Hub addresses to use instead of those in the directory (`CODE = "host:port"`). Default none.
# [hub_addresses]
# HUBS = "127.0.0.1:7402"

# Timings (every field optional; defaults shown).
[timing]
# tick_ms = 1000
# sync_interval_ms = 30000
# retry_base_ms = 1000
# retry_cap_ms = 60000
# overdue_after_ms = 3600000
# clock_skew_max_ms = 300000
# prune_interval_ms = 3600000
# visit_retention_days = 365
# reconnect_base_ms = 200
# reconnect_cap_ms = 10000
"#,
        code = member.code,
        name = member.name,
    )
}

/// What `cpis federation publish` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// The node's directory version before.
    pub node_version_before: u64,
    /// The versions sent (oldest first).
    pub sent: Vec<u64>,
    /// The node's directory version after.
    pub node_version: u64,
}

/// Sends a node the directory versions it lacks (from `from_version`, else from the one after
/// its own), in chains of at most [`cpis_protocol::wire::DIRECTORY_CHAIN_MAX`].
pub async fn publish(
    dir: &Path,
    api: &crate::api::NodeApi,
    from_version: Option<u64>,
) -> Result<Published, PublishError> {
    let status = api.get("/status").await?;
    let before = crate::render::number(&status, "directory_version");
    let after = from_version.map_or(before, |v| v.saturating_sub(1));
    let chain = chain_after(dir, after)?;
    let mut node_version = before;
    let mut sent = Vec::new();
    for part in chain.chunks(cpis_protocol::wire::DIRECTORY_CHAIN_MAX) {
        let bytes = cpis_protocol::codec::encode(&part.to_vec());
        let reply = api.send_bytes("/directory", "application/octet-stream", bytes).await?;
        node_version = crate::render::number(&reply, "directory_version");
        sent.extend(part.iter().map(|d| d.directory.version));
    }
    Ok(Published { node_version_before: before, sent, node_version })
}

/// Why a directory could not be published to a node.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The federation folder could not be read.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The node could not be asked, or refused the versions (the text names the rule broken).
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
}

impl From<ConfigError> for PublishError {
    fn from(e: ConfigError) -> Self {
        PublishError::Admin(AdminError::Config(e))
    }
}

/// What happens to a key: `cpis federation rotate-key`, `retire-key`, `revoke-key`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyChange {
    /// Adds a new active key (written to a file) beside the member's current ones.
    Add,
    /// The key is replaced: records it signed stay valid; it opens no connections.
    Retire(cpis_protocol::sign::KeyId),
    /// The key is believed stolen: every record it signed becomes invalid.
    Revoke(cpis_protocol::sign::KeyId),
}

/// What a key change did.
#[derive(Debug)]
pub struct KeyChanged {
    pub directory: SignedDirectory,
    /// The new key's id and file, for [`KeyChange::Add`].
    pub new_key: Option<(String, PathBuf)>,
}

/// Where and for how long: the common options of a key change.
#[derive(Clone, Debug)]
pub struct KeyChangeOptions {
    pub dir: PathBuf,
    pub roots_dir: Option<PathBuf>,
    pub code: String,
    /// Where to write the new key ([`KeyChange::Add`] only).
    pub key_out: Option<PathBuf>,
    pub key_valid_days: u64,
    pub valid_days: u64,
}

/// Adds, retires or revokes one of a member's keys in the next directory version.
pub fn change_key(options: &KeyChangeOptions, change: KeyChange, now: Timestamp) -> Result<KeyChanged, AdminError> {
    let trusted = current(&options.dir, now)?;
    let code = OdsCode::parse(&options.code).map_err(|e| AdminError::Invalid(format!("--code: {e}")))?;
    let member = trusted
        .member(&code)
        .ok_or_else(|| AdminError::Invalid(format!("--code: {code} is not a member of the federation")))?;
    let mut keys = member.keys.clone();
    let roots_dir = options.roots_dir.clone().unwrap_or_else(|| options.dir.join(ROOTS_DIR));
    signing_roots(trusted.directory(), &roots_dir)?;
    let mut new_key = None;
    match change {
        KeyChange::Add => {
            let path = options
                .key_out
                .clone()
                .ok_or_else(|| AdminError::Invalid("--key-out FILE is needed for the new key".into()))?;
            if path.exists() {
                return Err(AdminError::OutputExists(path));
            }
            let identity = random_identity()?;
            keys.push(MemberKey {
                public: identity.public(),
                valid_from: now.minus_ms(KEY_BACKDATE_MS),
                valid_until: now.plus_ms(days(options.key_valid_days, "--key-valid-days")?),
                status: KeyStatus::Active,
            });
            write_key(&path, &identity.seed())?;
            new_key = Some((identity.key_id().to_string(), path));
        }
        KeyChange::Retire(id) | KeyChange::Revoke(id) => {
            set_status(&mut keys, id, change, now)?;
        }
    }
    let signed = sign_next(&options.dir, &roots_dir, &trusted, options.valid_days, now, |d| {
        if let Some(m) = d.members.iter_mut().find(|m| m.code == code) {
            m.keys = keys;
        }
    })?;
    Ok(KeyChanged { directory: signed, new_key })
}

fn set_status(
    keys: &mut [MemberKey],
    id: cpis_protocol::sign::KeyId,
    change: KeyChange,
    now: Timestamp,
) -> Result<(), AdminError> {
    let others_active = keys.iter().filter(|k| k.id() != id && k.status == KeyStatus::Active).count();
    let key = keys
        .iter_mut()
        .find(|k| k.id() == id)
        .ok_or_else(|| AdminError::Invalid(format!("--key-id {id} is not a key of this member")))?;
    match change {
        KeyChange::Retire(_) if key.status != KeyStatus::Active => {
            Err(AdminError::Invalid(format!("key {id} is not active: only an active key can be retired")))
        }
        KeyChange::Retire(_) if others_active == 0 => Err(AdminError::Invalid(format!(
            "key {id} is the member's only active key: add one first (`cpis federation rotate-key`)"
        ))),
        KeyChange::Retire(_) => {
            key.status = KeyStatus::Retired { at: now };
            Ok(())
        }
        KeyChange::Revoke(_) if matches!(key.status, KeyStatus::Revoked { .. }) => {
            Err(AdminError::Invalid(format!("key {id} is already revoked")))
        }
        _ => {
            key.status = KeyStatus::Revoked { at: now };
            Ok(())
        }
    }
}

/// Parses a key id as `cpis federation show` prints it (16 hex characters).
pub fn parse_key_id(text: &str) -> Result<cpis_protocol::sign::KeyId, AdminError> {
    let bytes = hex::decode(text.trim()).ok().and_then(|b| <[u8; 8]>::try_from(b).ok());
    bytes
        .map(cpis_protocol::sign::KeyId)
        .ok_or_else(|| AdminError::Invalid("--key-id: 16 hex characters, as `cpis federation show` prints".into()))
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::*;

    fn federation(dir: &Path, now: Timestamp) {
        let options =
            CreateOptions { dir: dir.to_path_buf(), name: "Test".into(), roots: 3, threshold: 2, valid_days: 30 };
        create_ok(create(&options, now));
        let hub = EnrolOptions {
            dir: dir.to_path_buf(),
            roots_dir: None,
            role: Role::Hub,
            code: "HUBA".into(),
            name: "Hub A".into(),
            addresses: vec!["127.0.0.1:7401".into()],
            home_hubs: vec![],
            setting_type: None,
            contact_name: None,
            office_phone: None,
            out_of_hours_phone: None,
            listen: None,
            out: dir.join("HUBA"),
            key_valid_days: 30,
            valid_days: 30,
        };
        enrol(&hub, now).unwrap();
    }

    fn create_ok(r: Result<Created, AdminError>) {
        let created = r.unwrap();
        assert_eq!(created.root_key_files.len(), 3);
    }

    #[test]
    fn create_then_enrol__keys_are_private_and_every_version_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("fed");
        let now = crate::render::now();
        federation(&dir, now);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for key in [dir.join("roots/root-1.key"), dir.join("HUBA/node.key")] {
                assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600, "{key:?}");
            }
        }
        assert_eq!(chain_after(&dir, 0).unwrap().iter().map(|d| d.directory.version).collect::<Vec<_>>(), [1, 2]);
        let again = create(
            &CreateOptions { dir: dir.clone(), name: "Test".into(), roots: 3, threshold: 2, valid_days: 30 },
            now,
        );
        assert!(matches!(again, Err(AdminError::Exists(_))));
    }

    #[test]
    fn enrolment_refusals_name_the_option_and_write_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("fed");
        let now = crate::render::now();
        federation(&dir, now);
        let base = EnrolOptions {
            dir: dir.clone(),
            roots_dir: None,
            role: Role::Authority,
            code: "204".into(),
            name: "Hackney".into(),
            addresses: vec![],
            home_hubs: vec!["HUBA".into()],
            setting_type: None,
            contact_name: None,
            office_phone: Some("020 7946 0204".into()),
            out_of_hours_phone: Some("020 7946 0999".into()),
            listen: None,
            out: tmp.path().join("204"),
            key_valid_days: 30,
            valid_days: 30,
        };
        type Change = Box<dyn Fn(&mut EnrolOptions)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|o| o.code = "HUBA".into()), "--code"),
            (Box::new(|o| o.code = "20A".into()), "--code"),
            (Box::new(|o| o.home_hubs = vec!["HUBX".into()]), "no hub with this code"),
            (Box::new(|o| o.home_hubs = vec![]), "--home-hub"),
            (Box::new(|o| o.office_phone = None), "--office-phone"),
            (Box::new(|o| o.addresses = vec!["x:1".into()]), "only a hub"),
            (Box::new(|o| o.setting_type = Some("maternity".into())), "only a setting"),
        ];
        for (change, want) in cases {
            let mut options = base.clone();
            change(&mut options);
            let err = enrol(&options, now).unwrap_err();
            assert!(err.to_string().contains(want), "{err} should mention {want}");
        }
        assert_eq!(current(&dir, now).unwrap().version(), 2, "no refused enrolment signed a version");
        assert!(!tmp.path().join("204/node.key").exists());
        let enrolled = enrol(&base, now).unwrap();
        assert_eq!(enrolled.directory.directory.version, 3);
        assert!(matches!(enrol(&base, now), Err(AdminError::Invalid(_))), "a duplicate code is refused");
    }

    #[test]
    fn rotate_retire_revoke__each_is_the_next_accepted_version() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("fed");
        let now = crate::render::now();
        federation(&dir, now);
        let old_id = current(&dir, now).unwrap().member(&OdsCode::parse("HUBA").unwrap()).unwrap().keys[0].id();
        let options = KeyChangeOptions {
            dir: dir.clone(),
            roots_dir: None,
            code: "HUBA".into(),
            key_out: Some(tmp.path().join("new.key")),
            key_valid_days: 30,
            valid_days: 30,
        };
        let lone = change_key(&options, KeyChange::Retire(old_id), now).unwrap_err();
        assert!(lone.to_string().contains("only active key"), "{lone}");
        let added = change_key(&options, KeyChange::Add, now).unwrap();
        assert!(added.new_key.is_some() && tmp.path().join("new.key").exists());
        change_key(&options, KeyChange::Retire(old_id), now).unwrap();
        let revoked = change_key(&options, KeyChange::Revoke(old_id), now).unwrap();
        let trusted = current(&dir, now).unwrap();
        assert_eq!(trusted.version(), revoked.directory.directory.version);
        assert_eq!(trusted.version(), 5);
        let keys = &trusted.member(&OdsCode::parse("HUBA").unwrap()).unwrap().keys;
        assert!(matches!(keys[0].status, KeyStatus::Revoked { .. }));
        assert_eq!(keys[1].status, KeyStatus::Active);
        // Each version chains from the one before, as a node would check.
        let chain = chain_after(&dir, 1).unwrap();
        let mut t = TrustedDirectory::bootstrap(read_directory(&version_path(&dir, 1)).unwrap(), now).unwrap();
        for next in chain {
            t = t.accept_update(next, now).unwrap();
        }
        assert_eq!(t.version(), 5);
    }
}
