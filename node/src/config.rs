//! Configuration of a node (hub or authority) and of a care setting's lookup client.
//!
//! Plain structs with defaults and a `validate()` that names the field at fault. The binary
//! reads them from TOML ([`NodeConfig::load`]); relative paths are taken from the config file's
//! folder. Every field is documented with its default.

use cpis_protocol::authority::AuthorityConfig;
use cpis_protocol::directory::{Role, SignedDirectory};
use cpis_protocol::hub::HubConfig;
use cpis_protocol::ids::OdsCode;
use cpis_protocol::machine::RoleConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Why a configuration (or a file it names) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The TOML does not parse, or a field has the wrong type; the message names the field.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A field's value breaks a rule.
    #[error("config field `{field}`: {rule}")]
    Invalid { field: &'static str, rule: String },
    /// The key file is missing, malformed or readable by others.
    #[error("key file {path}: {problem}")]
    Key { path: PathBuf, problem: String },
    /// The directory file is missing or malformed.
    #[error("directory file {path}: {problem}")]
    Directory { path: PathBuf, problem: String },
}

/// How logs are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Readable lines (default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Timings. Every field is optional in the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timing {
    /// How often the state machine is ticked. Default 1000 ms.
    pub tick_ms: u64,
    /// Anti-entropy with each peer. Default 30000 ms.
    pub sync_interval_ms: u64,
    /// First notification retry. Default 1000 ms.
    pub retry_base_ms: u64,
    /// Longest notification retry interval. Default 60000 ms.
    pub retry_cap_ms: u64,
    /// A notification waiting longer is reported. Default 3600000 ms (1 hour).
    pub overdue_after_ms: u64,
    /// Largest accepted difference between a lookup's time and the hub's clock. Default 300000 ms.
    pub clock_skew_max_ms: u64,
    /// How often summaries past visibility are pruned. Default 3600000 ms.
    pub prune_interval_ms: u64,
    /// Visits kept for the history. Default 365 days.
    pub visit_retention_days: u64,
    /// A plan no longer visible keeps its last entry this long at hubs, so a hub cut off when it
    /// changed still learns of it. Default 30 days.
    pub tombstone_retention_days: u64,
    /// First reconnect delay. Default 200 ms.
    pub reconnect_base_ms: u64,
    /// Longest reconnect delay. Default 10000 ms.
    pub reconnect_cap_ms: u64,
    /// An authority re-signs its head this often while nothing changes. Default 60000 ms.
    pub head_interval_ms: u64,
    /// An authority looks for plans past their visibility window this often. Default 3600000 ms.
    pub sweep_interval_ms: u64,
    /// An authority refuses notifications of lookups older than this. Default 30 days.
    pub notification_age_max_days: u64,
}

impl Default for Timing {
    fn default() -> Self {
        let hub = HubConfig::default();
        let authority = AuthorityConfig::default();
        Timing {
            tick_ms: 1_000,
            sync_interval_ms: hub.sync_interval_ms,
            retry_base_ms: hub.retry_base_ms,
            retry_cap_ms: hub.retry_cap_ms,
            overdue_after_ms: hub.overdue_after_ms,
            clock_skew_max_ms: hub.clock_skew_max_ms,
            prune_interval_ms: hub.prune_interval_ms,
            visit_retention_days: hub.visit_retention_days,
            tombstone_retention_days: hub.tombstone_retention_days,
            reconnect_base_ms: 200,
            reconnect_cap_ms: 10_000,
            head_interval_ms: authority.head_interval_ms,
            sweep_interval_ms: authority.sweep_interval_ms,
            notification_age_max_days: authority.notification_age_max_days,
        }
    }
}

impl Timing {
    /// Short timings for demonstrations and tests: ticks of 100 ms, syncs and heads every second,
    /// retries and reconnects from 100 ms to 1 s.
    pub fn short() -> Timing {
        Timing {
            tick_ms: 100,
            sync_interval_ms: 1_000,
            retry_base_ms: 100,
            retry_cap_ms: 1_000,
            reconnect_base_ms: 100,
            reconnect_cap_ms: 1_000,
            head_interval_ms: 1_000,
            ..Timing::default()
        }
    }

    fn hub_config(&self, limits: &Limits) -> HubConfig {
        HubConfig {
            sync_interval_ms: self.sync_interval_ms,
            retry_base_ms: self.retry_base_ms,
            retry_cap_ms: self.retry_cap_ms,
            overdue_after_ms: self.overdue_after_ms,
            clock_skew_max_ms: self.clock_skew_max_ms,
            prune_interval_ms: self.prune_interval_ms,
            visit_retention_days: self.visit_retention_days,
            tombstone_retention_days: self.tombstone_retention_days,
            setting_lookups_per_hour: limits.setting_lookups_per_hour,
            person_lookups_per_hour: limits.person_lookups_per_hour,
            ..HubConfig::default()
        }
    }

