//! What a node's web pages share, whichever door they are (a setting gateway's for clinicians, a
//! council's for social workers): people signing in from the accounts file ([`crate::accounts`]),
//! sessions, CSRF tokens, lockout, security headers, and serving plain HTTP on loopback or HTTPS
//! elsewhere.
//!
//! Sessions live in memory (a restart signs everyone out): an unguessable token in an
//! `HttpOnly`, `SameSite=Strict` cookie (`Secure` over HTTPS), with a CSRF token per session that
//! every form carries. The sign-in form has its own double-submit token. After `lockout_failures`
//! failed sign-ins in a row an account is locked for `lockout_ms`, whether it exists or not.

use crate::accounts::{AccountRole, Accounts, User};
use crate::logs::{self, throttled};
use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use maud::Markup;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;
use tracing::{error, warn};

/// Most signed-in sessions held at once (the oldest goes first).
const SESSIONS_MAX: usize = 10_000;
/// Most names that are no account whose failed sign-ins are counted at once (an account's are
/// always counted: there are at most `ACCOUNTS_MAX`).
const FAILURES_MAX: usize = 10_000;
/// Passwords checked at once: each argon2id check holds 19 MiB and most of a core.
const PASSWORD_CHECKS_MAX: usize = 2;
/// Longest a session lasts, however busy (a long shift); its cookie lasts as long.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
pub const SESSION_COOKIE: &str = "cpis_session";
pub const SIGN_IN_COOKIE: &str = "cpis_sign_in";

/// One signed-in person.
#[derive(Clone)]
pub struct Session {
    pub user: String,
    pub name: String,
    pub job: String,
    pub role: AccountRole,
    pub csrf: String,
    /// The account's password hash at sign-in: a new password ends the session.
    password: String,
    started: Instant,
    last_seen: Instant,
}

/// How long sessions last and when accounts lock.
#[derive(Clone, Copy, Debug)]
pub struct SessionRules {
    pub idle_ms: u64,
    pub lockout_failures: u32,
    pub lockout_ms: u64,
}

#[derive(Default)]
struct Sessions {
    by_token: HashMap<String, Session>,
    /// Failed sign-ins of each account.
    failures: HashMap<String, Failures>,
    /// Failed sign-ins of names that are no account, counted alike (so that the answers do not
    /// tell which names are accounts), apart, so that they cannot crowd out an account's count.
    unknown: HashMap<String, Failures>,
}

/// Failed sign-ins in a row of one name, and its lock; `password` is the account's password hash
/// when they were counted (a new password, set by an administrator, unlocks the account).
#[derive(Default)]
struct Failures {
    count: u32,
    locked_until: Option<Instant>,
    password: String,
}

/// One web door: its accounts file, the roles it lets in, and its sessions.
pub struct Door {
    users_path: PathBuf,
    roles: &'static [AccountRole],
    rules: SessionRules,
    https: bool,
    accounts: Mutex<(Option<FileStamp>, Arc<Accounts>)>,
    sessions: Mutex<Sessions>,
    password_checks: Arc<tokio::sync::Semaphore>,
}

/// When and as what the accounts file was last written (it is replaced whole, so a new one is a
/// new inode even within one tick of the clock).
type FileStamp = (SystemTime, u64, u64);

/// Why a sign-in was refused, in words for the person.
pub struct SignInRefused(pub String);

/// A sign-in attempt, as the failure table takes it.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    Counted,
    Locked,
}

/// The sign-in form's fields.
#[derive(serde::Deserialize)]
pub struct SignInForm {
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub password: String,
    #[serde(default)]
    pub csrf: String,
}

/// A form that carries nothing but its CSRF token (sign out, say).
#[derive(serde::Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

