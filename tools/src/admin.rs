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
    /// A file this command would write already exists (nothing is overwritten).
    #[error("{0} already exists: nothing is overwritten, so give a path that does not exist")]
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

/// Makes `count` new root keys in the owner-only folder `dir` (`root-1.key`, ...).
fn new_root_keys(dir: &Path, count: usize) -> Result<(Vec<Identity>, Vec<PathBuf>), AdminError> {
    create_private_dir(dir)?;
    let mut identities = Vec::with_capacity(count);
    let mut files = Vec::with_capacity(count);
    for n in 1..=count {
        let identity = random_identity()?;
        let path = dir.join(format!("root-{n}.key"));
        write_key(&path, &identity.seed())?;
        files.push(path);
        identities.push(identity);
    }
    Ok((identities, files))
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
    let (identities, root_key_files) = new_root_keys(&options.dir.join(ROOTS_DIR), roots)?;
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

/// How a new directory version gets its root signatures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signing {
    /// Sign with a threshold of root keys found in this folder, and publish at once.
    Local(PathBuf),
    /// Write the version, unsigned, to this proposal file: each root key holder signs it on
    /// their own machine (`cpis federation sign`), then `cpis federation assemble` publishes it.
    Propose(PathBuf),
}

impl Signing {
    /// `--propose FILE` if given, else the root keys in `--roots-dir` (default `<dir>/roots`).
    pub fn from_options(dir: &Path, roots_dir: Option<PathBuf>, propose: Option<PathBuf>) -> Signing {
        match propose {
            Some(file) => Signing::Propose(file),
            None => Signing::Local(roots_dir.unwrap_or_else(|| dir.join(ROOTS_DIR))),
        }
    }
}

/// What became of a new directory version.
#[derive(Clone, Debug)]
pub enum Next {
    /// Signed and published as the newest version.
    Published(SignedDirectory),
    /// Written, unsigned, to a proposal file.
    Proposed { version: u64, file: PathBuf },
}

impl Next {
    pub fn version(&self) -> u64 {
        match self {
            Next::Published(d) => d.directory.version,
            Next::Proposed { version, .. } => *version,
        }
    }
}

/// The successor of `trusted` that `change` makes, with a new expiry.
fn successor(
    trusted: &TrustedDirectory,
    valid_days: u64,
    now: Timestamp,
    change: impl FnOnce(&mut Directory) -> Result<(), AdminError>,
) -> Result<Directory, AdminError> {
    let mut next = trusted.directory().clone();
    next.version += 1;
    next.expires_at = now.plus_ms(days(valid_days, "--valid-days")?);
    change(&mut next)?;
    Ok(next)
}

/// Checks that the rules of the directory hold for `next` (before anyone is asked to sign it).
fn check_successor(next: &Directory, extra_signers: &[&Identity]) -> Result<(), AdminError> {
    // Sign it with throwaway roots of the same shape to run every rule but the signatures.
    let mut probe = next.clone();
    let throwaway: Vec<Identity> =
        (0..probe.roots.len().max(1)).map(|_| random_identity()).collect::<Result<_, _>>()?;
    probe.roots = throwaway.iter().map(Identity::public).collect();
    let signers: Vec<&Identity> = throwaway.iter().chain(extra_signers.iter().copied()).collect();
    let at = next.expires_at.minus_ms(1);
    TrustedDirectory::bootstrap(SignedDirectory::sign(probe, &signers), at)
        .map(|_| ())
        .map_err(|source| AdminError::Directory { what: "new", source })
}

/// Signs (or proposes) the successor of `trusted` that `change` makes. A signed version is
/// checked to be one every node would accept, then written to the federation folder.
pub fn next_version(
    dir: &Path,
    signing: &Signing,
    trusted: &TrustedDirectory,
    valid_days: u64,
    now: Timestamp,
    change: impl FnOnce(&mut Directory) -> Result<(), AdminError>,
) -> Result<Next, AdminError> {
    let next = successor(trusted, valid_days, now, change)?;
    check_successor(&next, &[])?;
    match signing {
        Signing::Local(roots_dir) => {
            let roots = signing_roots(trusted.directory(), roots_dir)?;
            let signers: Vec<&Identity> = roots.iter().collect();
            let signed = SignedDirectory::sign(next, &signers);
            trusted
                .accept_update(signed.clone(), now)
                .map_err(|source| AdminError::Directory { what: "new", source })?;
            publish_version(dir, &signed)?;
            Ok(Next::Published(signed))
        }
        Signing::Propose(file) => write_proposal(file, SignedDirectory { directory: next, signatures: vec![] }),
    }
}

