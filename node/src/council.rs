//! The council's pages on its authority node: the inbox of notifications (who looked up which of
//! the council's children, where and when) with acknowledgement, the plans with search and
//! changes, a CSV import with per-row results, and an audit log of who did what. Server-rendered
//! with maud and styled with the vendored GOV.UK frontend, no JavaScript; sessions, CSRF and
//! lockout are [`crate::web`]'s.
//!
//! The pages go through the same functions as the JSON API (docs/api.md): the same commands to
//! the event loop, replied once durable, and the same reads of the store.
//!
//! Roles: a social worker reads the inbox and plans and acknowledges; a team manager also records,
//! ends and withdraws plans and imports; an administrator also reads the audit log. People are
//! managed with `cpis council add-user` (the accounts file is `<data_dir>/users.json`).

// A handler's early exit is an HTTP response; boxing it would only hide that.
#![allow(clippy::result_large_err)]

use crate::api::{self, ApiState, InboxQuery, PlanBody, text, timestamp_of};
use crate::import::ImportReport;
use crate::web::{self, CsrfForm, Door, Session, SignInForm, constant_time_eq};
use axum::Router;
use axum::extract::{DefaultBodyLimit, Form, Multipart, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use cpis_protocol::authority::Change;
use cpis_protocol::ids::{LookupId, NhsNumber, PlanRef};
use cpis_protocol::machine::{Command, Reply};
use cpis_protocol::records::Plan;
use cpis_protocol::time::Date;
use maud::{DOCTYPE, Markup, html};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

const SERVICE_NAME: &str = "Child protection notifications";
/// Most rows of a list shown on one page.
const PAGE_ROWS_MAX: usize = 200;
/// Largest CSV file the import page takes.
const IMPORT_BYTES_MAX: usize = 64 << 20;
/// Largest body any other page takes (its forms are a few fields).
const FORM_BYTES_MAX: usize = 64 << 10;
/// The audit page reads the log's last this many bytes (well over [`PAGE_ROWS_MAX`] lines).
const AUDIT_TAIL_BYTES: u64 = 1 << 20;

/// What every council page shares.
pub struct Council {
    api: ApiState,
    door: Door,
    name: String,
    overdue_after_ms: u64,
    actions: Mutex<std::fs::File>,
    actions_path: PathBuf,
}

/// One thing a person did, as the audit log keeps it.
#[derive(Serialize, Deserialize)]
struct Action {
    at: String,
    user: String,
    name: String,
    action: String,
    detail: String,
}

impl Council {
    /// The pages of an authority node: `users_path` is its accounts file, `actions_path` its
    /// audit log (appended, owner-only).
    pub fn new(
        api: ApiState,
        door: Door,
        name: String,
        overdue_after_ms: u64,
        actions_path: &std::path::Path,
    ) -> std::io::Result<Council> {
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let actions = Mutex::new(options.open(actions_path)?);
        let actions_path = actions_path.to_path_buf();
        Ok(Council { api, door, name, overdue_after_ms, actions, actions_path })
    }

    /// Appends to the audit log and syncs it (actions are rare: a sync each is cheap). If it
    /// cannot, the failure is counted and logged, and the answer is what to tell the person: what
    /// they did stands.
    fn record(&self, session: &Session, action: &str, detail: String) -> Result<(), String> {
        let entry = Action {
            at: crate::net::now().to_string(),
            user: session.user.clone(),
            name: session.name.clone(),
            action: action.into(),
            detail,
        };
        let mut file = self.actions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let written = serde_json::to_string(&entry)
            .map_err(std::io::Error::other)
            .and_then(|line| writeln!(file, "{line}"))
            .and_then(|()| file.sync_data());
        tracing::info!(user = %session.user, action, "council page action");
        written.map_err(|e| {
            tracing::error!(reason = %e, "an action could not be written to the council's audit log");
            self.api.metrics.council_audit_failed();
            format!(
                "This was done, but the council's audit log could not record it ({e}): \
                 tell your IT team, who will find it in the node's log"
            )
        })
    }

    /// The newest entries of the audit log, newest first (read from its last
    /// [`AUDIT_TAIL_BYTES`]: the log grows for as long as the council uses its pages).
    fn recent_actions(&self) -> Vec<Action> {
        let mut text = Vec::new();
        if let Ok(mut file) = std::fs::File::open(&self.actions_path) {
            let len = file.metadata().map_or(0, |m| m.len());
            let from = len.saturating_sub(AUDIT_TAIL_BYTES);
            let _ = file.seek(SeekFrom::Start(from)).and_then(|_| file.take(AUDIT_TAIL_BYTES).read_to_end(&mut text));
        }
        let text = String::from_utf8_lossy(&text);
        // The first line read may be the end of a longer one: it does not parse, and is skipped.
        let mut entries: Vec<Action> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        entries.reverse();
        entries.truncate(PAGE_ROWS_MAX);
        entries
    }
}

/// The pages' routes (mounted on their own listener).
pub fn router(council: Arc<Council>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/inbox") }))
        .route("/sign-in", get(sign_in_page).post(sign_in))
        .route("/sign-out", post(sign_out))
        .route("/inbox", get(inbox))
        .route("/inbox/{lookup_id}", get(notification))
        .route("/inbox/{lookup_id}/ack", post(acknowledge))
        .route("/plans", get(plans).post(add_plan))
        .route("/plans/{reference}/end", post(end_plan))
        .route("/plans/{reference}/withdraw", post(withdraw_plan))
        .route("/import/jobs/{id}", get(import_job))
        .route("/import/jobs/{id}/results.csv", get(import_results_csv))
        .route("/audit", get(audit))
        .route("/assets/{*file}", get(asset))
        .route_layer(axum::middleware::from_fn(web::request_deadline))
        // Added after the layer above: an upload has a deadline of its own.
        .route(
            "/import",
            get(import_page)
                .post(import)
                .layer(DefaultBodyLimit::max(IMPORT_BYTES_MAX))
                .layer(axum::middleware::from_fn(web::upload_deadline)),
        )
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(FORM_BYTES_MAX))
        .layer(axum::middleware::from_fn(web::security_headers))
        .layer(axum::middleware::from_fn_with_state(council.api.metrics.clone(), api::count_requests))
        .with_state(council)
}