pub fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// The value of cookie `name`, if the request carries it.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Equality whose time does not depend on where two tokens differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Door {
    pub fn new(users_path: PathBuf, roles: &'static [AccountRole], rules: SessionRules, https: bool) -> Door {
        Door {
            users_path,
            roles,
            rules,
            https,
            accounts: Mutex::new((None, Arc::new(Accounts::default()))),
            sessions: Mutex::new(Sessions::default()),
            password_checks: Arc::new(tokio::sync::Semaphore::new(PASSWORD_CHECKS_MAX)),
        }
    }

    /// The accounts file as it is now (read again whenever it changed on disk).
    pub fn accounts(&self) -> Arc<Accounts> {
        use std::os::unix::fs::MetadataExt;
        let stamp = |m: std::fs::Metadata| Some((m.modified().ok()?, m.ino(), m.len()));
        let modified = std::fs::metadata(&self.users_path).ok().and_then(stamp);
        let mut held = lock(&self.accounts);
        if held.0 != modified {
            // A file that cannot be read is tried again only once it changes.
            held.0 = modified;
            match Accounts::load(&self.users_path) {
                Ok(accounts) => held.1 = Arc::new(accounts),
                Err(e) => warn!(reason = %e, "the accounts file cannot be read: keeping the accounts last read"),
            }
        }
        held.1.clone()
    }

    /// A `Set-Cookie` value for this door.
    pub fn set_cookie(&self, name: &str, value: &str, max_age_s: u64) -> HeaderValue {
        let secure = if self.https { "; Secure" } else { "" };
        let text = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}");
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The `Set-Cookie` value that starts a session, for a token from [`Door::sign_in`]. It
    /// lasts as long as a session may (the door ends an idle one sooner).
    pub fn session_cookie(&self, token: &str) -> HeaderValue {
        self.set_cookie(SESSION_COOKIE, token, SESSION_LIFETIME.as_secs())
    }

    /// The signed-in session of this request, if any (touching it keeps it alive). A session
    /// ends when it has been idle too long, at [`SESSION_LIFETIME`], and as soon as its account
    /// is changed in the accounts file (disabled, given another role, name, job or password, or
    /// removed): the person signs in again as the account now is.
    pub fn session(&self, headers: &HeaderMap) -> Option<Session> {
        let token = cookie(headers, SESSION_COOKIE)?;
        if !lock(&self.sessions).by_token.contains_key(token) {
            return None;
        }
        let accounts = self.accounts();
        let idle = Duration::from_millis(self.rules.idle_ms);
        let mut sessions = lock(&self.sessions);
        let session = sessions.by_token.get_mut(token)?;
        let unchanged = accounts.users.iter().find(|u| u.user == session.user).is_some_and(|u| {
            !u.disabled
                && self.roles.contains(&u.role)
                && (u.role, &u.name, &u.job, &u.password)
                    == (session.role, &session.name, &session.job, &session.password)
        });
        if session.last_seen.elapsed() > idle || session.started.elapsed() > SESSION_LIFETIME || !unchanged {
            sessions.by_token.remove(token);
            return None;
        }
        session.last_seen = Instant::now();
        Some(session.clone())
    }

    /// Checks a sign-in form (its double-submit token, the lockout, the password, the role) and
    /// starts a session: its token, for [`Door::session_cookie`].
    pub async fn sign_in(
        &self,
        headers: &HeaderMap,
        user: &str,
        password: String,
        csrf: &str,
    ) -> Result<(String, User), SignInRefused> {
        if !cookie(headers, SIGN_IN_COOKIE).is_some_and(|c| constant_time_eq(c, csrf)) {
            return Err(SignInRefused("The sign-in form had expired: enter your user name and password again".into()));
        }
        let accounts = self.accounts();
        // Logged only if it is an account's name: a password typed into the wrong field is not.
        let named = if accounts.has_user(user) { user } else { "(not an account)" };
        // Counted as a failure once its turn to be checked has come (and forgiven if the
        // password is right): attempts made at once cannot outrun the lockout, and each one
        // counted costs a whole check. The check holds its turn until it is done, even if the
        // request is given up meanwhile (its deadline passed, its connection closed).
        let Ok(turn) = self.password_checks.clone().acquire_owned().await else {
            return Err(SignInRefused("The user name or password is not right".into()));
        };
        if self.attempt(user, &accounts) == Attempt::Locked {
            throttled!(logs::SIGN_IN_REFUSED, warn!(user = named, "sign-in refused: the account is locked"));
            let minutes = self.rules.lockout_ms.div_ceil(60_000);
            return Err(SignInRefused(format!(
                "This account is locked after repeated failed sign-ins. Try again in up to {minutes} minutes, or ask your administrator to set a new password"
            )));
        }
        let name = user.to_string();
        let check = move || {
            let _turn = turn;
            accounts.sign_in(&name, &password).cloned()
        };
        let found = tokio::task::spawn_blocking(check).await.ok().flatten();
        let Some(found) = found.filter(|u| self.roles.contains(&u.role)) else {
            throttled!(logs::SIGN_IN_REFUSED, warn!(user = named, "sign-in refused: wrong user name or password"));
            return Err(SignInRefused("The user name or password is not right".into()));
        };
        tracing::info!(user = %found.user, role = found.role.name(), "signed in");
        Ok((self.start_session(&found), found))
    }

    /// Ends the session of this request if the form's CSRF token is its own.
    pub fn sign_out(&self, headers: &HeaderMap, csrf: &str) -> Option<Session> {
        let session = self.session(headers).filter(|s| constant_time_eq(csrf, &s.csrf))?;
        let token = cookie(headers, SESSION_COOKIE)?;
        lock(&self.sessions).by_token.remove(token);
        tracing::info!(user = %session.user, "signed out");
        Some(session)
    }

    /// Counts a sign-in attempt for `user` as failed until its password proves right; locks the
    /// name at the configured number, whether it is an account or not. An account's count is
    /// always kept (until it signs in, its lock runs out, or it is given a new password). Names
    /// that are no account are counted in a table of their own: when it is full, the counts not
    /// locked now are dropped, and if every one is a lock in force, all are.
    fn attempt(&self, user: &str, accounts: &Accounts) -> Attempt {
        let now = Instant::now();
        let mut sessions = lock(&self.sessions);
        let account = accounts.users.iter().find(|u| u.user == user);
        let table = if account.is_some() { &mut sessions.failures } else { &mut sessions.unknown };
        if account.is_none() && table.len() >= FAILURES_MAX && !table.contains_key(user) {
            table.retain(|_, f| f.locked_until.is_some_and(|until| now < until));
            if table.len() >= FAILURES_MAX {
                table.clear();
            }
        }
        let password = account.map_or("", |u| u.password.as_str());
        let entry = table.entry(user.to_string()).or_default();
        if entry.password != password {
            *entry = Failures { password: password.to_string(), ..Failures::default() };
        }
        match entry.locked_until {
            Some(until) if now < until => return Attempt::Locked,
            Some(_) => *entry = Failures { password: password.to_string(), ..Failures::default() },
            None => {}
        }
        entry.count += 1;
        if entry.count >= self.rules.lockout_failures {
            entry.locked_until = Some(now + Duration::from_millis(self.rules.lockout_ms));
        }
        Attempt::Counted
    }

    fn start_session(&self, user: &User) -> String {
        let token = random_token();
        let mut sessions = lock(&self.sessions);
        sessions.failures.remove(&user.user);
        if sessions.by_token.len() >= SESSIONS_MAX {
            let oldest = sessions.by_token.iter().min_by_key(|(_, s)| s.last_seen).map(|(t, _)| t.clone());
            if let Some(t) = oldest {
                sessions.by_token.remove(&t);
            }
        }
        let session = Session {
            user: user.user.clone(),
            name: user.name.clone(),
            job: user.job.clone(),
            role: user.role,
            csrf: random_token(),
            password: user.password.clone(),
            started: Instant::now(),
            last_seen: Instant::now(),
        };
        sessions.by_token.insert(token.clone(), session);
        token
    }
}