fn write_proposal(file: &Path, proposal: SignedDirectory) -> Result<Next, AdminError> {
    if file.exists() {
        return Err(AdminError::OutputExists(file.to_path_buf()));
    }
    let version = proposal.directory.version;
    write_directory(file, &proposal).map_err(io(file))?;
    Ok(Next::Proposed { version, file: file.to_path_buf() })
}

/// What a root key holder signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    pub version: u64,
    pub key_id: String,
    /// Distinct root signatures the proposal now carries.
    pub signatures: usize,
}

/// Adds one root key's signature to a proposal file (run on the root key holder's own machine,
/// where `current` is the directory it holds, if any: a key of the current roots may sign a
/// proposal that replaces them).
pub fn sign_proposal(proposal: &Path, root_key: &Path, current: Option<&Directory>) -> Result<Signature, AdminError> {
    let mut signed = read_directory(proposal)?;
    let identity = Identity::from_seed(read_key(root_key)?);
    let listed = signed.directory.roots.contains(&identity.public())
        || current.is_some_and(|c| c.roots.contains(&identity.public()));
    if !listed {
        return Err(AdminError::Invalid(format!(
            "--root-key {} is not a root key of this proposal (nor of the directory given with --dir)",
            identity.key_id()
        )));
    }
    if signed.signatures.iter().any(|s| s.key_id == identity.key_id()) {
        return Err(AdminError::Invalid(format!("root key {} has already signed this proposal", identity.key_id())));
    }
    let one = SignedDirectory::sign(signed.directory.clone(), &[&identity]);
    signed.signatures.extend(one.signatures);
    let tmp = proposal.with_extension("signing");
    write_directory(&tmp, &signed).map_err(io(&tmp))?;
    std::fs::rename(&tmp, proposal).map_err(io(proposal))?;
    let count = signed.signatures.len();
    Ok(Signature { version: signed.directory.version, key_id: identity.key_id().to_string(), signatures: count })
}

/// Publishes a proposal once it carries a threshold of root signatures (of the current roots,
/// and of its own when it changes them), checked exactly as every node will check it.
pub fn assemble(dir: &Path, proposal: &Path, now: Timestamp) -> Result<SignedDirectory, AdminError> {
    let trusted = current(dir, now)?;
    let signed = read_directory(proposal)?;
    trusted.accept_update(signed.clone(), now).map_err(|source| AdminError::Directory { what: "proposed", source })?;
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
    /// Write the new version as a proposal to this file instead of signing it here.
    pub propose: Option<PathBuf>,
}

/// A member enrolled.
#[derive(Debug)]
pub struct Enrolled {
    pub member: Member,
    pub next: Next,
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
    let signing = Signing::from_options(&options.dir, options.roots_dir.clone(), options.propose.clone());
    if let Signing::Local(roots_dir) = &signing {
        // Check that the roots are at hand before writing anything.
        signing_roots(trusted.directory(), roots_dir)?;
    }
    write_key(&key_file, &identity.seed())?;
    let added = member.clone();
    let next = next_version(&options.dir, &signing, &trusted, options.valid_days, now, |d| {
        d.members.push(added);
        Ok(())
    })?;
    // The member starts from the newest version there is (once a proposal is assembled, copy
    // the federation's directory.cpis into its folder).
    let newest = match &next {
        Next::Published(signed) => signed.clone(),
        Next::Proposed { .. } => trusted.signed().clone(),
    };
    let member_directory = options.out.join(DIRECTORY_FILE);
    write_directory(&member_directory, &newest).map_err(io(&member_directory))?;
    write_config(options, &member, &config_file)?;
    Ok(Enrolled { member, next, key_file, config_file })
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
            return Err(AdminError::Invalid("only a hub has addresses (--address, --listen)".into()));
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
        r#"# Config for care setting {code} ({name}), written by `cpis federation enrol`.
# Run the setting gateway (page for clinicians, FHIR API for clinical systems) with:
#   cpis-node run --config <this file>
# after adding people with `cpis gateway add-user --config <this file> ...` (docs/gateway.md).
# Or look a child up from a terminal, with no gateway:
#   cpis lookup --config <this file> --nhs NUMBER --user-id ID --user-name NAME --role ROLE

role = "setting"
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

# The setting gateway (`cpis-node run`). Every field is optional; the defaults are shown.
[gateway]
# Folder for the accounts file, the audit log and the bound address (http.addr).
data_dir = "gateway"
# HTTP address. Loopback serves plain HTTP; any other address needs tls_cert and tls_key (HTTPS).
listen = "127.0.0.1:0"
# tls_cert = "gateway-cert.pem"
# tls_key = "gateway-key.pem"
# Ask the next hub too when one has not answered after this long; give up ("could not check")
# after deadline_ms.
hedge_after_ms = 250
deadline_ms = 2000
# Sign people out after this long idle; lock an account for lockout_ms after lockout_failures
# failed sign-ins in a row.
session_idle_ms = 1800000
lockout_failures = 5
lockout_ms = 900000
# Log lines: "text" or "json".
log_format = "text"
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
    pub next: Next,
    /// The new key's id and file (a rotation, or a revocation's replacement).
    pub new_key: Option<(String, PathBuf)>,
}