    fn authority_config(&self) -> AuthorityConfig {
        AuthorityConfig {
            head_interval_ms: self.head_interval_ms,
            sweep_interval_ms: self.sweep_interval_ms,
            notification_age_max_days: self.notification_age_max_days,
            clock_skew_max_ms: self.clock_skew_max_ms,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("timing.tick_ms", self.tick_ms),
            ("timing.sync_interval_ms", self.sync_interval_ms),
            ("timing.retry_base_ms", self.retry_base_ms),
            ("timing.retry_cap_ms", self.retry_cap_ms),
            ("timing.reconnect_base_ms", self.reconnect_base_ms),
            ("timing.reconnect_cap_ms", self.reconnect_cap_ms),
            ("timing.prune_interval_ms", self.prune_interval_ms),
            ("timing.head_interval_ms", self.head_interval_ms),
            ("timing.sweep_interval_ms", self.sweep_interval_ms),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(ConfigError::Invalid { field, rule: "must be above zero".into() });
            }
        }
        if self.retry_cap_ms < self.retry_base_ms {
            return Err(ConfigError::Invalid {
                field: "timing.retry_cap_ms",
                rule: "must be at least retry_base_ms".into(),
            });
        }
        if self.reconnect_cap_ms < self.reconnect_base_ms {
            return Err(ConfigError::Invalid {
                field: "timing.reconnect_cap_ms",
                rule: "must be at least reconnect_base_ms".into(),
            });
        }
        Ok(())
    }
}

/// Lookup rate limits a hub applies (alarms are raised when they bite). Every field is optional.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Lookups one care setting may make per hour. Default 1200.
    pub setting_lookups_per_hour: u64,
    /// Lookups one person at a setting may make per hour. Default 120.
    pub person_lookups_per_hour: u64,
}

impl Default for Limits {
    fn default() -> Self {
        let hub = HubConfig::default();
        Limits {
            setting_lookups_per_hour: hub.setting_lookups_per_hour,
            person_lookups_per_hour: hub.person_lookups_per_hour,
        }
    }
}

/// A node: one hub or one authority.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// `hub` or `authority`. Required.
    pub role: NodeRole,
    /// This member's ODS code in the directory. Required.
    pub code: String,
    /// Folder for the store (`node.redb`) and the API token (`api.token`). Required.
    pub data_dir: PathBuf,
    /// The node's secret key (hex seed, owner-only permissions). Default `<data_dir>/node.key`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The directory version to start from (later versions arrive from peers and are kept in the
    /// store). Default `<data_dir>/directory.cpis`.
    #[serde(default)]
    pub directory_file: Option<PathBuf>,
    /// QUIC address to listen on. Required for a hub; an authority only dials out (default none).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Local HTTP API (operator commands, status, metrics). Default `127.0.0.1:0` (a free port,
    /// written to `<data_dir>/api.addr`). Must be a loopback address unless `api_public` is set.
    #[serde(default = "default_api_listen")]
    pub api_listen: SocketAddr,
    /// Allow the API on a non-loopback address. Default false.
    #[serde(default)]
    pub api_public: bool,
    /// Hub addresses to use instead of those in the directory (`CODE = "host:port"`). Default none.
    #[serde(default)]
    pub hub_addresses: BTreeMap<String, SocketAddr>,
    /// `text` (default) or `json`.
    #[serde(default)]
    pub log_format: LogFormat,
    #[serde(default)]
    pub timing: Timing,
    #[serde(default)]
    pub limits: Limits,
    /// An authority's web pages for its social workers (docs/council.md). Default none: no pages.
    #[serde(default)]
    pub pages: Option<PagesConfig>,
    /// An authority hands each notification to the council's case-management system by this
    /// webhook (docs/council.md). Default none.
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
    /// Or by MESH (docs/council.md); at most one of the two. Default none.
    #[serde(default)]
    pub mesh: Option<MeshConfig>,
}