/// The sign-in page with a fresh double-submit token; `render(token)` makes its markup.
pub fn sign_in_form(door: &Door, status: StatusCode, render: impl FnOnce(&str) -> Markup) -> Response {
    let token = random_token();
    let mut response = (status, render(&token)).into_response();
    response.headers_mut().append(header::SET_COOKIE, door.set_cookie(SIGN_IN_COOKIE, &token, 3600));
    response
}

/// `POST /sign-in`: a redirect to `home` with the session's cookie, or the form again (401) with
/// why; `render(token, user, error)` makes the form's markup.
pub async fn sign_in(
    door: &Door,
    headers: &HeaderMap,
    form: SignInForm,
    home: &str,
    render: impl FnOnce(&str, &str, &str) -> Markup,
) -> Response {
    let user: String = form.user.trim().chars().take(64).collect();
    match door.sign_in(headers, &user, form.password, &form.csrf).await {
        Ok((token, _)) => {
            let mut response = Redirect::to(home).into_response();
            response.headers_mut().append(header::SET_COOKIE, door.session_cookie(&token));
            response.headers_mut().append(header::SET_COOKIE, door.set_cookie(SIGN_IN_COOKIE, "", 0));
            response
        }
        Err(SignInRefused(message)) => {
            sign_in_form(door, StatusCode::UNAUTHORIZED, |token| render(token, &user, &message))
        }
    }
}

