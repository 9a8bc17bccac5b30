//! The setting gateway: a care setting's own node (`cpis-node run --config setting.toml`). It
//! holds the setting's key, keeps QUIC connections to its home hubs open, and serves HTTP to the
//! setting's clinicians (a page, [`pages`]) and clinical systems (the CP-IS FHIR R4 API,
//! [`fhir`]). Every lookup goes through [`Gateway::look_up`]: the same verified answer, whoever
//! asks, and one line in the gateway's audit log ([`audit`]) for each.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use cpis_node::config::SettingConfig;
//! use cpis_node::gateway::RunningGateway;
//! let config = SettingConfig::load(std::path::Path::new("setting.toml"))?;
//! let gateway = RunningGateway::start(config).await?;
//! println!("clinicians sign in at {}/", gateway.url());
//! gateway.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Plain HTTP is served on loopback only; any other address needs a certificate and serves
//! HTTPS (rustls, TLS 1.3). Sign-in, sessions and serving are [`crate::web`]'s.

pub mod audit;
pub mod fhir;
mod pages;

use crate::accounts::AccountRole;
use crate::client::{Client, ClientError, LookupOutcome, LookupRequest, Pace};
use crate::config::{self, SettingConfig};
use crate::metrics::GatewayMetrics;
use crate::web::{self, Door, SessionRules};
use anyhow::Context;
use audit::{AuditEntry, AuditLog};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cpis_protocol::ids::{LookupId, NhsNumber};
use cpis_protocol::records::{LookupKind, Person};
use cpis_protocol::time::Timestamp;
use prometheus_client::encoding::prometheus_text;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{error, info};

/// How often the gateway checks that its home hubs' connections are open.
const KEEP_WARM_MS: u64 = 5_000;
/// How long an answer's visit history is served to an `AuditEvent` search without a new lookup.
const HISTORY_REUSE_MS: u64 = 5 * 60_000;
/// Most answers kept for that.
const HISTORY_REUSE_MAX: usize = 256;

/// The current time as a protocol timestamp.
fn now() -> Timestamp {
    crate::net::now()
}

/// Who is looking, and through which door.
#[derive(Clone, Debug)]
pub struct Caller {
    pub person: Person,
    pub via: Via,
    pub trace_id: Option<String>,
}

/// The door a lookup came through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    /// A person signed in at the page.
    Page,
    /// A clinical system, with its bearer token, passing the person in the request.
    Fhir { system: String },
}

/// What every request handler shares.
pub struct Gateway {
    config: SettingConfig,
    client: Arc<Client>,
    door: Door,
    audit: AuditLog,
    recent: Mutex<VecDeque<(Instant, LookupOutcome)>>,
    base_url: String,
    metrics: GatewayMetrics,
    metrics_token: String,
    /// When the gateway started, in seconds since the Unix epoch.
    started_s: f64,
}

impl Gateway {
    fn fhir_base(&self) -> String {
        format!("{}/FHIR/R4", self.base_url)
    }

    fn pace(&self) -> Pace {
        Pace {
            hedge_after: Duration::from_millis(self.config.gateway.hedge_after_ms),
            deadline: Duration::from_millis(self.config.gateway.deadline_ms),
        }
    }

    /// Looks a child up for `caller`. The lookup is in the audit log, on disk, before this
    /// returns: its `asked` line is synced while the hubs are asked; the line with what it came
    /// to follows, synced with the next batch.
    pub async fn look_up(&self, nhs: NhsNumber, caller: Caller) -> Result<LookupOutcome, ClientError> {
        let request = LookupRequest { nhs, person: caller.person.clone() };
        let lookup_id = LookupId(rand::random());
        let kind = self.client.describe().3;
        let began = Instant::now();
        let asked = self.audit_entry(&caller, nhs, kind, audit::ASKED, lookup_id, None);
        let (result, recorded) =
            tokio::join!(self.client.lookup_as(lookup_id, request, self.pace()), self.audit.record(asked));
        self.audit_failed(recorded);
        let (result_name, hub) = match &result {
            Ok(o) => (result_name(o), Some(o.answer.hub.to_string())),
            Err(ClientError::Refused { .. }) => ("refused", None),
            Err(_) => ("could-not-check", None),
        };
        self.metrics.lookup(result_name, caller.via.name(), began.elapsed());
        info!(
            nhs = %nhs.masked(),
            result = result_name,
            via = caller.via.name(),
            trace_id = caller.trace_id.as_deref().unwrap_or(""),
            "lookup"
        );
        let outcome = self.audit_entry(&caller, nhs, kind, result_name, lookup_id, hub);
        self.audit_failed(self.audit.append(outcome).await);
        if let Ok(outcome) = &result {
            let mut recent = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if recent.len() == HISTORY_REUSE_MAX {
                recent.pop_front();
            }
            recent.push_back((Instant::now(), outcome.clone()));
        }
        result
    }