/// An authority's MESH mailbox: each notification is sent as one MESH message to the council's
/// case-management mailbox (docs/council.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshConfig {
    /// `https://host:port` of the MESH API (its `/messageexchange/...` paths), or `http://` for a
    /// local MESH client or proxy. Required.
    pub url: String,
    /// The certificate authorities (PEM) that sign the MESH server's certificate. Required for
    /// an `https://` URL.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The mailbox's client certificate (PEM, its chain after it), which MESH requires over
    /// HTTPS; with `client_key_file`.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM, owner-only).
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// This authority's mailbox id. Required.
    pub mailbox: String,
    /// A file holding the mailbox's password (owner-only). Required.
    pub password_file: PathBuf,
    /// A file holding the MESH environment's shared key for the authorisation header. Required.
    pub shared_key_file: PathBuf,
    /// The case-management system's mailbox the notifications go to. Required.
    pub to_mailbox: String,
    /// The MESH workflow id of the messages. Default `CPIS_NOTIFICATION`.
    #[serde(default = "default_workflow_id")]
    pub workflow_id: String,
    /// Plan files arriving in the mailbox under this workflow are imported and answered.
    /// Default `CPIS_PLAN_UPLOAD`.
    #[serde(default = "default_upload_workflow_id")]
    pub upload_workflow_id: String,
    /// The workflow of the answers to plan files. Default `CPIS_PLAN_UPLOAD_RESULT`.
    #[serde(default = "default_result_workflow_id")]
    pub result_workflow_id: String,
    /// Longest wait between retries of a message that failed. Default 300000 ms (5 minutes).
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
}

fn default_workflow_id() -> String {
    "CPIS_NOTIFICATION".into()
}

fn default_upload_workflow_id() -> String {
    "CPIS_PLAN_UPLOAD".into()
}

fn default_result_workflow_id() -> String {
    "CPIS_PLAN_UPLOAD_RESULT".into()
}

impl MeshConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, rule: &str| Err(ConfigError::Invalid { field, rule: rule.into() });
        let Some(https) = url_is_https(&self.url) else {
            return invalid(
                "mesh.url",
                "an https:// URL of the MESH API (or http:// for a local MESH client or proxy)",
            );
        };
        if https && self.ca_file.is_none() {
            return invalid("mesh.ca_file", "required with an https:// URL: the CAs that sign MESH's certificate");
        }
        if !https && (self.ca_file.is_some() || self.client_cert_file.is_some()) {
            return invalid("mesh.ca_file", "certificates are for an https:// URL only");
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return invalid("mesh.client_cert_file", "client_cert_file and client_key_file go together");
        }
        let id_ok =
            |t: &str| !t.is_empty() && t.len() <= 64 && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        let ids =
            [&self.mailbox, &self.to_mailbox, &self.workflow_id, &self.upload_workflow_id, &self.result_workflow_id];
        if !ids.iter().all(|t| id_ok(t)) {
            return invalid("mesh.mailbox", "mailbox ids and workflow ids are 1 to 64 letters, digits or _");
        }
        if self.retry_max_ms == 0 {
            return invalid("mesh.retry_max_ms", "must be above zero");
        }
        Ok(())
    }
}

/// Where an authority posts each notification, signed with HMAC-SHA256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `https://host:port/path` (or `http://` on the council's own network) of the
    /// case-management system's endpoint. Required.
    pub url: String,
    /// The certificate authorities (PEM) that sign the endpoint's certificate. Required for an
    /// `https://` URL.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A file holding the shared secret the signature is made with (at least 32 characters,
    /// owner-only). Required.
    pub secret_file: PathBuf,
    /// Longest wait between retries of a delivery that failed. Default 300000 ms (5 minutes).
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
}

/// Whether `url` is `https://` (`Some(true)`) or `http://` (`Some(false)`) with a host; `None`
/// for anything else.
fn url_is_https(url: &str) -> Option<bool> {
    let (https, rest) = match url.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => (false, url.strip_prefix("http://")?),
    };
    (!rest.is_empty() && !rest.starts_with('/')).then_some(https)
}

fn default_retry_max_ms() -> u64 {
    300_000
}

impl WebhookConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, rule: &str| Err(ConfigError::Invalid { field, rule: rule.into() });
        match url_is_https(&self.url) {
            None => return invalid("webhook.url", "an https:// or http:// URL that names a host"),
            Some(true) if self.ca_file.is_none() => {
                return invalid("webhook.ca_file", "required with an https:// URL: the CAs that sign its certificate");
            }
            Some(false) if self.ca_file.is_some() => return invalid("webhook.ca_file", "for an https:// URL only"),
            Some(_) => {}
        }
        if self.retry_max_ms == 0 {
            return Err(ConfigError::Invalid { field: "webhook.retry_max_ms", rule: "must be above zero".into() });
        }
        Ok(())
    }
}