/// The common options of every change to the directory.
#[derive(Clone, Debug)]
pub struct ChangeOptions {
    pub dir: PathBuf,
    pub signing: Signing,
    /// Days until the new version expires.
    pub valid_days: u64,
}

/// The options of a key change.
#[derive(Clone, Debug)]
pub struct KeyChangeOptions {
    pub change: ChangeOptions,
    pub code: String,
    /// Where to write the new key (a rotation; or a revocation's replacement, `--replace-with`).
    pub key_out: Option<PathBuf>,
    pub key_valid_days: u64,
    /// The key ids each member's node reports running on (from a hub's status), if known.
    pub running: Option<std::collections::BTreeMap<OdsCode, String>>,
    /// Retire a key a node runs on all the same.
    pub force: bool,
}

fn member_of<'a>(trusted: &'a TrustedDirectory, code: &str) -> Result<&'a Member, AdminError> {
    let code = OdsCode::parse(code).map_err(|e| AdminError::Invalid(format!("--code: {e}")))?;
    trusted
        .member(&code)
        .ok_or_else(|| AdminError::Invalid(format!("--code: {code} is not a member of the federation")))
}

/// A new active key for a member, written owner-only to `path`.
fn new_key(path: &Path, valid_days: u64, now: Timestamp) -> Result<(MemberKey, (String, PathBuf)), AdminError> {
    if path.exists() {
        return Err(AdminError::OutputExists(path.to_path_buf()));
    }
    let identity = random_identity()?;
    let key = MemberKey {
        public: identity.public(),
        valid_from: now.minus_ms(KEY_BACKDATE_MS),
        valid_until: now.plus_ms(days(valid_days, "--key-valid-days")?),
        status: KeyStatus::Active,
    };
    write_key(path, &identity.seed())?;
    Ok((key, (identity.key_id().to_string(), path.to_path_buf())))
}

/// Adds, retires or revokes one of a member's keys in the next directory version, refusing a
/// change that would leave the member with no usable key, or retire the key its node runs on.
pub fn change_key(options: &KeyChangeOptions, change: KeyChange, now: Timestamp) -> Result<KeyChanged, AdminError> {
    let dir = &options.change.dir;
    let trusted = current(dir, now)?;
    let member = member_of(&trusted, &options.code)?;
    let code = member.code.clone();
    let mut keys = member.keys.clone();
    if let Signing::Local(roots_dir) = &options.change.signing {
        signing_roots(trusted.directory(), roots_dir)?;
    }
    match change {
        KeyChange::Add if keys.len() >= cpis_protocol::directory::MEMBER_KEYS_MAX => {
            return Err(AdminError::Invalid(format!(
                "{code} already lists {} keys, the most a member may: drop old ones first (`cpis federation prune-keys`)",
                keys.len()
            )));
        }
        KeyChange::Add => {}
        KeyChange::Retire(id) | KeyChange::Revoke(id) => {
            check_key_change(options, member, &keys, id, change, now)?;
            set_status(&mut keys, id, change, now)?;
        }
    }
    let mut added = None;
    if let Some(path) = &options.key_out {
        let (key, file) = new_key(path, options.key_valid_days, now)?;
        keys.push(key);
        added = Some(file);
    }
    let next = next_version(dir, &options.change.signing, &trusted, options.change.valid_days, now, |d| {
        if let Some(m) = d.members.iter_mut().find(|m| m.code == code) {
            m.keys = keys;
        }
        Ok(())
    })?;
    Ok(KeyChanged { next, new_key: added })
}