    /// The latest answer for this child from the last few minutes (no new lookup, but audited),
    /// or a new lookup.
    pub async fn history(&self, nhs: NhsNumber, caller: Caller) -> Result<LookupOutcome, ClientError> {
        let reuse = Duration::from_millis(HISTORY_REUSE_MS);
        let cached = {
            let recent = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            recent.iter().rev().find(|(at, o)| at.elapsed() < reuse && o.answer.nhs == nhs).map(|(_, o)| o.clone())
        };
        match cached {
            Some(outcome) => {
                self.metrics.reused(caller.via.name());
                let hub = Some(outcome.answer.hub.to_string());
                let entry = self.audit_entry(&caller, nhs, outcome.kind, "cached", outcome.lookup_id, hub);
                self.audit_failed(self.audit.record(entry).await);
                Ok(outcome)
            }
            None => self.look_up(nhs, caller).await,
        }
    }

    fn audit_entry(
        &self,
        caller: &Caller,
        nhs: NhsNumber,
        kind: LookupKind,
        result: &str,
        lookup_id: LookupId,
        hub: Option<String>,
    ) -> AuditEntry {
        AuditEntry {
            at: now().to_string(),
            via: caller.via.name().into(),
            user_id: caller.person.id.clone(),
            user_name: caller.person.name.clone(),
            job: caller.person.role.clone(),
            system: match &caller.via {
                Via::Fhir { system } => Some(system.clone()),
                Via::Page => None,
            },
            nhs: nhs.digits(),
            kind: kind_name(kind).into(),
            result: result.into(),
            lookup_id: Some(lookup_id.to_hex()),
            hub,
            trace_id: caller.trace_id.clone(),
        }
    }

    /// The answer is shown even if the audit log cannot be written: an alert withheld for a full
    /// disk would be worse. The operator is told.
    fn audit_failed(&self, written: Result<(), String>) {
        if let Err(e) = written {
            self.metrics.audit_failed(1);
            error!(reason = %e, "a lookup could not be written to the audit log");
        }
    }
}

impl Via {
    fn name(&self) -> &'static str {
        match self {
            Via::Page => "page",
            Via::Fhir { .. } => "fhir",
        }
    }
}

pub fn kind_name(kind: LookupKind) -> &'static str {
    match kind {
        LookupKind::Unscheduled => "unscheduled",
        LookupKind::Scheduled => "scheduled",
    }
}

/// `alert`, `no-records` or `could-not-check`: what an answer comes to.
pub fn result_name(o: &LookupOutcome) -> &'static str {
    let a = &o.answer;
    if a.plans().next().is_some() {
        "alert"
    } else if a.no_records() {
        "no-records"
    } else {
        "could-not-check"
    }
}

fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/FHIR/R4/CareTeam", get(fhir::care_team))
        .route("/FHIR/R4/AuditEvent", get(fhir::audit_event))
        .route("/FHIR/R4/metadata", get(fhir::metadata))
        .route("/FHIR/R4/{*rest}", get(fhir::not_found))
        .route("/", get(pages::home))
        .route("/sign-in", get(pages::sign_in_page).post(pages::sign_in))
        .route("/sign-out", post(pages::sign_out))
        .route("/search", post(pages::search))
        .route("/audit", get(pages::audit_page))
        .route("/assets/{*file}", get(pages::asset))
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn(web::request_deadline))
        .fallback(pages::not_found)
        .layer(axum::middleware::from_fn(web::security_headers))
        .with_state(gateway)
}