/// An authority's web pages: inbox, plans, import, audit log. Every field has a default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PagesConfig {
    /// HTTP address. Default `127.0.0.1:0` (a free port, written to `<data_dir>/pages.addr`).
    /// Any address that is not loopback needs `tls_cert` and `tls_key` (HTTPS).
    pub listen: SocketAddr,
    /// PEM certificate chain for HTTPS. Default none.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS. Default none.
    pub tls_key: Option<PathBuf>,
    /// A signed-in person idle this long is signed out. Default 1800000 ms (30 minutes).
    pub session_idle_ms: u64,
    /// Failed sign-ins in a row that lock an account. Default 5.
    pub lockout_failures: u32,
    /// How long a locked account stays locked. Default 900000 ms (15 minutes).
    pub lockout_ms: u64,
    /// A notification not acknowledged this long after it arrived is overdue. Default 86400000
    /// ms (a day).
    pub overdue_after_ms: u64,
}

impl Default for PagesConfig {
    fn default() -> Self {
        PagesConfig {
            listen: default_api_listen(),
            tls_cert: None,
            tls_key: None,
            session_idle_ms: 30 * 60_000,
            lockout_failures: 5,
            lockout_ms: 15 * 60_000,
            overdue_after_ms: 24 * 3_600_000,
        }
    }
}

impl PagesConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, rule: &str| Err(ConfigError::Invalid { field, rule: rule.into() });
        if !self.listen.ip().is_loopback() && (self.tls_cert.is_none() || self.tls_key.is_none()) {
            return invalid("pages.listen", "an address that is not loopback needs tls_cert and tls_key (HTTPS)");
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return invalid("pages.tls_cert", "tls_cert and tls_key go together");
        }
        if self.session_idle_ms == 0 || self.lockout_ms == 0 || self.overdue_after_ms == 0 || self.lockout_failures == 0
        {
            return invalid(
                "pages",
                "session_idle_ms, lockout_ms, overdue_after_ms and lockout_failures must be above zero",
            );
        }
        Ok(())
    }
}

/// The role a node runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    Hub,
    Authority,
}

impl NodeRole {
    pub fn role(self) -> Role {
        match self {
            NodeRole::Hub => Role::Hub,
            NodeRole::Authority => Role::Authority,
        }
    }
}

fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })
}

/// Makes a relative path relative to `base`.
fn anchor(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() { path.to_path_buf() } else { base.join(path) }
}

impl NodeConfig {
    /// Reads, anchors and validates a TOML config file.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = read(path)?;
        let mut config: NodeConfig = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.data_dir = anchor(base, &config.data_dir);
        config.key_file = config.key_file.map(|p| anchor(base, &p));
        config.directory_file = config.directory_file.map(|p| anchor(base, &p));
        if let Some(webhook) = config.webhook.as_mut() {
            webhook.secret_file = anchor(base, &webhook.secret_file);
            webhook.ca_file = webhook.ca_file.as_ref().map(|p| anchor(base, p));
        }
        if let Some(mesh) = config.mesh.as_mut() {
            mesh.password_file = anchor(base, &mesh.password_file);
            mesh.shared_key_file = anchor(base, &mesh.shared_key_file);
            for file in [&mut mesh.ca_file, &mut mesh.client_cert_file, &mut mesh.client_key_file] {
                *file = file.as_ref().map(|p| anchor(base, p));
            }
        }
        if let Some(pages) = config.pages.as_mut() {
            pages.tls_cert = pages.tls_cert.as_ref().map(|p| anchor(base, p));
            pages.tls_key = pages.tls_key.as_ref().map(|p| anchor(base, p));
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks every rule, naming the field that breaks one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let code =
            OdsCode::parse(&self.code).map_err(|e| ConfigError::Invalid { field: "code", rule: e.to_string() })?;
        if self.role == NodeRole::Authority && !code.is_authority_form() {
            return Err(ConfigError::Invalid {
                field: "code",
                rule: "an authority's code is 3 digits or letter-digit-letter-digit-letter".into(),
            });
        }
        if self.role == NodeRole::Hub && self.listen.is_none() {
            return Err(ConfigError::Invalid {
                field: "listen",
                rule: "a hub must listen for QUIC connections".into(),
            });
        }
        if !self.api_public && !self.api_listen.ip().is_loopback() {
            return Err(ConfigError::Invalid {
                field: "api_listen",
                rule: "must be a loopback address (set api_public = true to override)".into(),
            });
        }
        for code in self.hub_addresses.keys() {
            OdsCode::parse(code)
                .map_err(|e| ConfigError::Invalid { field: "hub_addresses", rule: format!("{code}: {e}") })?;
        }
        match (&self.pages, self.role) {
            (Some(_), NodeRole::Hub) => {
                return Err(ConfigError::Invalid {
                    field: "pages",
                    rule: "only an authority has council pages".into(),
                });
            }
            (Some(pages), NodeRole::Authority) => pages.validate()?,
            (None, _) => {}
        }
        match (&self.webhook, &self.mesh, self.role) {
            (None, None, _) => {}
            (_, _, NodeRole::Hub) => {
                return Err(ConfigError::Invalid {
                    field: "webhook",
                    rule: "only an authority hands on notifications".into(),
                });
            }
            (Some(_), Some(_), _) => {
                return Err(ConfigError::Invalid {
                    field: "mesh",
                    rule: "use either webhook or mesh, not both".into(),
                });
            }
            (Some(webhook), None, _) => webhook.validate()?,
            (None, Some(mesh), _) => mesh.validate()?,
        }
        self.timing.validate()
    }