/// `POST /sign-out`: ends the session if the form is its own (and only then clears its cookie,
/// so that a form from elsewhere changes nothing), and goes back to signing in.
pub fn sign_out(door: &Door, headers: &HeaderMap, form: &CsrfForm) -> Response {
    let mut response = Redirect::to("/sign-in").into_response();
    if door.sign_out(headers, &form.csrf).is_some() {
        response.headers_mut().append(header::SET_COOKIE, door.set_cookie(SESSION_COOKIE, "", 0));
    }
    response
}

/// Headers on every response: no framing, no referrer, only this origin's styles and images,
/// no script, and nothing cached but the vendored assets (pages hold case data).
pub async fn security_headers(request: Request<Body>, next: Next) -> Response {
    let is_asset = request.uri().path().starts_with("/assets/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'none'; object-src 'none'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if !is_asset {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// Longest a request may take from its headers to its answer, its body included (a client that
/// sends a body slowly, or never, must not hold a connection for ever).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(30);
/// [`REQUEST_DEADLINE`] for a route that takes an upload (a council's file of plans, up to
/// 64 MiB over a slow link); only those signed in to it may send one.
pub const UPLOAD_DEADLINE: Duration = Duration::from_secs(600);

/// Answers 408 to a request not answered within [`REQUEST_DEADLINE`] (a route layer).
pub async fn request_deadline(request: Request<Body>, next: Next) -> Response {
    within(REQUEST_DEADLINE, request, next).await
}

/// Answers 408 to an upload not answered within [`UPLOAD_DEADLINE`] (a route layer).
pub async fn upload_deadline(request: Request<Body>, next: Next) -> Response {
    within(UPLOAD_DEADLINE, request, next).await
}

async fn within(deadline: Duration, request: Request<Body>, next: Next) -> Response {
    match tokio::time::timeout(deadline, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (StatusCode::REQUEST_TIMEOUT, "The request was not complete in time: send it again").into_response(),
    }
}

/// A listener bound, with its URL (`http://…` or `https://…`) and what serves it.
pub struct Bound {
    pub listener: tokio::net::TcpListener,
    pub url: String,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Binds `listen`: HTTPS with the certificate and key if given, else plain HTTP.
pub async fn bind(listen: std::net::SocketAddr, tls: (Option<&PathBuf>, Option<&PathBuf>)) -> anyhow::Result<Bound> {
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding the web pages on {listen}"))?;
    let addr = listener.local_addr()?;
    let tls = match tls {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        _ => None,
    };
    let url = format!("{}://{addr}", if tls.is_some() { "https" } else { "http" });
    Ok(Bound { listener, url, tls })
}

/// Serves `app` until `stop` changes.
pub async fn serve(bound: Bound, app: Router, stop: watch::Receiver<bool>) {
    match bound.tls {
        None => serve_plain(bound.listener, app, stop).await,
        Some(acceptor) => serve_tls(bound.listener, acceptor, app, stop).await,
    }
}

async fn serve_plain(listener: tokio::net::TcpListener, app: Router, mut stop: watch::Receiver<bool>) {
    let stopped = async move {
        let _ = stop.changed().await;
    };
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
        error!(reason = %e, "the web server stopped");
    }
}

/// Most HTTPS handshakes in progress at once.
const TLS_HANDSHAKES_MAX: usize = 256;
/// Longest a client may take over its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Most HTTPS connections open at once; one more is closed as soon as it is accepted.
const TLS_CONNECTIONS_MAX: usize = 1_024;
/// Longest a connection may take to send a request's headers, the first or the next (an idle
/// connection is closed after it).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(if cfg!(test) { 1 } else { 30 });

async fn serve_tls(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
    mut stop: watch::Receiver<bool>,
) {
    use hyper_util::rt::TokioIo;
    // Browsers that reached the pages over HTTPS keep to HTTPS for a year.
    let app = app.layer(axum::middleware::map_response(|mut response: Response| async move {
        let hsts = HeaderValue::from_static("max-age=31536000");
        response.headers_mut().insert(header::STRICT_TRANSPORT_SECURITY, hsts);
        response
    }));
    let handshakes = Arc::new(tokio::sync::Semaphore::new(TLS_HANDSHAKES_MAX));
    let connections = Arc::new(tokio::sync::Semaphore::new(TLS_CONNECTIONS_MAX));
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => { warn!(reason = %e, "accepting an HTTPS connection failed"); continue; }
            },
            _ = stop.changed() => return,
        };
        let Ok(open) = connections.clone().try_acquire_owned() else { continue };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else { continue };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let timeout = Duration::from_millis(TLS_HANDSHAKE_TIMEOUT_MS);
            let Ok(Ok(tls)) = tokio::time::timeout(timeout, acceptor.accept(tcp)).await else { return };
            drop(permit);
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service)
                .await;
            drop(open);
        });
    }
}