/// The guard rails of a retirement or revocation.
fn check_key_change(
    options: &KeyChangeOptions,
    member: &Member,
    keys: &[MemberKey],
    id: cpis_protocol::sign::KeyId,
    change: KeyChange,
    now: Timestamp,
) -> Result<(), AdminError> {
    let code = &member.code;
    let others_usable = keys.iter().filter(|k| k.id() != id && k.usable_at(now)).count();
    let replaced = options.key_out.is_some();
    if others_usable == 0 && !replaced {
        let (what, way_out) = match change {
            KeyChange::Revoke(_) => ("revoke", "Pass --replace-with FILE to add its replacement in the same version"),
            _ => {
                ("retire", "Add its replacement first (`cpis federation rotate-key`), install it, then retire this one")
            }
        };
        return Err(AdminError::Invalid(format!(
            "key {id} is {code}'s last usable key: to {what} it would leave {code} unable to sign or connect \
             (its data would show as unavailable). {way_out}"
        )));
    }
    if let KeyChange::Retire(_) = change {
        match options.running.as_ref().and_then(|r| r.get(code)) {
            Some(running) if *running == id.to_string() && !options.force => {
                return Err(AdminError::Invalid(format!(
                    "{code}'s node reports running on key {id}: retiring it would cut the node off. Install its new key \
                     and restart it first, or pass --force"
                )));
            }
            None if options.running.is_none() && !options.force => {
                return Err(AdminError::Invalid(
                    "cannot tell which key the member's node runs on: pass --node HUB_CONFIG (a hub's status lists \
                     the key each hub and authority connected with), or --force"
                        .into(),
                ));
            }
            // A setting keeps no connection: no hub can say which key it uses.
            None if member.role != Role::Setting && !options.force => {
                return Err(AdminError::Invalid(format!(
                    "the hub asked has not seen {code}'s node since it started, so cannot tell which key it runs on: \
                     ask a hub that {code}'s node connects to (--node HUB_CONFIG), or pass --force"
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

fn set_status(
    keys: &mut [MemberKey],
    id: cpis_protocol::sign::KeyId,
    change: KeyChange,
    now: Timestamp,
) -> Result<(), AdminError> {
    let key = keys
        .iter_mut()
        .find(|k| k.id() == id)
        .ok_or_else(|| AdminError::Invalid(format!("--key-id {id} is not a key of this member")))?;
    match change {
        KeyChange::Retire(_) if key.status != KeyStatus::Active => {
            Err(AdminError::Invalid(format!("key {id} is not active: only an active key can be retired")))
        }
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

/// `cpis federation renew`: the same directory with a new expiry.
pub fn renew(options: &ChangeOptions, now: Timestamp) -> Result<Next, AdminError> {
    let trusted = current(&options.dir, now)?;
    next_version(&options.dir, &options.signing, &trusted, options.valid_days, now, |_| Ok(()))
}

/// `cpis federation remove`: a member leaves the federation (a hub only once no member names it
/// as a home hub).
pub fn remove_member(options: &ChangeOptions, code: &str, now: Timestamp) -> Result<Next, AdminError> {
    let trusted = current(&options.dir, now)?;
    let member = member_of(&trusted, code)?;
    let code = member.code.clone();
    let homed: Vec<String> =
        trusted.members().iter().filter(|m| m.home_hubs.contains(&code)).map(|m| m.code.to_string()).collect();
    if !homed.is_empty() {
        return Err(AdminError::Invalid(format!(
            "{code} is a home hub of {}: give them other home hubs first (`cpis federation set-member --home-hub`)",
            homed.join(", ")
        )));
    }
    next_version(&options.dir, &options.signing, &trusted, options.valid_days, now, |d| {
        d.members.retain(|m| m.code != code);
        Ok(())
    })
}

/// What `cpis federation set-member` changes (each `None` leaves the field as it is).
#[derive(Clone, Debug, Default)]
pub struct MemberEdit {
    pub name: Option<String>,
    pub addresses: Option<Vec<String>>,
    pub home_hubs: Option<Vec<String>>,
    pub contact_name: Option<String>,
    pub office_phone: Option<String>,
    pub out_of_hours_phone: Option<String>,
}

/// `cpis federation set-member`: a member's name, a hub's addresses, an authority's or setting's
/// home hubs, an authority's contacts.
pub fn set_member(options: &ChangeOptions, code: &str, edit: &MemberEdit, now: Timestamp) -> Result<Next, AdminError> {
    let trusted = current(&options.dir, now)?;
    let mut member = member_of(&trusted, code)?.clone();
    let invalid = |t: String| AdminError::Invalid(t);
    if let Some(name) = &edit.name {
        check_text("name", name).map_err(|e| invalid(format!("--name: {e}")))?;
        member.name = name.trim().to_string();
    }
    if let Some(addresses) = &edit.addresses {
        let probe = EnrolOptions { role: member.role, addresses: addresses.clone(), ..enrol_probe(&options.dir) };
        member.addresses = self::addresses(&probe)?;
    }
    if let Some(home_hubs) = &edit.home_hubs {
        let probe = EnrolOptions { role: member.role, home_hubs: home_hubs.clone(), ..enrol_probe(&options.dir) };
        member.home_hubs = self::home_hubs(&probe, &trusted)?;
    }
    if edit.contact_name.is_some() || edit.office_phone.is_some() || edit.out_of_hours_phone.is_some() {
        let Some(mut c) = member.contacts.clone() else {
            return Err(invalid("only an authority has contact details".into()));
        };
        if let Some(v) = &edit.contact_name {
            c.name = v.trim().to_string();
        }
        if let Some(v) = &edit.office_phone {
            c.office_phone = v.trim().to_string();
        }
        if let Some(v) = &edit.out_of_hours_phone {
            c.out_of_hours_phone = v.trim().to_string();
        }
        c.check().map_err(|e| invalid(format!("contacts: {e}")))?;
        member.contacts = Some(c);
    }
    next_version(&options.dir, &options.signing, &trusted, options.valid_days, now, |d| {
        if let Some(m) = d.members.iter_mut().find(|m| m.code == member.code) {
            *m = member;
        }
        Ok(())
    })
}

/// Options of an enrolment used only to run the enrolment checks on one field.
fn enrol_probe(dir: &Path) -> EnrolOptions {
    EnrolOptions {
        dir: dir.to_path_buf(),
        roots_dir: None,
        role: Role::Hub,
        code: String::new(),
        name: String::new(),
        addresses: vec![],
        home_hubs: vec![],
        setting_type: None,
        contact_name: None,
        office_phone: None,
        out_of_hours_phone: None,
        listen: None,
        out: PathBuf::new(),
        key_valid_days: 1,
        valid_days: 1,
        propose: None,
    }
}

/// `cpis federation prune-keys`: drops keys past their validity window (of one member, or of
/// all), never a member's last key. Returns the keys dropped, as `CODE:KEY_ID`.
pub fn prune_keys(
    options: &ChangeOptions,
    code: Option<&str>,
    now: Timestamp,
) -> Result<(Next, Vec<String>), AdminError> {
    let trusted = current(&options.dir, now)?;
    let only = code.map(|c| member_of(&trusted, c).map(|m| m.code.clone())).transpose()?;
    let mut dropped = Vec::new();
    for m in trusted.members().iter().filter(|m| only.as_ref().is_none_or(|c| *c == m.code)) {
        let expired: Vec<&MemberKey> = m.keys.iter().filter(|k| k.valid_until <= now).collect();
        if expired.len() < m.keys.len() {
            dropped.extend(expired.iter().map(|k| format!("{}:{}", m.code, k.id())));
        }
    }
    if dropped.is_empty() {
        return Err(AdminError::Invalid("no key is past its validity window: nothing to prune".into()));
    }
    let next = next_version(&options.dir, &options.signing, &trusted, options.valid_days, now, |d| {
        for m in d.members.iter_mut().filter(|m| only.as_ref().is_none_or(|c| *c == m.code)) {
            if m.keys.iter().any(|k| k.valid_until > now) {
                m.keys.retain(|k| k.valid_until > now);
            }
        }
        Ok(())
    })?;
    Ok((next, dropped))
}

/// `cpis federation rotate-roots`: new root keys (written to `roots_out`) and threshold. The new
/// version must be signed by a threshold of the current roots and of the new ones: the new keys
/// sign it here; the current ones sign it here (`Signing::Local`) or on their holders' machines.
pub fn rotate_roots(
    options: &ChangeOptions,
    roots: u8,
    threshold: u8,
    roots_out: &Path,
    now: Timestamp,
) -> Result<(Next, Vec<PathBuf>), AdminError> {
    let trusted = current(&options.dir, now)?;
    let count = usize::from(roots);
    if !(1..=ROOTS_MAX).contains(&count) || threshold == 0 || threshold > roots {
        return Err(AdminError::Invalid(format!("--roots must be 1 to {ROOTS_MAX}, --threshold 1 to --roots")));
    }
    if roots_out.exists() {
        return Err(AdminError::OutputExists(roots_out.to_path_buf()));
    }
    if let Signing::Local(roots_dir) = &options.signing {
        signing_roots(trusted.directory(), roots_dir)?;
    }
    let (new_roots, files) = new_root_keys(roots_out, count)?;
    let next = successor(&trusted, options.valid_days, now, |d| {
        d.roots = new_roots.iter().map(Identity::public).collect();
        d.threshold = threshold;
        Ok(())
    })?;
    let own: Vec<&Identity> = new_roots.iter().take(usize::from(threshold)).collect();
    let with_new = SignedDirectory::sign(next, &own);
    let result = match &options.signing {
        Signing::Local(roots_dir) => {
            let old = signing_roots(trusted.directory(), roots_dir)?;
            let old: Vec<&Identity> = old.iter().collect();
            let mut signed = with_new;
            signed.signatures.extend(SignedDirectory::sign(signed.directory.clone(), &old).signatures);
            trusted
                .accept_update(signed.clone(), now)
                .map_err(|source| AdminError::Directory { what: "new", source })?;
            publish_version(&options.dir, &signed)?;
            Next::Published(signed)
        }
        Signing::Propose(file) => write_proposal(file, with_new)?,
    };
    Ok((result, files))
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

    /// A new federation with one hub, in a temporary folder (kept while the first value lives).
    fn fresh_federation() -> (tempfile::TempDir, PathBuf, Timestamp) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("fed");
        let now = crate::render::now();
        federation(&dir, now);
        (tmp, dir, now)
    }

    fn federation(dir: &Path, now: Timestamp) {
        let options =
            CreateOptions { dir: dir.to_path_buf(), name: "Test".into(), roots: 3, threshold: 2, valid_days: 30 };
        create_ok(create(&options, now));
        let hub = EnrolOptions {
            code: "HUBA".into(),
            name: "Hub A".into(),
            addresses: vec!["127.0.0.1:7401".into()],
            out: dir.join("HUBA"),
            key_valid_days: 30,
            valid_days: 30,
            ..enrol_probe(dir)
        };
        enrol(&hub, now).unwrap();
    }

    fn create_ok(r: Result<Created, AdminError>) {
        let created = r.unwrap();
        assert_eq!(created.root_key_files.len(), 3);
    }

    #[test]
    fn create_then_enrol__keys_are_private_and_every_version_is_kept() {
        let (_tmp, dir, now) = fresh_federation();
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
        let (tmp, dir, now) = fresh_federation();
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
            propose: None,
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
        assert_eq!(enrolled.next.version(), 3);
        assert!(matches!(enrol(&base, now), Err(AdminError::Invalid(_))), "a duplicate code is refused");
    }

    fn local(dir: &Path) -> ChangeOptions {
        ChangeOptions { dir: dir.to_path_buf(), signing: Signing::Local(dir.join(ROOTS_DIR)), valid_days: 30 }
    }

    fn key_options(dir: &Path, key_out: Option<PathBuf>) -> KeyChangeOptions {
        KeyChangeOptions {
            change: local(dir),
            code: "HUBA".into(),
            key_out,
            key_valid_days: 30,
            // HUBA's node runs on a key other than those these tests retire.
            running: Some([(OdsCode::parse("HUBA").unwrap(), "0".repeat(16))].into()),
            force: false,
        }
    }

    fn huba_keys(dir: &Path, now: Timestamp) -> Vec<MemberKey> {
        current(dir, now).unwrap().member(&OdsCode::parse("HUBA").unwrap()).unwrap().keys.clone()
    }

    /// Each version chains from the one before, as a node would check.
    fn chain_holds(dir: &Path, now: Timestamp) -> u64 {
        let mut t = TrustedDirectory::bootstrap(read_directory(&version_path(dir, 1)).unwrap(), now).unwrap();
        for next in chain_after(dir, 1).unwrap() {
            t = t.accept_update(next, now).unwrap();
        }
        t.version()
    }

    #[test]
    fn rotate_retire_revoke__each_is_the_next_accepted_version() {
        let (tmp, dir, now) = fresh_federation();
        let old_id = huba_keys(&dir, now)[0].id();
        let lone = change_key(&key_options(&dir, None), KeyChange::Retire(old_id), now).unwrap_err();
        assert!(lone.to_string().contains("last usable key"), "{lone}");
        let added = change_key(&key_options(&dir, Some(tmp.path().join("new.key"))), KeyChange::Add, now).unwrap();
        assert!(added.new_key.is_some() && tmp.path().join("new.key").exists());
        change_key(&key_options(&dir, None), KeyChange::Retire(old_id), now).unwrap();
        change_key(&key_options(&dir, None), KeyChange::Revoke(old_id), now).unwrap();
        let keys = huba_keys(&dir, now);
        assert!(matches!(keys[0].status, KeyStatus::Revoked { .. }));
        assert_eq!(keys[1].status, KeyStatus::Active);
        assert_eq!(chain_holds(&dir, now), 5);
    }

    #[test]
    fn revoking_the_last_usable_key__refused_unless_its_replacement_comes_in_the_same_version() {
        let (tmp, dir, now) = fresh_federation();
        let only = huba_keys(&dir, now)[0].id();
        let refused = change_key(&key_options(&dir, None), KeyChange::Revoke(only), now).unwrap_err();
        assert!(refused.to_string().contains("--replace-with"), "{refused}");
        assert_eq!(current(&dir, now).unwrap().version(), 2, "nothing signed");
        let replaced =
            change_key(&key_options(&dir, Some(tmp.path().join("replacement.key"))), KeyChange::Revoke(only), now)
                .unwrap();
        assert_eq!(replaced.next.version(), 3);
        let keys = huba_keys(&dir, now);
        assert!(matches!(keys[0].status, KeyStatus::Revoked { .. }) && keys[1].usable_at(now));
    }

    #[test]
    fn retiring_the_key_a_node_runs_on__asks_for_force__and_an_unknown_or_unseen_node_asks_for_a_check() {
        let (tmp, dir, now) = fresh_federation();
        let old = huba_keys(&dir, now)[0].id();
        change_key(&key_options(&dir, Some(tmp.path().join("new.key"))), KeyChange::Add, now).unwrap();
        let mut options = key_options(&dir, None);
        options.running = Some([(OdsCode::parse("HUBA").unwrap(), old.to_string())].into());
        let refused = change_key(&options, KeyChange::Retire(old), now).unwrap_err();
        assert!(refused.to_string().contains("--force"), "{refused}");
        options.running = None;
        let unknown = change_key(&options, KeyChange::Retire(old), now).unwrap_err();
        assert!(unknown.to_string().contains("--node"), "{unknown}");
        options.running = Some(Default::default());
        let unseen = change_key(&options, KeyChange::Retire(old), now).unwrap_err();
        assert!(unseen.to_string().contains("has not seen HUBA's node"), "{unseen}");
        options.force = true;
        assert!(change_key(&options, KeyChange::Retire(old), now).is_ok());
    }

    #[test]
    fn a_proposal_signed_by_each_root_holder_on_their_own_machine__assembled_and_accepted() {
        let (tmp, dir, now) = fresh_federation();
        // The root keys leave the administrator's machine: each holder keeps one.
        let holders: Vec<PathBuf> = (1..=3)
            .map(|n| {
                let home = tmp.path().join(format!("holder-{n}"));
                std::fs::create_dir_all(&home).unwrap();
                let key = home.join("root.key");
                std::fs::rename(dir.join(format!("roots/root-{n}.key")), &key).unwrap();
                key
            })
            .collect();
        let proposal = tmp.path().join("v3.proposal");
        let options = ChangeOptions { dir: dir.clone(), signing: Signing::Propose(proposal.clone()), valid_days: 60 };
        assert_eq!(renew(&options, now).unwrap().version(), 3);
        assert!(matches!(assemble(&dir, &proposal, now), Err(AdminError::Directory { .. })), "unsigned: refused");
        sign_proposal(&proposal, &holders[0], None).unwrap();
        assert!(sign_proposal(&proposal, &holders[0], None).is_err(), "one key signs once");
        assert!(assemble(&dir, &proposal, now).is_err(), "one of two: refused");
        assert_eq!(sign_proposal(&proposal, &holders[2], None).unwrap().signatures, 2);
        let published = assemble(&dir, &proposal, now).unwrap();
        assert_eq!(published.directory.version, 3);
        assert_eq!(chain_holds(&dir, now), 3);
        let stranger = tmp.path().join("stranger.key");
        write_key(&stranger, &[9; 32]).unwrap();
        assert!(sign_proposal(&proposal, &stranger, None).is_err(), "a key that is not a root cannot sign");
    }

    #[test]
    fn rotating_the_roots__new_and_old_thresholds_sign__the_next_version_needs_the_new_roots() {
        let (tmp, dir, now) = fresh_federation();
        let new_roots = tmp.path().join("new-roots");
        let (next, files) = rotate_roots(&local(&dir), 5, 3, &new_roots, now).unwrap();
        assert_eq!((next.version(), files.len()), (3, 5));
        assert_eq!(chain_holds(&dir, now), 3);
        // The old roots can no longer sign: the next change needs the new ones.
        assert!(matches!(renew(&local(&dir), now), Err(AdminError::NotEnoughRoots { .. })));
        let with_new = ChangeOptions { dir: dir.clone(), signing: Signing::Local(new_roots), valid_days: 30 };
        assert_eq!(renew(&with_new, now).unwrap().version(), 4);
        assert_eq!(chain_holds(&dir, now), 4);
    }

    #[test]
    fn membership_changes__renew_edit_remove_and_prune__each_checked_before_signing() {
        let (tmp, dir, now) = fresh_federation();
        let authority = EnrolOptions {
            role: Role::Authority,
            code: "204".into(),
            name: "Hackney".into(),
            home_hubs: vec!["HUBA".into()],
            office_phone: Some("020 7946 0204".into()),
            out_of_hours_phone: Some("020 7946 0999".into()),
            out: tmp.path().join("204"),
            key_valid_days: 30,
            valid_days: 30,
            ..enrol_probe(&dir)
        };
        enrol(&authority, now).unwrap();
        let edit = MemberEdit { out_of_hours_phone: Some("020 7946 0000".into()), ..MemberEdit::default() };
        set_member(&local(&dir), "204", &edit, now).unwrap();
        let contacts = current(&dir, now).unwrap().member(&OdsCode::parse("204").unwrap()).unwrap().contacts.clone();
        assert_eq!(contacts.unwrap().out_of_hours_phone, "020 7946 0000");
        let bad = MemberEdit { home_hubs: Some(vec!["HUBX".into()]), ..MemberEdit::default() };
        assert!(set_member(&local(&dir), "204", &bad, now).unwrap_err().to_string().contains("HUBX"));
        let homed = remove_member(&local(&dir), "HUBA", now).unwrap_err();
        assert!(homed.to_string().contains("home hub of 204"), "{homed}");
        remove_member(&local(&dir), "204", now).unwrap();
        assert!(current(&dir, now).unwrap().member(&OdsCode::parse("204").unwrap()).is_none());
        assert!(prune_keys(&local(&dir), None, now).is_err(), "nothing past its window yet");
        let mut longer = key_options(&dir, Some(tmp.path().join("k2.key")));
        longer.key_valid_days = 90;
        change_key(&longer, KeyChange::Add, now).unwrap();
        renew(&ChangeOptions { valid_days: 90, ..local(&dir) }, now).unwrap();
        // 40 days on, HUBA's first key (30 days) is past its window and goes; its 90-day key stays.
        let later = now.plus_ms(40 * DAY_MS);
        let (_, dropped) = prune_keys(&ChangeOptions { valid_days: 90, ..local(&dir) }, Some("HUBA"), later).unwrap();
        assert_eq!(dropped.len(), 1);
        assert_eq!(huba_keys(&dir, later).len(), 1);
    }
}