    /// What the role's state machine needs from this config.
    pub fn role_config(&self) -> RoleConfig {
        match self.role {
            NodeRole::Hub => RoleConfig::Hub(self.timing.hub_config(&self.limits)),
            NodeRole::Authority => RoleConfig::Authority(self.timing.authority_config()),
        }
    }

    pub fn code(&self) -> OdsCode {
        match OdsCode::parse(&self.code) {
            Ok(code) => code,
            // validate() checked it before the config was handed out.
            Err(e) => unreachable!("the code of a validated config does not parse: {e}"),
        }
    }
    pub fn key_path(&self) -> PathBuf {
        self.key_file.clone().unwrap_or_else(|| self.data_dir.join("node.key"))
    }
    pub fn directory_path(&self) -> PathBuf {
        self.directory_file.clone().unwrap_or_else(|| self.data_dir.join("directory.cpis"))
    }
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("node.redb")
    }
    pub fn token_path(&self) -> PathBuf {
        self.data_dir.join("api.token")
    }

    /// The token of `GET /metrics` (for a Prometheus scraper).
    pub fn metrics_token_path(&self) -> PathBuf {
        self.data_dir.join("metrics.token")
    }
    /// Where the node writes the API address it bound.
    pub fn api_addr_path(&self) -> PathBuf {
        self.data_dir.join("api.addr")
    }
    /// The council pages' accounts file.
    pub fn users_path(&self) -> PathBuf {
        self.data_dir.join("users.json")
    }
    /// Where the node writes its council pages' URL.
    pub fn pages_addr_path(&self) -> PathBuf {
        self.data_dir.join("pages.addr")
    }
    /// The council pages' audit log.
    pub fn pages_audit_path(&self) -> PathBuf {
        self.data_dir.join("pages-audit.jsonl")
    }
    /// Where the node writes the QUIC address it bound.
    pub fn quic_addr_path(&self) -> PathBuf {
        self.data_dir.join("quic.addr")
    }

    /// Every rule, and every file the config names (key, directory, certificates, secrets)
    /// read as `run` reads it: what `cpis-node check-config` checks, and `run` before starting.
    pub fn check_files(&self) -> Result<(), ConfigError> {
        self.validate()?;
        read_key(&self.key_path())?;
        check_directory(&self.directory_path())?;
        let pages = self.pages.iter().flat_map(|p| [&p.tls_cert, &p.tls_key]).flatten();
        let webhook = self.webhook.iter().flat_map(|w| [Some(&w.secret_file), w.ca_file.as_ref()]).flatten();
        let mesh = self.mesh.iter().flat_map(|m| {
            [Some(&m.password_file), Some(&m.shared_key_file), m.ca_file.as_ref()]
                .into_iter()
                .chain([m.client_cert_file.as_ref(), m.client_key_file.as_ref()])
        });
        pages.chain(webhook).chain(mesh.flatten()).try_for_each(|f| readable(f))?;
        // The certificates and keys must be usable, not only readable: `run` would fail on them.
        let unusable = |field, e: anyhow::Error| ConfigError::Invalid { field, rule: format!("{e:#}") };
        if let Some(ca) = self.webhook.as_ref().and_then(|w| w.ca_file.as_ref()) {
            crate::web::tls_connector(ca, None).map_err(|e| unusable("webhook.ca_file", e))?;
        }
        if let Some(m) = &self.mesh
            && let Some(ca) = &m.ca_file
        {
            let client = m.client_cert_file.as_deref().zip(m.client_key_file.as_deref());
            crate::web::tls_connector(ca, client).map_err(|e| unusable("mesh.ca_file", e))?;
        }
        Ok(())
    }
}

/// The file can be opened for reading.
fn readable(path: &Path) -> Result<(), ConfigError> {
    std::fs::File::open(path).map(drop).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })
}