fn page(status: StatusCode, markup: Markup) -> Response {
    (status, markup).into_response()
}

/// Counts shown on every page: unacknowledged, and of those overdue.
fn counts(council: &Council) -> (usize, usize) {
    let items = api::read_inbox(&council.api).unwrap_or_default();
    let now = crate::net::now();
    let open: Vec<&Value> = items.iter().filter(|i| i["acknowledged"].is_null()).collect();
    let overdue = open
        .iter()
        .filter(|i| {
            i["received_at"].as_str().and_then(timestamp_of).is_some_and(|t| now.since(t) > council.overdue_after_ms)
        })
        .count();
    (open.len(), overdue)
}

fn layout(council: &Council, title: &str, session: Option<&Session>, content: Markup) -> Markup {
    layout_with(council, title, session, content, false)
}

/// The page around every page's content; `refresh` reloads it every second (a running import).
fn layout_with(council: &Council, title: &str, session: Option<&Session>, content: Markup, refresh: bool) -> Markup {
    let counts = session.map(|_| counts(council));
    html! {
        (DOCTYPE)
        html lang="en" class="govuk-template" {
            head {
                meta charset="utf-8";
                title { (title) " – " (SERVICE_NAME) " – " (council.name) }
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if refresh { meta http-equiv="refresh" content="1"; }
                link rel="icon" href="/assets/images/favicon.ico" sizes="48x48";
                link rel="stylesheet" href="/assets/govuk-frontend.min.css";
            }
            body class="govuk-template__body" {
                a href="#main-content" class="govuk-skip-link" { "Skip to main content" }
                section class="govuk-service-navigation" aria-label="Service information" {
                    div class="govuk-width-container" {
                        div class="govuk-service-navigation__container" {
                            span class="govuk-service-navigation__service-name" {
                                a href="/inbox" class="govuk-service-navigation__link" { (SERVICE_NAME) ": " (council.name) }
                            }
                            @if let Some(s) = session {
                                nav aria-label="Menu" class="govuk-service-navigation__wrapper" {
                                    ul class="govuk-service-navigation__list" {
                                        li class="govuk-service-navigation__item" { a class="govuk-service-navigation__link" href="/inbox" { "Inbox" } }
                                        li class="govuk-service-navigation__item" { a class="govuk-service-navigation__link" href="/plans" { "Plans" } }
                                        @if s.role.changes_plans() {
                                            li class="govuk-service-navigation__item" { a class="govuk-service-navigation__link" href="/import" { "Import" } }
                                        }
                                        @if s.role.reads_audit() {
                                            li class="govuk-service-navigation__item" { a class="govuk-service-navigation__link" href="/audit" { "Audit log" } }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                div class="govuk-width-container" {
                    @if let (Some(s), Some((open, overdue))) = (session, counts) {
                        section class="govuk-!-margin-top-4" aria-label="Your account" {
                            p class="govuk-body-s" id="counts" {
                                "Signed in as " strong { (s.name) } " (" (s.role.name()) "). "
                                strong { (open) " not acknowledged" } ", of which " strong { (overdue) " overdue" } "."
                            }
                            form action="/sign-out" method="post" {
                                input type="hidden" name="csrf" value=(s.csrf);
                                button type="submit" class="govuk-button govuk-button--secondary govuk-!-margin-bottom-0" { "Sign out" }
                            }
                        }
                    }
                    main class="govuk-main-wrapper" id="main-content" { (content) }
                }
                footer class="govuk-footer" {
                    div class="govuk-width-container" {
                        p class="govuk-body-s" { (council.name) ": what you do here is recorded with your name." }
                    }
                }
            }
        }
    }
}

/// A warning above a page's content: something that was done, with what went wrong with it.
fn warning(message: &str) -> Markup {
    html! {
        div class="govuk-warning-text" role="alert" {
            span class="govuk-warning-text__icon" aria-hidden="true" { "!" }
            strong class="govuk-warning-text__text" {
                span class="govuk-visually-hidden" { "Warning" } " "
                (message)
            }
        }
    }
}

fn error_summary(errors: &[(&str, String)]) -> Markup {
    html! {
        div class="govuk-error-summary" data-module="govuk-error-summary" autofocus tabindex="-1" {
            div role="alert" {
                h2 class="govuk-error-summary__title" { "There is a problem" }
                div class="govuk-error-summary__body" {
                    ul class="govuk-list govuk-error-summary__list" {
                        @for (field, message) in errors { li { a href=(format!("#{field}")) { (message) } } }
                    }
                }
            }
        }
    }
}

fn forbidden(council: &Council, session: &Session, message: &str) -> Response {
    let content = html! { h1 class="govuk-heading-l" { "You cannot do that" } p class="govuk-body" { (message) } };
    page(StatusCode::FORBIDDEN, layout(council, "You cannot do that", Some(session), content))
}

/// The session of a request, or the response that sends the person to sign in.
fn signed_in(council: &Council, headers: &HeaderMap) -> Result<Session, Response> {
    council.door.session(headers).ok_or_else(|| Redirect::to("/sign-in").into_response())
}

/// The session of a form post whose CSRF token is the session's own.
fn checked(council: &Council, headers: &HeaderMap, csrf: &str) -> Result<Session, Response> {
    let session = signed_in(council, headers)?;
    if constant_time_eq(csrf, &session.csrf) {
        Ok(session)
    } else {
        Err(forbidden(council, &session, "The form had expired. Go back and try again."))
    }
}

fn sign_in_markup(council: &Council, token: &str, user: &str, error: Option<&str>) -> Markup {
    let content = html! {
        @if let Some(e) = error { (error_summary(&[("user", e.to_string())])) }
        h1 class="govuk-heading-l" { "Sign in" }
        form action="/sign-in" method="post" novalidate {
            input type="hidden" name="csrf" value=(token);
            div class="govuk-form-group" {
                label class="govuk-label" for="user" { "User name" }
                input class="govuk-input govuk-!-width-one-half" id="user" name="user" type="text" autocomplete="username" spellcheck="false" value=(user);
            }
            div class="govuk-form-group" {
                label class="govuk-label" for="password" { "Password" }
                input class="govuk-input govuk-!-width-one-half" id="password" name="password" type="password" autocomplete="current-password";
            }
            button type="submit" class="govuk-button" { "Sign in" }
        }
    };
    layout(council, if error.is_some() { "Error: Sign in" } else { "Sign in" }, None, content)
}

async fn sign_in_page(State(council): State<Arc<Council>>) -> Response {
    web::sign_in_form(&council.door, StatusCode::OK, |token| sign_in_markup(&council, token, "", None))
}

async fn sign_in(State(council): State<Arc<Council>>, headers: HeaderMap, Form(form): Form<SignInForm>) -> Response {
    let render = |token: &str, user: &str, error: &str| sign_in_markup(&council, token, user, Some(error));
    web::sign_in(&council.door, &headers, form, "/inbox", render).await
}

async fn sign_out(State(council): State<Arc<Council>>, headers: HeaderMap, Form(form): Form<CsrfForm>) -> Response {
    web::sign_out(&council.door, &headers, &form)
}

async fn inbox(State(council): State<Arc<Council>>, headers: HeaderMap, Query(mut f): Query<InboxQuery>) -> Response {
    let session = match signed_in(&council, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    // The pages show what is not acknowledged unless asked for all; the API shows all.
    if f.show.is_empty() {
        f.show = "open".into();
    }
    f.limit = Some(PAGE_ROWS_MAX);
    let (errors, shown) = match f.checked() {
        Ok(filter) => (vec![], api::filter_inbox(api::read_inbox(&council.api).unwrap_or_default(), &filter, &f).1),
        Err(errors) => (errors, vec![]),
    };
    let shown: Vec<&Value> = shown.iter().collect();
    let content = html! {
        @if !errors.is_empty() { (error_summary(&errors)) }
        h1 class="govuk-heading-l" { "Inbox" }
        p class="govuk-body" { "Each notification is a lookup of one of your children at a care setting, newest first." }
        form method="get" action="/inbox" novalidate class="govuk-!-margin-bottom-6" {
            div class="govuk-form-group" {
                fieldset class="govuk-fieldset" {
                    legend class="govuk-fieldset__legend govuk-fieldset__legend--s" { "Show" }
                    div class="govuk-radios govuk-radios--small govuk-radios--inline" {
                        div class="govuk-radios__item" {
                            input class="govuk-radios__input" id="show-open" name="show" type="radio" value="open" checked[f.show == "open"];
                            label class="govuk-label govuk-radios__label" for="show-open" { "Not acknowledged" }
                        }
                        div class="govuk-radios__item" {
                            input class="govuk-radios__input" id="show-all" name="show" type="radio" value="all" checked[f.show == "all"];
                            label class="govuk-label govuk-radios__label" for="show-all" { "All" }
                        }
                    }
                }
            }
            div class="govuk-form-group" {
                label class="govuk-label" for="nhs" { "Child's NHS number" }
                input class="govuk-input govuk-input--width-10" id="nhs" name="nhs" type="text" inputmode="numeric" value=(f.nhs);
            }
            div class="govuk-form-group" {
                label class="govuk-label" for="setting" { "Care setting (ODS code or part of its name)" }
                input class="govuk-input govuk-input--width-20" id="setting" name="setting" type="text" value=(f.setting);
            }
            div class="govuk-form-group" {
                label class="govuk-label" for="from" { "Looked up from (YYYY-MM-DD)" }
                input class="govuk-input govuk-input--width-10" id="from" name="from" type="text" value=(f.from);
            }
            div class="govuk-form-group" {
                label class="govuk-label" for="to" { "Looked up to (YYYY-MM-DD)" }
                input class="govuk-input govuk-input--width-10" id="to" name="to" type="text" value=(f.to);
            }
            button type="submit" class="govuk-button govuk-button--secondary" { "Filter" }
        }
        @if shown.is_empty() {
            p class="govuk-body" id="empty" { "No notifications match." }
        } @else {
            table class="govuk-table" {
                caption class="govuk-table__caption govuk-table__caption--m" { (shown.len()) " notifications" }
                thead class="govuk-table__head" {
                    tr class="govuk-table__row" {
                        th scope="col" class="govuk-table__header" { "Looked up" }
                        th scope="col" class="govuk-table__header" { "Child" }
                        th scope="col" class="govuk-table__header" { "Where" }
                        th scope="col" class="govuk-table__header" { "Who" }
                        th scope="col" class="govuk-table__header" { "State" }
                    }
                }
                tbody class="govuk-table__body" {
                    @for i in &shown {
                        tr class="govuk-table__row" {
                            td class="govuk-table__cell" { a class="govuk-link" href=(format!("/inbox/{}", text(i, "lookup_id"))) { (text(i, "looked_at")) } }
                            td class="govuk-table__cell" { (text(i, "nhs")) }
                            td class="govuk-table__cell" { (text(&i["setting"], "name")) " (" (text(&i["setting"], "code")) ")" }
                            td class="govuk-table__cell" { (text(&i["person"], "name")) ", " (text(&i["person"], "role")) }
                            td class="govuk-table__cell" {
                                @if i["acknowledged"].is_null() { strong class="govuk-tag govuk-tag--red" { "Not acknowledged" } }
                                @else { strong class="govuk-tag govuk-tag--green" { "Acknowledged" } }
                            }
                        }
                    }
                }
            }
        }
    };
    let status = if errors.is_empty() { StatusCode::OK } else { StatusCode::BAD_REQUEST };
    page(status, layout(&council, "Inbox", Some(&session), content))
}

fn find_notification(council: &Council, id: &str) -> Option<Value> {
    let id = LookupId::from_hex(id)?;
    api::read_notifications(&council.api, Some(&[id])).ok()?.into_iter().next()
}

/// A notification's page; `above` is an error summary or a warning to show first.
fn notification_markup(council: &Council, session: &Session, item: &Value, above: Option<Markup>) -> Markup {
    let row = |key: &str, value: String| {
        html! { div class="govuk-summary-list__row" { dt class="govuk-summary-list__key" { (key) } dd class="govuk-summary-list__value" { (value) } } }
    };
    let setting = &item["setting"];
    let person = &item["person"];
    let matched: Vec<String> =
        item["matched"].as_array().map_or(vec![], |m| m.iter().filter_map(|x| x.as_str().map(String::from)).collect());
    let contact = council_setting_contact(council, &text(setting, "code"));
    let content = html! {
        @if let Some(above) = above { (above) }
        span class="govuk-caption-l" { "Notification" }
        h1 class="govuk-heading-l" { "Child " (text(item, "nhs")) " was looked up" }
        dl class="govuk-summary-list" {
            (row("When", text(item, "looked_at")))
            (row("Who", format!("{} ({}), id {}", text(person, "name"), text(person, "role"), text(person, "id"))))
            (row("Where", format!("{} ({}), {}", text(setting, "name"), text(setting, "code"), text(setting, "type"))))
            (row("Setting's contact", contact))
            (row("Your plans matched", matched.join(", ")))
            (row("Recorded by hub", text(item, "hub")))
            (row("Handed to the case-management system", item["handed_at"].as_str().map_or("Not handed on (no webhook, or not yet)".to_string(), String::from)))
            (row("Received", text(item, "received_at")))
            (row("Lookup", text(item, "lookup_id")))
        }
        @match item["acknowledged"].as_object() {
            Some(ack) => {
                div class="govuk-inset-text" id="acknowledged" {
                    "Acknowledged by " (ack.get("by").and_then(Value::as_str).unwrap_or("")) " at " (ack.get("at").and_then(Value::as_str).unwrap_or(""))
                    @if let Some(note) = ack.get("note").and_then(Value::as_str).filter(|n| !n.is_empty()) { ": " (note) }
                }
            }
            None => {
                form method="post" action=(format!("/inbox/{}/ack", text(item, "lookup_id"))) novalidate {
                    input type="hidden" name="csrf" value=(session.csrf);
                    div class="govuk-form-group" {
                        label class="govuk-label govuk-label--s" for="note" { "Note (what you are doing about it)" }
                        textarea class="govuk-textarea" id="note" name="note" rows="3" {}
                    }
                    button type="submit" class="govuk-button" { "Acknowledge" }
                }
            }
        }
        p class="govuk-body" { a class="govuk-link" href="/inbox" { "Back to the inbox" } }
    };
    layout(council, "Notification", Some(session), content)
}

/// A care setting's phones, from the directory, if it has any.
fn council_setting_contact(council: &Council, code: &str) -> String {
    let dir = council.api.directory();
    let contacts =
        cpis_protocol::ids::OdsCode::parse(code).ok().and_then(|c| dir.member(&c).and_then(|m| m.contacts.clone()));
    contacts.map_or("None in the directory: call the setting's switchboard".into(), |c| {
        format!("{}: {} (out of hours {})", c.name, c.office_phone, c.out_of_hours_phone)
    })
}

async fn notification(State(council): State<Arc<Council>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let session = match signed_in(&council, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match find_notification(&council, &id) {
        Some(item) => page(StatusCode::OK, notification_markup(&council, &session, &item, None)),
        None => not_found(State(council), headers).await,
    }
}

#[derive(Deserialize)]
struct AckForm {
    #[serde(default)]
    note: String,
    #[serde(default)]
    csrf: String,
}

async fn acknowledge(
    State(council): State<Arc<Council>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<AckForm>,
) -> Response {
    let session = match checked(&council, &headers, &form.csrf) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(lookup_id) = LookupId::from_hex(&id) else { return not_found(State(council), headers).await };
    let by = format!("{} ({})", session.name, session.user);
    let command = Command::Acknowledge { lookup_id, by, note: form.note.trim().to_string() };
    match api::ask(&council.api, command).await {
        Ok(Reply::Changed(change)) => {
            // Already acknowledged (by someone else, say): nothing done, nothing to record.
            let recorded = match change {
                Change::Applied => {
                    council.record(&session, "acknowledged", format!("notification {}", lookup_id.to_hex()))
                }
                Change::Unchanged => Ok(()),
            };
            match (recorded, find_notification(&council, &id)) {
                (Ok(()), _) => Redirect::to(&format!("/inbox/{}", lookup_id.to_hex())).into_response(),
                (Err(message), Some(item)) => {
                    let markup = notification_markup(&council, &session, &item, Some(warning(&message)));
                    page(StatusCode::INTERNAL_SERVER_ERROR, markup)
                }
                (Err(_), None) => not_found(State(council), headers).await,
            }
        }
        Ok(Reply::Refused(e)) => match find_notification(&council, &id) {
            Some(item) => {
                let summary = error_summary(&[("note", e.to_string())]);
                page(StatusCode::BAD_REQUEST, notification_markup(&council, &session, &item, Some(summary)))
            }
            None => not_found(State(council), headers).await,
        },
        Ok(_) => page(
            StatusCode::INTERNAL_SERVER_ERROR,
            layout(&council, "Error", Some(&session), html! { p { "An unexpected reply." } }),
        ),
        Err(r) => r,
    }
}

#[derive(Deserialize, Default)]
struct PlanSearch {
    #[serde(default)]
    q: String,
}

fn plan_state(p: &Plan, today: Date) -> (&'static str, &'static str) {
    if p.withdrawn {
        ("Withdrawn", "govuk-tag--grey")
    } else if p.open_on(today) {
        ("Open", "govuk-tag--red")
    } else if p.visible_on(today) {
        ("Ended, still shown", "govuk-tag--yellow")
    } else {
        ("Ended", "govuk-tag--grey")
    }
}

/// Whether every hub holds a plan's latest version, as a tag.
fn spread_tag(spread: Option<&crate::status::Spread>) -> (String, &'static str) {
    let list = |codes: &[cpis_protocol::ids::OdsCode]| codes.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ");
    match spread {
        None => ("Not in the feed".into(), "govuk-tag--grey"),
        Some(s) if s.everywhere() => ("At every hub".into(), "govuk-tag--green"),
        Some(s) if !s.behind.is_empty() => (format!("Not yet at {}", list(&s.behind)), "govuk-tag--yellow"),
        Some(s) => (format!("Not known for {}", list(&s.unknown)), "govuk-tag--grey"),
    }
}

async fn plans_markup(
    council: &Council,
    session: &Session,
    q: &str,
    errors: &[(&str, String)],
    form: Option<&PlanForm>,
) -> Markup {
    let all = api::read_plans(&council.api).unwrap_or_default();
    let query = q.trim();
    let nhs = NhsNumber::parse(query).ok();
    let shown: Vec<&Plan> = if query.is_empty() {
        all.iter().take(PAGE_ROWS_MAX).collect()
    } else {
        all.iter()
            .filter(|p| nhs.is_some_and(|n| p.nhs == n) || p.reference.as_str().eq_ignore_ascii_case(query))
            .take(PAGE_ROWS_MAX)
            .collect()
    };
    let shown_plans: Vec<Plan> = shown.iter().map(|p| (*p).clone()).collect();
    let held = api::plans_held(&council.api, &shown_plans).await;
    let today = crate::net::now().date();
    let value = |f: fn(&PlanForm) -> &String| form.map(|x| f(x).clone()).unwrap_or_default();
    html! {
        @if !errors.is_empty() { (error_summary(errors)) }
        h1 class="govuk-heading-l" { "Plans" }
        form method="get" action="/plans" novalidate {
            div class="govuk-form-group" {
                label class="govuk-label" for="q" { "NHS number or plan reference" }
                input class="govuk-input govuk-input--width-20" id="q" name="q" type="text" value=(q);
            }
            button type="submit" class="govuk-button govuk-button--secondary" { "Search" }
        }
        table class="govuk-table" {
            caption class="govuk-table__caption govuk-table__caption--m" { (shown.len()) " of " (all.len()) " plans" }
            thead class="govuk-table__head" {
                tr class="govuk-table__row" {
                    th scope="col" class="govuk-table__header" { "Reference" }
                    th scope="col" class="govuk-table__header" { "NHS number" }
                    th scope="col" class="govuk-table__header" { "Type" }
                    th scope="col" class="govuk-table__header" { "Start" }
                    th scope="col" class="govuk-table__header" { "End" }
                    th scope="col" class="govuk-table__header" { "State" }
                    th scope="col" class="govuk-table__header" { "Hubs" }
                    @if session.role.changes_plans() { th scope="col" class="govuk-table__header" { "Change" } }
                }
            }
            tbody class="govuk-table__body" {
                @for (i, p) in shown.iter().enumerate() {
                    @let (state, tag) = plan_state(p, today);
                    @let (spread, spread_class) = spread_tag(held.spread(i).as_ref());
                    tr class="govuk-table__row" {
                        td class="govuk-table__cell" { (p.reference) }
                        td class="govuk-table__cell" { (p.nhs.digits()) }
                        td class="govuk-table__cell" { (p.plan_type.short_name()) }
                        td class="govuk-table__cell" { (p.start) }
                        td class="govuk-table__cell" { @if let Some(e) = p.end { (e) } }
                        td class="govuk-table__cell" { strong class=(format!("govuk-tag {tag}")) { (state) } }
                        td class="govuk-table__cell" { strong class=(format!("govuk-tag {spread_class}")) { (spread) } }
                        @if session.role.changes_plans() {
                            td class="govuk-table__cell" {
                                @if !p.withdrawn {
                                    form method="post" action=(format!("/plans/{}/end", path_segment(p.reference.as_str()))) {
                                        input type="hidden" name="csrf" value=(session.csrf);
                                        label class="govuk-label govuk-visually-hidden" for=(format!("end-{}", p.reference)) { "End date for " (p.reference) }
                                        input class="govuk-input govuk-input--width-10" id=(format!("end-{}", p.reference)) name="end" type="text" placeholder="YYYY-MM-DD";
                                        button type="submit" class="govuk-button govuk-button--secondary govuk-!-margin-bottom-1" { "End" }
                                    }
                                    form method="post" action=(format!("/plans/{}/withdraw", path_segment(p.reference.as_str()))) {
                                        input type="hidden" name="csrf" value=(session.csrf);
                                        button type="submit" class="govuk-button govuk-button--warning govuk-!-margin-bottom-0" { "Withdraw (entered in error)" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if session.role.changes_plans() {
            h2 class="govuk-heading-m" { "Record a plan" }
            form method="post" action="/plans" novalidate {
                input type="hidden" name="csrf" value=(session.csrf);
                @for (field, label, hint) in [("reference", "Reference", ""), ("nhs", "Child's NHS number", "for an unborn child, the pregnant woman's"), ("plan_type", "Plan type", "CPP, LAC or UCPP"), ("start", "Start date", "YYYY-MM-DD"), ("end", "End date (if ended)", "YYYY-MM-DD"), ("due", "Expected due date (unborn child's plan only)", "YYYY-MM-DD")] {
                    div class="govuk-form-group" {
                        label class="govuk-label" for=(field) { (label) }
                        @if !hint.is_empty() { div class="govuk-hint" { (hint) } }
                        input class="govuk-input govuk-input--width-20" id=(field) name=(field) type="text" value=(match field {
                            "reference" => value(|f| &f.reference),
                            "nhs" => value(|f| &f.nhs),
                            "plan_type" => value(|f| &f.plan_type),
                            "start" => value(|f| &f.start),
                            "end" => value(|f| &f.end),
                            _ => value(|f| &f.due),
                        });
                    }
                }
                button type="submit" class="govuk-button" { "Record the plan" }
            }
        }
    }
}

async fn plans(State(council): State<Arc<Council>>, headers: HeaderMap, Query(search): Query<PlanSearch>) -> Response {
    let session = match signed_in(&council, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    page(
        StatusCode::OK,
        layout(&council, "Plans", Some(&session), plans_markup(&council, &session, &search.q, &[], None).await),
    )
}

#[derive(Deserialize)]
struct PlanForm {
    #[serde(default)]
    reference: String,
    #[serde(default)]
    nhs: String,
    #[serde(default)]
    plan_type: String,
    #[serde(default)]
    start: String,
    #[serde(default)]
    end: String,
    #[serde(default)]
    due: String,
    #[serde(default)]
    csrf: String,
}

/// A team manager's session, or the response that refuses anyone else.
fn manager(council: &Council, headers: &HeaderMap, csrf: &str) -> Result<Session, Response> {
    let session = checked(council, headers, csrf)?;
    if session.role.changes_plans() {
        Ok(session)
    } else {
        Err(forbidden(council, &session, "Only team managers and administrators can change plans."))
    }
}

/// The field a refusal names (the API's messages start with it), for the error summary's link.
fn field_of(message: &str) -> &'static str {
    ["reference", "nhs", "plan_type", "start", "end", "due"]
        .into_iter()
        .find(|f| message.starts_with(&format!("{f}:")))
        .unwrap_or("reference")
}

/// Asks the node to change a plan and records it: why it was refused, or, if it was done but its
/// audit line could not be written, what to tell the person.
async fn change_result(
    council: &Council,
    session: &Session,
    command: Command,
    what: String,
) -> Result<Option<String>, String> {
    match api::ask(&council.api, command).await {
        Ok(Reply::Changed(Change::Applied)) => Ok(council.record(session, "changed a plan", what).err()),
        Ok(Reply::Changed(Change::Unchanged)) => Ok(None),
        Ok(Reply::Refused(e)) => Err(e.to_string()),
        Ok(_) => Err("an unexpected reply from the node".into()),
        Err(_) => Err("the node is stopping: nothing was changed".into()),
    }
}

async fn add_plan(State(council): State<Arc<Council>>, headers: HeaderMap, Form(form): Form<PlanForm>) -> Response {
    let session = match manager(&council, &headers, &form.csrf) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let opt = |t: &str| Some(t.to_string()).filter(|t| !t.trim().is_empty());
    let body = PlanBody {
        reference: form.reference.clone(),
        nhs: form.nhs.clone(),
        plan_type: form.plan_type.clone(),
        start: form.start.clone(),
        end: opt(&form.end),
        due: opt(&form.due),
    };
    let result = match api::parse_plan(&body) {
        Ok(plan) => {
            let what = format!("recorded plan {}", plan.reference);
            change_result(&council, &session, Command::RecordPlan(plan), what).await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(None) => Redirect::to(&format!("/plans?q={}", path_segment(&form.reference))).into_response(),
        Ok(Some(message)) => not_recorded(&council, &session, &form.reference, &message).await,
        Err(e) => {
            let errors = [(field_of(&e), e.clone())];
            let markup = plans_markup(&council, &session, "", &errors, Some(&form)).await;
            page(StatusCode::BAD_REQUEST, layout(&council, "Error: Plans", Some(&session), markup))
        }
    }
}

#[derive(Deserialize)]
struct EndForm {
    #[serde(default)]
    end: String,
    #[serde(default)]
    csrf: String,
}

async fn end_plan(
    State(council): State<Arc<Council>>,
    headers: HeaderMap,
    Path(reference): Path<String>,
    Form(form): Form<EndForm>,
) -> Response {
    let session = match manager(&council, &headers, &form.csrf) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let parsed = PlanRef::parse(&reference)
        .map_err(|e| format!("reference: {e}"))
        .and_then(|r| Ok((r, Date::parse(form.end.trim()).map_err(|e| format!("end: {e}"))?)));
    let result = match parsed {
        Ok((reference, end)) => {
            let what = format!("ended plan {reference} on {end}");
            change_result(&council, &session, Command::EndPlan { reference, end }, what).await
        }
        Err(e) => Err(e),
    };
    plan_change_answer(&council, &session, &reference, result).await
}

async fn withdraw_plan(
    State(council): State<Arc<Council>>,
    headers: HeaderMap,
    Path(reference): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let session = match manager(&council, &headers, &form.csrf) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let result = match PlanRef::parse(&reference) {
        Ok(r) => {
            let what = format!("withdrew plan {r}");
            change_result(&council, &session, Command::WithdrawPlan(r), what).await
        }
        Err(e) => Err(format!("reference: {e}")),
    };
    plan_change_answer(&council, &session, &reference, result).await
}

async fn plan_change_answer(
    council: &Council,
    session: &Session,
    reference: &str,
    result: Result<Option<String>, String>,
) -> Response {
    match result {
        Ok(None) => Redirect::to(&format!("/plans?q={}", path_segment(reference))).into_response(),
        Ok(Some(message)) => not_recorded(council, session, reference, &message).await,
        Err(e) => {
            let errors = [(field_of(&e), e.clone())];
            let markup = plans_markup(council, session, reference, &errors, None).await;
            page(StatusCode::BAD_REQUEST, layout(council, "Error: Plans", Some(session), markup))
        }
    }
}

/// A plan changed whose audit line could not be written: the plan as it now is, under a warning.
async fn not_recorded(council: &Council, session: &Session, reference: &str, message: &str) -> Response {
    let markup = html! { (warning(message)) (plans_markup(council, session, reference, &[], None).await) };
    page(StatusCode::INTERNAL_SERVER_ERROR, layout(council, "Plans", Some(session), markup))
}

fn import_markup(session: &Session, report: Option<&ImportReport>, error: Option<&str>) -> Markup {
    html! {
        @if let Some(e) = error { (error_summary(&[("file", e.to_string())])) }
        h1 class="govuk-heading-l" { "Import plans" }
        p class="govuk-body" { "Upload your case-management system's export: a CSV file with the columns reference, nhs_number, plan_type, start_date, end_date, due_date, withdrawn. Each row is answered." }
        form method="post" action="/import" enctype="multipart/form-data" novalidate {
            input type="hidden" name="csrf" value=(session.csrf);
            div class="govuk-form-group" {
                label class="govuk-label" for="file" { "CSV file" }
                input class="govuk-file-upload" id="file" name="file" type="file" accept=".csv,text/csv";
            }
            div class="govuk-checkboxes govuk-checkboxes--small govuk-!-margin-bottom-4" {
                div class="govuk-checkboxes__item" {
                    input class="govuk-checkboxes__input" id="dry_run" name="dry_run" type="checkbox" value="yes";
                    label class="govuk-label govuk-checkboxes__label" for="dry_run" { "Dry run: check every row, store nothing" }
                }
            }
            button type="submit" class="govuk-button" { "Import" }
        }
        @if let Some(r) = report {
            h2 class="govuk-heading-m" id="results" {
                @if r.dry_run { "Dry run: nothing was stored. " }
                (r.applied) " applied, " (r.unchanged) " unchanged, " (r.refused) " refused"
            }
            table class="govuk-table" {
                thead class="govuk-table__head" {
                    tr class="govuk-table__row" {
                        th scope="col" class="govuk-table__header" { "Row" }
                        th scope="col" class="govuk-table__header" { "Reference" }
                        th scope="col" class="govuk-table__header" { "Result" }
                        th scope="col" class="govuk-table__header" { "Why refused" }
                    }
                }
                tbody class="govuk-table__body" {
                    @for row in r.rows.iter().take(PAGE_ROWS_MAX * 5) {
                        tr class="govuk-table__row" {
                            td class="govuk-table__cell" { (row.row) }
                            td class="govuk-table__cell" { (row.reference) }
                            td class="govuk-table__cell" { (row.result) }
                            td class="govuk-table__cell" { (row.reason.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
    }
}

async fn import_page(State(council): State<Arc<Council>>, headers: HeaderMap) -> Response {
    let session = match signed_in(&council, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !session.role.changes_plans() {
        return forbidden(&council, &session, "Only team managers and administrators can import plans.");
    }
    page(StatusCode::OK, layout(&council, "Import plans", Some(&session), import_markup(&session, None, None)))
}

async fn import(State(council): State<Arc<Council>>, headers: HeaderMap, multipart: Multipart) -> Response {
    // Who is asking, before the body is read: only a manager's upload is taken in.
    match signed_in(&council, &headers) {
        Ok(session) if !session.role.changes_plans() => {
            return forbidden(&council, &session, "Only team managers and administrators can import plans.");
        }
        Ok(_) => {}
        Err(r) => return r,
    }
    let (csrf, file, dry_run) = import_form(multipart).await;
    let session = match manager(&council, &headers, &csrf) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let refuse = |message: String| {
        let markup = import_markup(&session, None, Some(&message));
        page(StatusCode::BAD_REQUEST, layout(&council, "Error: Import plans", Some(&session), markup))
    };
    let file = match file {
        Ok(file) => file,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return refuse(format!("The file is larger than {} MiB: split it", IMPORT_BYTES_MAX >> 20));
        }
        Err(e) => return refuse(format!("The upload could not be read: {}", e.body_text())),
    };
    if file.is_empty() {
        return refuse("Choose a CSV file to import".into());
    }
    let rows = match crate::import::parse_csv_apart(file).await {
        Ok(rows) => rows,
        Err(e) => return refuse(e.to_string()),
    };
    let recorder = council.clone();
    let (user, who, total) = (session.user.clone(), session.clone(), rows.len());
    // Recorded before any row is sent, so that a node killed part way leaves a line naming who
    // changed the plans it had stored (the line at the end says what came of each row). A line
    // the log cannot take is counted and shown as the end's is; the import stands.
    if !dry_run {
        let _ = council.record(&session, "started importing plans", format!("{total} rows"));
    }
    let started = crate::jobs::start(&council.api, user, rows, dry_run, move |report, stopped| {
        let counts = format!("{} applied, {} unchanged, {} refused", report.applied, report.unchanged, report.refused);
        let what = match stopped {
            None => counts,
            Some(why) => format!("stopped after {} of {total} rows were answered ({why}): {counts}", report.rows.len()),
        };
        recorder.record(&who, "imported plans", what)
    });
    match started {
        Ok(id) => Redirect::to(&format!("/import/jobs/{id}")).into_response(),
        Err(e) => refuse(e),
    }
}

/// The import form's fields: its CSRF token, the file (or why the upload could not be read) and
/// whether it is a dry run. No field is read after one that failed.
async fn import_form(
    mut multipart: Multipart,
) -> (String, Result<Vec<u8>, axum::extract::multipart::MultipartError>, bool) {
    let (mut csrf, mut file, mut dry_run) = (String::new(), Vec::new(), false);
    let read = async {
        while let Some(field) = multipart.next_field().await? {
            match field.name() {
                Some("csrf") => csrf = field.text().await?,
                Some("dry_run") => dry_run = true,
                Some("file") => file = field.bytes().await?.to_vec(),
                _ => {}
            }
        }
        Ok(())
    }
    .await;
    (csrf, read.map(|()| file), dry_run)
}

/// Job `id` if the signed-in person started it.
fn own_job(council: &Council, session: &Session, id: &str) -> Option<crate::jobs::Job> {
    id.parse().ok().and_then(|id| crate::jobs::get(&council.api, id)).filter(|j| j.owner == session.user)
}

async fn import_job(State(council): State<Arc<Council>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let session = match signed_in(&council, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(job) = own_job(&council, &session, &id) else {
        return not_found(State(council), headers).await;
    };
    let running = job.running();
    let crate::jobs::Job { rows_total: total, rows_done: done, report, error, audit, .. } = job;
    let content = html! {
        @if let Some(message) = &audit { (warning(message)) }
        @if running {
            h1 class="govuk-heading-l" { "Importing plans" }
            p class="govuk-body" id="progress-text" { (done) " of " (total) " rows done" }
            progress id="progress" max=(total.max(1)) value=(done) aria-labelledby="progress-text" { (done) " of " (total) }
            p class="govuk-body-s" { "This page refreshes every second until the import ends." }
        } @else {
            (import_markup(&session, report.as_deref(), error.as_deref()))
            @if let (Some(_), Some(sent)) = (&error, report.as_ref().map(|r| r.rows.len())) {
                p class="govuk-body" id="not-sent" {
                    "The results are of the first " (sent) " of " (total) " rows, answered before it stopped; the other "
                    (total - sent) " were not answered (the first of them may have been imported). Import the file again: rows already imported come back unchanged."
                }
            }
            @if report.is_some() {
                p class="govuk-body" { a class="govuk-link" href=(format!("/import/jobs/{id}/results.csv")) download { "Download the results (CSV)" } }
            }
        }
    };
    page(StatusCode::OK, layout_with(&council, "Import plans", Some(&session), content, running))
}

/// The per-row results as CSV: `row,reference,result,reason`.
async fn import_results_csv(
    State(council): State<Arc<Council>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let session = match signed_in(&council, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(report) = own_job(&council, &session, &id).and_then(|j| j.report) else {
        return not_found(State(council), headers).await;
    };
    let mut out = csv::Writer::from_writer(Vec::new());
    let _ = out.write_record(["row", "reference", "result", "reason"]);
    for row in &report.rows {
        let _ =
            out.write_record([&row.row.to_string(), &row.reference, row.result, row.reason.as_deref().unwrap_or("")]);
    }
    let bytes = out.into_inner().unwrap_or_default();
    let disposition = format!("attachment; filename=\"import-{id}-results.csv\"");
    ([(header::CONTENT_TYPE, "text/csv".to_string()), (header::CONTENT_DISPOSITION, disposition)], bytes)
        .into_response()
}

/// Percent-encodes one path segment (a plan reference may hold any printable character).
fn path_segment(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn audit(State(council): State<Arc<Council>>, headers: HeaderMap) -> Response {
    let session = match signed_in(&council, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !session.role.reads_audit() {
        return forbidden(&council, &session, "Only administrators can read the audit log.");
    }
    let entries = council.recent_actions();
    let content = html! {
        h1 class="govuk-heading-l" { "Audit log" }
        p class="govuk-body" { "Who did what on these pages, newest first." }
        table class="govuk-table" {
            thead class="govuk-table__head" {
                tr class="govuk-table__row" {
                    th scope="col" class="govuk-table__header" { "When" }
                    th scope="col" class="govuk-table__header" { "Who" }
                    th scope="col" class="govuk-table__header" { "What" }
                }
            }
            tbody class="govuk-table__body" {
                @for e in &entries {
                    tr class="govuk-table__row" {
                        td class="govuk-table__cell" { (e.at) }
                        td class="govuk-table__cell" { (e.name) " (" (e.user) ")" }
                        td class="govuk-table__cell" { (e.action) ": " (e.detail) }
                    }
                }
            }
        }
    };
    page(StatusCode::OK, layout(&council, "Audit log", Some(&session), content))
}

/// The vendored GOV.UK frontend files.
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("govuk-frontend.min.css", "text/css", include_bytes!("../assets/govuk/govuk-frontend.min.css")),
    ("images/favicon.ico", "image/x-icon", include_bytes!("../assets/govuk/images/favicon.ico")),
    ("images/govuk-crest.svg", "image/svg+xml", include_bytes!("../assets/govuk/images/govuk-crest.svg")),
];

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, bytes)) => {
            let headers = [(header::CONTENT_TYPE, *content_type), (header::CACHE_CONTROL, "public, max-age=86400")];
            (headers, *bytes).into_response()
        }
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}

async fn not_found(State(council): State<Arc<Council>>, headers: HeaderMap) -> Response {
    let session = council.door.session(&headers);
    let content = html! { h1 class="govuk-heading-l" { "Page not found" } p class="govuk-body" { a class="govuk-link" href="/inbox" { "Go to the inbox" } } };
    page(StatusCode::NOT_FOUND, layout(&council, "Page not found", session.as_ref(), content))
}