/// The certificates of a PEM file (a chain, or a set of CAs), at least one.
fn read_certs(path: &Path) -> anyhow::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading the certificate {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("the certificate {} is not PEM", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", path.display());
    Ok(certs)
}

fn read_key(path: &Path) -> anyhow::Result<rustls::pki_types::PrivateKeyDer<'static>> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_file(path).with_context(|| format!("reading the key {}", path.display()))
}

/// The HTTPS server config from a PEM certificate chain and key (ring provider, TLS 1.3, no
/// client certificates: people sign in, systems present tokens).
fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(read_certs(cert)?, read_key(key)?)
        .context("the certificate and key do not fit together")?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))
}

/// An HTTPS client config (ring provider, TLS 1.3 or 1.2): the server's certificate checked
/// against the CAs in `ca` (PEM), and a client certificate chain and key (PEM) presented if
/// given (MESH requires one).
pub fn tls_connector(ca: &Path, client: Option<(&Path, &Path)>) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(ca)? {
        roots.add(cert).with_context(|| format!("a certificate in {} is not a usable CA", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots);
    let mut tls = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
            .context("the client certificate and key do not fit together")?,
    };
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(tls)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A page served over HTTPS (TLS 1.3, a certificate from files) carries HSTS with the other
    /// security headers; over plain HTTP it does not.
    #[tokio::test]
    async fn https_pages_carry_hsts_and_the_security_headers() {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
        let app = || {
            Router::new()
                .route("/", axum::routing::get(|| async { "hello" }))
                .layer(axum::middleware::from_fn(security_headers))
        };
        let loopback = "127.0.0.1:0".parse().unwrap();
        let bound = bind(loopback, (Some(&cert_path), Some(&key_path))).await.unwrap();
        let addr = bound.listener.local_addr().unwrap();
        assert!(bound.url.starts_with("https://"));
        let (stop_tx, stop) = watch::channel(false);
        tokio::spawn(serve(bound, app(), stop.clone()));

        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut response = String::new();
        tls.read_to_string(&mut response).await.unwrap();
        let lower = response.to_ascii_lowercase();
        // A connection that says nothing after its handshake is closed, not held for ever.
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut idle = connector.connect(name, tcp).await.unwrap();
        let mut nothing = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut nothing)).await;
        assert!(closed.is_ok(), "an idle connection is closed after {HEADER_READ_TIMEOUT:?}");
        assert!(lower.starts_with("http/1.1 200"), "{response}");
        assert!(lower.contains("strict-transport-security: max-age=31536000"), "{response}");
        assert!(lower.contains("content-security-policy:") && lower.contains("x-frame-options: deny"), "{response}");

        let plain = bind(loopback, (None, None)).await.unwrap();
        let plain_addr = plain.listener.local_addr().unwrap();
        tokio::spawn(serve(plain, app(), stop));
        let mut tcp = tokio::net::TcpStream::connect(plain_addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut response = String::new();
        tcp.read_to_string(&mut response).await.unwrap();
        assert!(!response.to_ascii_lowercase().contains("strict-transport-security"), "{response}");
        let _ = stop_tx.send(true);
    }

    /// A client that sends a request's headers and never its body is answered 408 at the
    /// deadline and its connection closed: it does not hold one of the connections for ever.
    #[tokio::test]
    async fn a_request_whose_body_never_comes_is_answered_at_the_deadline() {
        let deadline = Duration::from_millis(500);
        let app = Router::new()
            .route("/", axum::routing::post(|body: String| async move { body }))
            .route_layer(axum::middleware::from_fn(move |r, n| within(deadline, r, n)));
        let plain = bind("127.0.0.1:0".parse().unwrap(), (None, None)).await.unwrap();
        let addr = plain.listener.local_addr().unwrap();
        let (_stop_tx, stop) = watch::channel(false);
        tokio::spawn(serve(plain, app, stop));
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\nabc").await.unwrap();
        let mut response = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut response)).await;
        assert!(read.is_ok(), "answered and closed");
        let response = String::from_utf8_lossy(&response);
        assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    }

    fn door(dir: &Path, lockout_failures: u32, lockout_ms: u64) -> Door {
        let rules = SessionRules { idle_ms: 60_000, lockout_failures, lockout_ms };
        Door::new(dir.join("users.toml"), &[AccountRole::Clinician], rules, false)
    }

    /// Wrong passwords sent all at once lock the account after as many checks as the lockout
    /// allows, not one check each: every attempt is counted before its password is checked.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sign_ins_sent_at_once_cannot_outrun_the_lockout_and_the_right_password_still_signs_in() {
        let dir = tempfile::tempdir().unwrap();
        let mut accounts = Accounts::default();
        let password = "correct horse battery";
        accounts.add_user("sam", "Sam Patel", "Staff nurse", AccountRole::Clinician, password).unwrap();
        accounts.save(&dir.path().join("users.toml")).unwrap();
        let door = Arc::new(door(dir.path(), 5, 60_000));
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("cpis_sign_in=t"));

        assert!(door.sign_in(&headers, "sam", password.into(), "t").await.is_ok(), "the right password signs in");
        let attempts = (0..20).map(|_| {
            let (door, headers) = (door.clone(), headers.clone());
            tokio::spawn(async move { door.sign_in(&headers, "sam", "a wrong guess here".into(), "t").await })
        });
        let mut refusals = vec![];
        for attempt in attempts {
            let Err(SignInRefused(why)) = attempt.await.unwrap() else { panic!("a wrong password signed in") };
            refusals.push(why);
        }
        let checked = refusals.iter().filter(|w| w.contains("not right")).count();
        assert_eq!(checked, 5, "five passwords checked, the rest refused as locked: {refusals:?}");
        assert_eq!(refusals.iter().filter(|w| w.contains("locked")).count(), 15);
        let refused = door.sign_in(&headers, "sam", password.into(), "t").await;
        assert!(refused.is_err_and(|SignInRefused(why)| why.contains("locked")), "locked even with the right password");
    }

    /// A session stands while its account does, and ends as soon as the accounts file changes
    /// it: a new password, disabled (another account's change ends nothing).
    #[tokio::test]
    async fn a_session_ends_when_its_account_gets_a_new_password_or_is_disabled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let mut accounts = Accounts::default();
        let (password, other) = ("correct horse battery", "another good password");
        accounts.add_user("sam", "Sam Patel", "Staff nurse", AccountRole::Clinician, password).unwrap();
        accounts.add_user("alex", "Alex Jones", "Doctor", AccountRole::Clinician, password).unwrap();
        accounts.save(&path).unwrap();
        let door = door(dir.path(), 5, 60_000);
        let mut form = HeaderMap::new();
        form.insert(header::COOKIE, HeaderValue::from_static("cpis_sign_in=t"));
        let signed_in = async |password: &str| {
            let (token, _) = door.sign_in(&form, "sam", password.into(), "t").await.ok().expect("signed in");
            let mut headers = HeaderMap::new();
            headers.insert(header::COOKIE, HeaderValue::from_str(&format!("{SESSION_COOKIE}={token}")).unwrap());
            headers
        };
        let change = |f: &dyn Fn(&mut Accounts)| {
            let mut accounts = Accounts::load(&path).unwrap();
            f(&mut accounts);
            accounts.save(&path).unwrap();
        };

        let sam = signed_in(password).await;
        assert!(door.session(&sam).is_some());
        change(&|a| a.set_password("alex", other).unwrap());
        assert!(door.session(&sam).is_some(), "another account's change ends nothing");
        change(&|a| a.set_password("sam", other).unwrap());
        assert!(door.session(&sam).is_none(), "a new password ends the session");
        let sam = signed_in(other).await;
        assert!(door.session(&sam).is_some());
        change(&|a| a.disable("sam").unwrap());
        assert!(door.session(&sam).is_none(), "a disabled account's session ends");
    }

    /// Names that are no account cannot crowd out an account's count: however many are tried,
    /// the account still locks at its number, and a new password unlocks it. When their own
    /// table is full of locks in force, a new name is still counted (the table is emptied).
    #[tokio::test]
    async fn names_that_are_no_account_cannot_crowd_out_an_accounts_count_and_a_new_password_unlocks_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let mut accounts = Accounts::default();
        let (password, other) = ("correct horse battery", "another good password");
        accounts.add_user("victim", "Sam Patel", "Staff nurse", AccountRole::Clinician, password).unwrap();
        accounts.save(&path).unwrap();
        let door = door(dir.path(), 5, 3_600_000);
        let accounts = door.accounts();
        for _ in 0..4 {
            assert_eq!(door.attempt("victim", &accounts), Attempt::Counted);
        }
        for n in 0..2 * FAILURES_MAX {
            door.attempt(&format!("name{n}"), &accounts);
        }
        assert_eq!(lock(&door.sessions).unknown.len(), FAILURES_MAX, "at most the table's size");
        assert_eq!(door.attempt("victim", &accounts), Attempt::Counted, "the fifth failure");
        assert_eq!(
            door.attempt("victim", &accounts),
            Attempt::Locked,
            "locked, the names tried between counting for nothing"
        );

        let mut form = HeaderMap::new();
        form.insert(header::COOKIE, HeaderValue::from_static("cpis_sign_in=t"));
        let refused = door.sign_in(&form, "victim", password.into(), "t").await;
        assert!(refused.is_err_and(|SignInRefused(why)| why.contains("locked")));
        let mut changed = Accounts::load(&path).unwrap();
        changed.set_password("victim", other).unwrap();
        changed.save(&path).unwrap();
        assert!(door.sign_in(&form, "victim", other.into(), "t").await.is_ok(), "a new password unlocks the account");

        let quick = self::door(dir.path(), 1, 3_600_000);
        for n in 0..FAILURES_MAX {
            assert_eq!(quick.attempt(&format!("name{n}"), &accounts), Attempt::Counted, "each locked at once");
        }
        assert_eq!(quick.attempt("name7", &accounts), Attempt::Locked);
        assert_eq!(quick.attempt("one more", &accounts), Attempt::Counted, "a full table of locks is emptied");
        assert_eq!(quick.attempt("name7", &accounts), Attempt::Counted, "and its locks are gone");
    }
}