/// The directory file decodes and is trustworthy now (roots, signatures, not expired).
fn check_directory(path: &Path) -> Result<(), ConfigError> {
    let signed = read_directory(path)?;
    cpis_protocol::directory::TrustedDirectory::bootstrap(signed, crate::net::now())
        .map(drop)
        .map_err(|e| ConfigError::Directory { path: path.to_path_buf(), problem: e.to_string() })
}

/// A care setting's config: for `cpis lookup` on its own, and for the setting gateway
/// (`cpis-node run --config FILE`, which reads the `[gateway]` table too).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingConfig {
    /// `setting`: marks the file as a care setting's for `cpis-node run`. Default none.
    #[serde(default)]
    pub role: Option<SettingRole>,
    /// The setting's ODS site code in the directory. Required.
    pub code: String,
    /// The setting's secret key. Required.
    pub key_file: PathBuf,
    /// The directory to trust. Required.
    pub directory_file: PathBuf,
    /// Hub addresses to use instead of those in the directory. Default none.
    #[serde(default)]
    pub hub_addresses: BTreeMap<String, SocketAddr>,
    /// How long to wait for each hub before trying the next. Default 5000 ms.
    #[serde(default = "default_hub_timeout_ms")]
    pub hub_timeout_ms: u64,
    /// An authority whose newest head is older than this is shown as unavailable (its plans
    /// are still shown, as of that head). Default 900000 ms (15 minutes).
    #[serde(default = "default_stale_after_ms")]
    pub stale_after_ms: u64,
    /// The setting gateway's own settings. Every field has a default.
    #[serde(default)]
    pub gateway: GatewayConfig,
}

/// The one role a setting's config may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SettingRole {
    Setting,
}

/// The setting gateway: HTTP for clinicians and clinical systems, warm connections to hubs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Folder for the accounts file (`users.json`), the audit log (`audit.jsonl`) and the bound
    /// address (`http.addr`). Default `gateway`, beside the config file.
    pub data_dir: PathBuf,
    /// HTTP address to listen on. Default `127.0.0.1:0` (a free port, written to
    /// `<data_dir>/http.addr`). Any address that is not loopback needs `tls_cert` and `tls_key`.
    pub listen: SocketAddr,
    /// PEM certificate chain for HTTPS. Default none (plain HTTP, loopback only).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS. Default none.
    pub tls_key: Option<PathBuf>,
    /// With no answer from a hub after this long, the next hub is asked too. Default 250 ms.
    pub hedge_after_ms: u64,
    /// With no verified answer after this long, the lookup says "could not check". Default 1800
    /// ms, leaving the rest of 2 s for checking and showing the answer.
    pub deadline_ms: u64,
    /// A signed-in person idle this long is signed out. Default 1800000 ms (30 minutes).
    pub session_idle_ms: u64,
    /// Failed sign-ins in a row that lock an account. Default 5.
    pub lockout_failures: u32,
    /// How long a locked account stays locked. Default 900000 ms (15 minutes).
    pub lockout_ms: u64,
    /// `text` (default) or `json` log lines.
    pub log_format: LogFormat,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            data_dir: PathBuf::from("gateway"),
            listen: default_api_listen(),
            tls_cert: None,
            tls_key: None,
            hedge_after_ms: 250,
            deadline_ms: 1_800,
            session_idle_ms: 30 * 60_000,
            lockout_failures: 5,
            lockout_ms: 15 * 60_000,
            log_format: LogFormat::Text,
        }
    }
}

impl GatewayConfig {
    /// Checks every rule, naming the field that breaks one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, rule: &str| Err(ConfigError::Invalid { field, rule: rule.into() });
        if !self.listen.ip().is_loopback() && (self.tls_cert.is_none() || self.tls_key.is_none()) {
            return invalid("gateway.listen", "an address that is not loopback needs tls_cert and tls_key (HTTPS)");
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return invalid("gateway.tls_cert", "tls_cert and tls_key go together");
        }
        if self.hedge_after_ms == 0 || self.deadline_ms == 0 || self.session_idle_ms == 0 || self.lockout_ms == 0 {
            return invalid(
                "gateway",
                "hedge_after_ms, deadline_ms, session_idle_ms and lockout_ms must be above zero",
            );
        }
        if self.lockout_failures == 0 {
            return invalid("gateway.lockout_failures", "must be above zero");
        }
        Ok(())
    }

    pub fn users_path(&self) -> PathBuf {
        self.data_dir.join("users.json")
    }
    pub fn audit_path(&self) -> PathBuf {
        self.data_dir.join("audit.jsonl")
    }
    /// The token of the gateway's `GET /metrics` (for a Prometheus scraper).
    pub fn metrics_token_path(&self) -> PathBuf {
        self.data_dir.join("metrics.token")
    }
    /// Where the gateway writes the HTTP address it bound.
    pub fn http_addr_path(&self) -> PathBuf {
        self.data_dir.join("http.addr")
    }
}