/// `GET /metrics`: the gateway's counters and its process, for the bearer of `metrics.token`.
async fn metrics(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if !crate::api::bearer_is(&headers, &gateway.metrics_token) {
        tracing::warn!("metrics request refused: missing or wrong bearer token");
        let message = "missing or wrong bearer token (see metrics.token in the gateway's data_dir)";
        return (StatusCode::UNAUTHORIZED, message).into_response();
    }
    let now = now();
    let tokens: Vec<(String, f64)> = gateway
        .door
        .accounts()
        .systems
        .iter()
        .filter(|s| !s.disabled)
        .filter_map(|s| {
            // Accepted to the end of its last day (UTC).
            let end_ms = (i64::from(s.valid_until?.0) + 1) * cpis_protocol::time::DAY_MS as i64;
            Some((s.system.clone(), (end_ms - now.as_millis() as i64) as f64 / 1000.0))
        })
        .collect();
    let text = gateway.metrics.prometheus(gateway.started_s, &tokens);
    ([(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)], text).into_response()
}

/// A gateway running in this process.
pub struct RunningGateway {
    addr: SocketAddr,
    url: String,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    client: Arc<Client>,
}

impl RunningGateway {
    /// Loads the key and directory, binds HTTP(S), starts keeping hub connections open, and
    /// returns once listening.
    pub async fn start(config: SettingConfig) -> anyhow::Result<RunningGateway> {
        config.gateway.validate()?;
        config.check_files()?;
        config::create_private_dir(&config.gateway.data_dir)
            .with_context(|| format!("creating the gateway's folder {}", config.gateway.data_dir.display()))?;
        let client = Arc::new(Client::open(config.clone())?);
        let metrics_token = crate::api::load_or_create_token(&config.gateway.metrics_token_path())?;
        let metrics = GatewayMetrics::default();
        let counted = metrics.clone();
        let audit = AuditLog::open(&config.gateway.audit_path(), move |lines| counted.audit_failed(lines))
            .with_context(|| format!("opening the audit log {}", config.gateway.audit_path().display()))?;
        let g = &config.gateway;
        let bound = web::bind(g.listen, (g.tls_cert.as_ref(), g.tls_key.as_ref())).await?;
        let addr = bound.listener.local_addr()?;
        let url = bound.url.clone();
        std::fs::write(g.http_addr_path(), &url)
            .with_context(|| format!("writing {}", g.http_addr_path().display()))?;
        let rules =
            SessionRules { idle_ms: g.session_idle_ms, lockout_failures: g.lockout_failures, lockout_ms: g.lockout_ms };
        let door = Door::new(g.users_path(), &AccountRole::GATEWAY, rules, url.starts_with("https:"));
        let gateway = Arc::new(Gateway {
            door,
            audit,
            recent: Mutex::new(VecDeque::new()),
            base_url: url.clone(),
            client: client.clone(),
            config,
            metrics,
            metrics_token,
            started_s: now().as_millis() as f64 / 1000.0,
        });
        let users = gateway.door.accounts().users.len();
        let (shutdown, stop) = watch::channel(false);
        let serve = tokio::spawn(web::serve(bound, router(gateway.clone()), stop.clone()));
        let warm = tokio::spawn(keep_warm(client.clone(), stop));
        let (code, name, _, kind) = client.describe();
        info!(%code, %name, %url, kind = kind_name(kind), users, "setting gateway listening");
        Ok(RunningGateway { addr, url, shutdown, tasks: vec![serve, warm], client })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` or `https://…`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops serving and closes the hub connections.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        self.client.close().await;
    }
}

async fn keep_warm(client: Arc<Client>, mut stop: watch::Receiver<bool>) {
    loop {
        client.keep_warm().await;
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(KEEP_WARM_MS)) => {}
            _ = stop.changed() => return,
        }
    }
}