fn default_stale_after_ms() -> u64 {
    cpis_protocol::setting::STALE_AFTER_MS_DEFAULT
}

fn default_hub_timeout_ms() -> u64 {
    5_000
}

impl SettingConfig {
    pub fn load(path: &Path) -> Result<SettingConfig, ConfigError> {
        let text = read(path)?;
        let mut config: SettingConfig = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.key_file = anchor(base, &config.key_file);
        config.directory_file = anchor(base, &config.directory_file);
        config.gateway.data_dir = anchor(base, &config.gateway.data_dir);
        config.gateway.tls_cert = config.gateway.tls_cert.map(|p| anchor(base, &p));
        config.gateway.tls_key = config.gateway.tls_key.map(|p| anchor(base, &p));
        config.gateway.validate()?;
        OdsCode::parse(&config.code).map_err(|e| ConfigError::Invalid { field: "code", rule: e.to_string() })?;
        if config.hub_timeout_ms == 0 {
            return Err(ConfigError::Invalid { field: "hub_timeout_ms", rule: "must be above zero".into() });
        }
        if config.stale_after_ms == 0 {
            return Err(ConfigError::Invalid { field: "stale_after_ms", rule: "must be above zero".into() });
        }
        Ok(config)
    }

    /// The key, the directory and the gateway's certificate read as the gateway reads them.
    pub fn check_files(&self) -> Result<(), ConfigError> {
        read_key(&self.key_file)?;
        check_directory(&self.directory_file)?;
        [&self.gateway.tls_cert, &self.gateway.tls_key].into_iter().flatten().try_for_each(|f| readable(f))
    }
}

/// Reads a secret key file: 64 hex characters, readable only by its owner.
pub fn read_key(path: &Path) -> Result<[u8; 32], ConfigError> {
    let problem = |p: &str| ConfigError::Key { path: path.to_path_buf(), problem: p.to_string() };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| problem(&e.to_string()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(problem("readable by others than its owner: chmod 600 it"));
        }
    }
    let text = std::fs::read_to_string(path).map_err(|e| problem(&e.to_string()))?;
    let bytes = hex::decode(text.trim()).map_err(|_| problem("not a hex-encoded key"))?;
    bytes.try_into().map_err(|_| problem("a key is 32 bytes (64 hex characters)"))
}

/// Writes a secret key file with owner-only permissions; refuses to overwrite one.
pub fn write_key(path: &Path, seed: &[u8; 32]) -> Result<(), ConfigError> {
    write_private(path, hex::encode(seed).as_bytes())
        .map_err(|e| ConfigError::Key { path: path.to_path_buf(), problem: e.to_string() })
}

/// Creates a folder (and its parents) readable only by its owner, or tightens an existing one.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Creates a file readable only by its owner; refuses to overwrite an existing one.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Largest directory file accepted.
pub const DIRECTORY_FILE_BYTES_MAX: u64 = 16 << 20;

/// Reads a directory file (the canonical encoding of a `SignedDirectory`).
pub fn read_directory(path: &Path) -> Result<SignedDirectory, ConfigError> {
    let problem = |p: String| ConfigError::Directory { path: path.to_path_buf(), problem: p };
    let bytes = std::fs::read(path).map_err(|e| problem(e.to_string()))?;
    cpis_protocol::codec::decode(&bytes, DIRECTORY_FILE_BYTES_MAX).map_err(|e| problem(e.to_string()))
}

/// Writes a directory file (replacing any).
pub fn write_directory(path: &Path, directory: &SignedDirectory) -> std::io::Result<()> {
    replace_file(path, &cpis_protocol::codec::encode(directory))
}

/// Replaces `path` whole (owner-only), so that a crash or a power cut leaves the old file or the
/// new one, never a part or neither: written beside it and synced, renamed over it, and the
/// folder synced so that the rename lasts.
pub fn replace_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut fresh = path.as_os_str().to_owned();
    fresh.push(".new");
    let fresh = std::path::PathBuf::from(fresh);
    // One left by a crash as it was written.
    match std::fs::remove_file(&fresh) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    write_private(&fresh, contents)?;
    std::fs::rename(&fresh, path)?;
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(folder)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_replaced_whole_over_one_a_crash_left_half_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.json");
        std::fs::write(dir.path().join("users.json.new"), "half").unwrap();
        replace_file(&path, b"first").unwrap();
        replace_file(&path, b"second").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["users.json"], "nothing beside it");
    }

    fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, text).unwrap();
        NodeConfig::load(&path)
    }

    #[test]
    fn minimal_hub_config_takes_defaults() {
        let c = parse("role = \"hub\"\ncode = \"HUBN\"\ndata_dir = \"data\"\nlisten = \"127.0.0.1:7401\"\n").unwrap();
        assert_eq!(c.timing, Timing::default());
        assert!(c.api_listen.ip().is_loopback());
        assert!(c.data_dir.is_absolute());
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse("role = \"hub\"\ncode = \"HUBN\"\ndata_dir = \"d\"\n").unwrap_err();
        assert!(e.to_string().contains("`listen`"), "{e}");
        let e = parse("role = \"authority\"\ncode = \"HUBN\"\ndata_dir = \"d\"\n").unwrap_err();
        assert!(e.to_string().contains("`code`"), "{e}");
        let e =
            parse("role = \"authority\"\ncode = \"204\"\ndata_dir = \"d\"\napi_listen = \"0.0.0.0:80\"\n").unwrap_err();
        assert!(e.to_string().contains("`api_listen`"), "{e}");
        let e = parse("role = \"authority\"\ncode = \"204\"\ndata_dir = \"d\"\n[timing]\ntick_ms = 0\n").unwrap_err();
        assert!(e.to_string().contains("timing.tick_ms"), "{e}");
        let e = parse("role = \"authority\"\ncode = \"204\"\ndata_dir = \"d\"\nbogus = 1\n").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn https_for_mesh_and_the_webhook_needs_its_ca_and_a_client_certificate_comes_with_its_key() {
        let authority = "role = \"authority\"\ncode = \"204\"\ndata_dir = \"d\"\n";
        let mesh = |extra: &str| {
            let table =
                "[mesh]\nmailbox = \"X26A\"\npassword_file = \"p\"\nshared_key_file = \"k\"\nto_mailbox = \"X26B\"\n";
            parse(&format!("{authority}{table}{extra}"))
        };
        let refused = |r: Result<NodeConfig, ConfigError>| r.map(drop).unwrap_err().to_string();
        assert!(refused(mesh("url = \"https://mesh.example.org\"\n")).contains("mesh.ca_file"));
        let e =
            refused(mesh("url = \"https://mesh.example.org\"\nca_file = \"ca.pem\"\nclient_cert_file = \"c.pem\"\n"));
        assert!(e.contains("client_key_file go together"), "{e}");
        assert!(refused(mesh("url = \"http://127.0.0.1:8700\"\nca_file = \"ca.pem\"\n")).contains("https:// URL only"));
        assert!(refused(mesh("url = \"ftp://mesh\"\n")).contains("mesh.url"));
        let both = "url = \"https://mesh.example.org\"\nca_file = \"ca.pem\"\nclient_cert_file = \"c.pem\"\nclient_key_file = \"c.key\"\n";
        let ok = mesh(both).unwrap().mesh.unwrap();
        assert!(
            ok.ca_file.unwrap().is_absolute() && ok.client_key_file.unwrap().is_absolute(),
            "anchored to the config"
        );
        let webhook = |extra: &str| parse(&format!("{authority}[webhook]\nsecret_file = \"s\"\n{extra}"));
        assert!(refused(webhook("url = \"https://cms.example.org/in\"\n")).contains("webhook.ca_file"));
        assert!(webhook("url = \"https://cms.example.org/in\"\nca_file = \"ca.pem\"\n").is_ok());
    }

    #[test]
    fn example_configs_in_the_repository_are_valid() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let hub = NodeConfig::load(&examples.join("hub.toml")).unwrap();
        assert_eq!((hub.role, hub.timing), (NodeRole::Hub, Timing::default()));
        assert_eq!(NodeConfig::load(&examples.join("authority.toml")).unwrap().role, NodeRole::Authority);
        assert_eq!(SettingConfig::load(&examples.join("setting.toml")).unwrap().code, "RXH01");
        // The configs the Debian package installs as examples.
        let packaged = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/examples");
        assert_eq!(NodeConfig::load(&packaged.join("hub.toml")).unwrap().role, NodeRole::Hub);
        assert_eq!(NodeConfig::load(&packaged.join("authority.toml")).unwrap().role, NodeRole::Authority);
        let gateway = SettingConfig::load(&packaged.join("gateway.toml")).unwrap();
        assert_eq!(gateway.gateway.log_format, LogFormat::Json);
    }

    #[test]
    fn key_files_are_owner_only_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_key(&path, &[7; 32]).unwrap();
        assert_eq!(read_key(&path).unwrap(), [7; 32]);
        assert!(write_key(&path, &[8; 32]).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(read_key(&path).unwrap_err().to_string().contains("chmod 600"));
        }
    }
}
