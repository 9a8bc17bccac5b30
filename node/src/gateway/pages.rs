//! The clinician's page, server-rendered with maud and styled with the vendored NHS.UK frontend
//! (no JavaScript at all): sign in, search by NHS number, the child care alert, councils that
//! could not be checked, the visit history; and the audit page for safeguarding leads and
//! administrators. Sessions, CSRF and lockout are [`crate::web`]'s.

use super::fhir::unavailable_text;
use super::{Caller, Gateway, Via, kind_name};
use crate::client::{ClientError, LookupOutcome};
use crate::web::{self, CsrfForm, Session, SignInForm, constant_time_eq};
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use cpis_protocol::ids::NhsNumber;
use cpis_protocol::records::{Contacts, LookupKind, Person, Plan, PlanType};
use cpis_protocol::setting::{AuthorityView, ShownVisit};
use cpis_protocol::time::Timestamp;
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;
use std::sync::Arc;

const SERVICE_NAME: &str = "Child protection alerts";

const NHS_LOGO_PATH: &str = "M200 0v80H0V0h200Zm-27.5 5.5c-14.5 0-29 5-29 22 0 10.2 7.7 13.5 14.7 16.3l.7.3c5.4 2 10.1 3.9 10.1 8.4 0 6.5-8.5 7.5-14 7.5s-12.5-1.5-16-3.5L135 70c5.5 2 13.5 3.5 20 3.5 15.5 0 32-4.5 32-22.5 0-19.5-25.5-16.5-25.5-25.5 0-5.5 5.5-6.5 12.5-6.5a35 35 0 0 1 14.5 3l4-13.5c-4.5-2-12-3-20-3Zm-131 2h-22l-14 65H22l9-45h.5l13.5 45h21.5l14-65H64l-9 45h-.5l-13-45Zm63 0h-18l-13 65h17l6-28H117l-5.5 28H129l13.5-65H125L119.5 32h-20l5-24.5Z";

/// The page around every page's content.
fn layout(gateway: &Gateway, title: &str, session: Option<&Session>, content: Markup) -> Markup {
    let (code, setting_name, _, _) = gateway.client.describe();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " – " (SERVICE_NAME) " – " (setting_name) }
                meta name="viewport" content="width=device-width, initial-scale=1";
                link rel="icon" href="/assets/images/favicon.ico" sizes="48x48";
                link rel="stylesheet" href="/assets/nhsuk-frontend.min.css";
            }
            body {
                a class="nhsuk-skip-link" href="#maincontent" { "Skip to main content" }
                header class="nhsuk-header" role="banner" {
                    div class="nhsuk-header__container nhsuk-width-container" {
                        div class="nhsuk-header__service" {
                            a class="nhsuk-header__service-logo" href="/" aria-label=(format!("{SERVICE_NAME} homepage")) {
                                svg class="nhsuk-header__logo" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 200 80" height="40" width="100" focusable="false" role="img" aria-label="NHS" {
                                    title { "NHS" }
                                    path fill="currentcolor" d=(NHS_LOGO_PATH) {}
                                }
                            }
                            span class="nhsuk-header__service-name" { (SERVICE_NAME) }
                        }
                        @if let Some(s) = session {
                            nav class="nhsuk-header__account" aria-label="Account" {
                                ul class="nhsuk-header__account-list" {
                                    li class="nhsuk-header__account-item" { (s.name) " (" (s.job) ")" }
                                    @if s.role.reads_audit() {
                                        li class="nhsuk-header__account-item" { a class="nhsuk-header__account-link" href="/audit" { "Audit log" } }
                                    }
                                    li class="nhsuk-header__account-item" {
                                        form class="nhsuk-header__account-form" action="/sign-out" method="post" {
                                            input type="hidden" name="csrf" value=(s.csrf);
                                            button class="nhsuk-header__account-button" type="submit" { "Sign out" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                div class="nhsuk-width-container" {
                    main class="nhsuk-main-wrapper" id="maincontent" { (content) }
                }
                footer role="contentinfo" {
                    div class="nhsuk-footer" {
                        div class="nhsuk-width-container" {
                            p class="nhsuk-body-s" { (setting_name) " (" (code) "). Every lookup is recorded with the name of the person signed in." }
                        }
                    }
                }
            }
        }
    }
}

fn page(status: StatusCode, markup: Markup) -> Response {
    (status, markup).into_response()
}

/// `GET /`: the search form, or the way to sign in.
pub(super) async fn home(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    match gateway.door.session(&headers) {
        Some(s) => page(StatusCode::OK, search_page(&gateway, &s, "", None)),
        None => Redirect::to("/sign-in").into_response(),
    }
}

fn search_form(session: &Session, value: &str, error: Option<&str>) -> Markup {
    let described = if error.is_some() { "nhs-hint nhs-error" } else { "nhs-hint" };
    html! {
        form action="/search" method="post" novalidate {
            input type="hidden" name="csrf" value=(session.csrf);
            div class=(if error.is_some() { "nhsuk-form-group nhsuk-form-group--error" } else { "nhsuk-form-group" }) {
                label class="nhsuk-label nhsuk-label--m" for="nhs" { "NHS number" }
                div class="nhsuk-hint" id="nhs-hint" { "10 digits, for example 943 476 5919. Spaces and dashes are fine." }
                @if let Some(e) = error {
                    span class="nhsuk-error-message" id="nhs-error" { span class="nhsuk-u-visually-hidden" { "Error: " } (e) }
                }
                input class=(if error.is_some() { "nhsuk-input nhsuk-input--width-10 nhsuk-input--error" } else { "nhsuk-input nhsuk-input--width-10" })
                    id="nhs" name="nhs" type="text" inputmode="numeric" spellcheck="false" autocomplete="off"
                    aria-describedby=(described) value=(value);
            }
            button class="nhsuk-button" type="submit" data-module="nhsuk-button" { "Check" }
        }
    }
}

fn search_page(gateway: &Gateway, session: &Session, value: &str, error: Option<&str>) -> Markup {
    let kind = gateway.client.describe().3;
    let content = html! {
        @if let Some(e) = error {
            div class="nhsuk-error-summary" aria-labelledby="error-summary-title" role="alert" tabindex="-1" autofocus {
                h2 class="nhsuk-error-summary__title" id="error-summary-title" { "There is a problem" }
                div class="nhsuk-error-summary__body" {
                    ul class="nhsuk-list nhsuk-error-summary__list" { li { a href="#nhs" { (e) } } }
                }
            }
        }
        h1 class="nhsuk-heading-l" { "Check for a child protection alert" }
        p { "Enter the NHS number of the child (or, for an unborn child, of the pregnant woman)." }
        (search_form(session, value, error))
        p class="nhsuk-body-s" {
            @if kind == LookupKind::Unscheduled {
                "Lookups here are unscheduled: the visit is recorded and a council with a plan for the child is told."
            } @else {
                "Lookups here are scheduled: they are audited, but no council is told and no visit is recorded."
            }
        }
    };
    let title = if error.is_some() {
        "Error: Check for a child protection alert"
    } else {
        "Check for a child protection alert"
    };
    layout(gateway, title, Some(session), content)
}

#[derive(Deserialize)]
pub(super) struct SearchForm {
    #[serde(default)]
    nhs: String,
    #[serde(default)]
    csrf: String,
}

/// `POST /search`: one lookup, shown.
pub(super) async fn search(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    Form(form): Form<SearchForm>,
) -> Response {
    let Some(session) = gateway.door.session(&headers) else { return Redirect::to("/sign-in").into_response() };
    if !constant_time_eq(&form.csrf, &session.csrf) {
        return forbidden(&gateway, Some(&session), "The form had expired. Go back and try again.");
    }
    let typed: String = form.nhs.chars().take(40).collect();
    let nhs = match NhsNumber::parse(&typed) {
        Ok(nhs) => nhs,
        Err(e) => {
            let message = format!("Enter a valid NHS number: {e}");
            return page(StatusCode::BAD_REQUEST, search_page(&gateway, &session, &typed, Some(&message)));
        }
    };
    let person = Person { id: session.user.clone(), name: session.name.clone(), role: session.job.clone() };
    let caller = Caller { person, via: Via::Page, trace_id: None };
    let result = gateway.look_up(nhs, caller).await;
    let content = match &result {
        Ok(outcome) => result_content(outcome, super::now()),
        Err(e) => could_not_check(nhs, e),
    };
    let content = html! {
        (content)
        h2 class="nhsuk-heading-m" { "Check another NHS number" }
        (search_form(&session, "", None))
    };
    page(StatusCode::OK, layout(&gateway, &format!("NHS number {}", nhs.grouped()), Some(&session), content))
}

/// `1 March 2025`, as NHS pages write dates.
fn long_date(date: cpis_protocol::time::Date) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let (y, m, d) = date.ymd();
    let month = MONTHS.get((m as usize).wrapping_sub(1)).copied().unwrap_or("?");
    format!("{d} {month} {y}")
}

/// `29 November 2026 at 22:55 UTC`.
fn long_time(t: Timestamp) -> String {
    let ms_of_day = t.as_millis() % cpis_protocol::time::DAY_MS;
    format!("{} at {:02}:{:02} UTC", long_date(t.date()), ms_of_day / 3_600_000, ms_of_day / 60_000 % 60)
}

fn alert_heading(plan: &Plan) -> &'static str {
    match plan.plan_type {
        PlanType::ChildProtection => "This child has a child protection plan",
        PlanType::LookedAfter => "This child is looked after by a local authority",
        PlanType::UnbornChildProtection => "This unborn child has a child protection plan",
    }
}

fn phones(contacts: &Option<Contacts>) -> Markup {
    html! {
        @match contacts {
            Some(c) => {
                div class="nhsuk-summary-list__row" { dt class="nhsuk-summary-list__key" { "Office hours" } dd class="nhsuk-summary-list__value" { (c.office_phone) " (" (c.name) ")" } }
                div class="nhsuk-summary-list__row" { dt class="nhsuk-summary-list__key" { "Out of hours" } dd class="nhsuk-summary-list__value" { (c.out_of_hours_phone) " (emergency duty team)" } }
            }
            None => {
                div class="nhsuk-summary-list__row" { dt class="nhsuk-summary-list__key" { "Phone" } dd class="nhsuk-summary-list__value" { "None on record: call the council's switchboard" } }
            }
        }
    }
}

fn plan_card(a: &AuthorityView, plan: &Plan, now: Timestamp) -> Markup {
    let open = plan.open_on(now.date());
    let as_of = match a.as_of() {
        Some(t) if a.checked() => format!("Checked against the council's signed data as of {}", long_time(t)),
        Some(t) => format!("NOT CONFIRMED since {}: see the warning below", long_time(t)),
        None => "Not confirmed".into(),
    };
    let rows = html! {
        dl class="nhsuk-summary-list" {
            div class="nhsuk-summary-list__row" { dt class="nhsuk-summary-list__key" { "Council" } dd class="nhsuk-summary-list__value" { (a.name) " (" (a.code) ")" } }
            div class="nhsuk-summary-list__row" { dt class="nhsuk-summary-list__key" { "Plan" } dd class="nhsuk-summary-list__value" { (plan.plan_type.description()) " (SNOMED CT " (plan.plan_type.snomed_code()) "), reference " (plan.reference) } }
            div class="nhsuk-summary-list__row" { dt class="nhsuk-summary-list__key" { "Started" } dd class="nhsuk-summary-list__value" { (long_date(plan.start)) } }
            div class="nhsuk-summary-list__row" { dt class="nhsuk-summary-list__key" { "Ended" } dd class="nhsuk-summary-list__value" { @if let Some(end) = plan.end { (long_date(end)) } @else { "Open" } } }
            @if let Some(due) = plan.due {
                div class="nhsuk-summary-list__row" { dt class="nhsuk-summary-list__key" { "Baby due" } dd class="nhsuk-summary-list__value" { (long_date(due)) } }
            }
            (phones(&a.contacts))
            div class="nhsuk-summary-list__row" { dt class="nhsuk-summary-list__key" { "Data" } dd class="nhsuk-summary-list__value" { (as_of) } }
        }
    };
    if open {
        html! {
            div class="nhsuk-card nhsuk-card--care nhsuk-card--care--urgent" data-plan="open" {
                div class="nhsuk-card--care__heading-container" {
                    h2 class="nhsuk-card--care__heading" {
                        span role="text" { span class="nhsuk-u-visually-hidden" { "Urgent: " } "Child care alert: " (alert_heading(plan)) }
                    }
                    span class="nhsuk-card--care__arrow" aria-hidden="true" {}
                }
                div class="nhsuk-card__content" {
                    (rows)
                    p { "Follow local safeguarding procedure. Call the council on the numbers above if there is any concern." }
                }
            }
        }
    } else {
        html! {
            div class="nhsuk-card" data-plan="ended" {
                div class="nhsuk-card__content" {
                    h2 class="nhsuk-card__heading" {
                        strong class="nhsuk-tag nhsuk-tag--grey" { "Ended" } " "
                        "Ended plan: " (plan.plan_type.description())
                    }
                    p class="nhsuk-card__description" { "This plan has ended. It is shown for a year after its end." }
                    (rows)
                }
            }
        }
    }
}

fn unavailable_warning(unavailable: &[&AuthorityView]) -> Markup {
    html! {
        div class="nhsuk-card nhsuk-card--warning" id="could-not-check" {
            div class="nhsuk-card__content" {
                h2 class="nhsuk-card__heading" {
                    "Could not check " (unavailable.len()) @if unavailable.len() == 1 { " council" } @else { " councils" }
                }
                p class="nhsuk-card__description" { "Their data could not be confirmed as current. Follow local safeguarding procedure, and call them if there is any concern." }
                ul {
                    @for a in unavailable { li { (unavailable_text(a)) } }
                }
            }
        }
    }
}

fn history_table(history: &[ShownVisit]) -> Markup {
    html! {
        h2 class="nhsuk-heading-m" { "Previous unscheduled visits" }
        @if history.is_empty() {
            p { "No previous unscheduled visits are recorded." }
        } @else {
            table class="nhsuk-table" {
                caption class="nhsuk-table__caption nhsuk-u-visually-hidden" { "Previous unscheduled visits, newest first" }
                thead class="nhsuk-table__head" {
                    tr { th scope="col" { "When" } th scope="col" { "Where" } th scope="col" { "Type" } th scope="col" { "Seen by" } }
                }
                tbody class="nhsuk-table__body" {
                    @for v in history.iter().take(super::fhir::AUDIT_EVENTS_MAX) {
                        tr class="nhsuk-table__row" {
                            td class="nhsuk-table__cell" { (long_time(v.at)) }
                            td class="nhsuk-table__cell" { (v.setting_name) " (" (v.setting) ")" }
                            td class="nhsuk-table__cell" { (v.setting_type.map_or("Care setting", |t| t.description())) }
                            td class="nhsuk-table__cell" { "A " (v.role) }
                        }
                    }
                }
            }
        }
    }
}

fn result_content(outcome: &LookupOutcome, now: Timestamp) -> Markup {
    let answer = &outcome.answer;
    let plans: Vec<(&AuthorityView, &Plan)> = answer.plans().collect();
    let unavailable: Vec<&AuthorityView> = answer.unavailable().collect();
    let mut notified: Vec<&str> =
        plans.iter().filter(|(_, p)| p.visible_on(now.date())).map(|(a, _)| a.name.as_str()).collect();
    notified.dedup();
    html! {
        span class="nhsuk-caption-l" { "NHS number" }
        h1 class="nhsuk-heading-l" { (answer.nhs.grouped()) }
        @for (a, p) in &plans { (plan_card(a, p, now)) }
        @if plans.is_empty() && answer.no_records() {
            div class="nhsuk-inset-text" id="no-records" {
                span class="nhsuk-u-visually-hidden" { "Information: " }
                p { "No records: every council's signed data (" (answer.authorities.len()) " councils) confirms no child protection or looked after child plan for this NHS number." }
            }
        }
        @if !unavailable.is_empty() { (unavailable_warning(&unavailable)) }
        (history_table(&answer.history))
        p class="nhsuk-body-s" {
            @match (outcome.kind, notified.is_empty()) {
                (LookupKind::Unscheduled, false) => { "This visit is recorded and " (notified.join(", ")) " will be told." }
                (LookupKind::Unscheduled, true) if unavailable.is_empty() => { "Nobody is told: no plan was found for this number." }
                (LookupKind::Unscheduled, true) => {
                    "No council is told: none of those checked shows a plan now, and " (unavailable.len())
                    " could not be checked (above)."
                }
                (LookupKind::Scheduled, _) => { "A scheduled lookup: audited, but no council is told and no visit is recorded." }
            }
            " Answered by hub " (answer.hub) " (" (outcome.hub_name) "); " (kind_name(outcome.kind)) " lookup " (outcome.lookup_id.to_hex()) "."
        }
    }
}

fn could_not_check(nhs: NhsNumber, e: &ClientError) -> Markup {
    let why = match e {
        ClientError::Refused { code, .. } => format!("the lookup was refused: {code}"),
        ClientError::AllHubsUnreachable { .. } | ClientError::AnswerUnverified { .. } | ClientError::NoHubs => {
            "no hub of the federation could be reached in time, or none gave an answer that verifies".into()
        }
        other => other.to_string(),
    };
    html! {
        span class="nhsuk-caption-l" { "NHS number" }
        h1 class="nhsuk-heading-l" { (nhs.grouped()) }
        div class="nhsuk-card nhsuk-card--warning" id="could-not-check" {
            div class="nhsuk-card__content" {
                h2 class="nhsuk-card__heading" { "Could not check" }
                p class="nhsuk-card__description" { "Nothing is known about this child from the child protection federation: " (why) "." }
                p { "Follow local safeguarding procedure. Try again in a few minutes." }
            }
        }
    }
}

fn forbidden(gateway: &Gateway, session: Option<&Session>, message: &str) -> Response {
    let content = html! { h1 class="nhsuk-heading-l" { "You cannot do that" } p { (message) } p { a href="/" { "Back to the search" } } };
    page(StatusCode::FORBIDDEN, layout(gateway, "You cannot do that", session, content))
}

fn sign_in_markup(gateway: &Gateway, token: &str, user: &str, error: Option<&str>) -> Markup {
    let content = html! {
        @if let Some(e) = error {
            div class="nhsuk-error-summary" aria-labelledby="error-summary-title" role="alert" tabindex="-1" autofocus {
                h2 class="nhsuk-error-summary__title" id="error-summary-title" { "There is a problem" }
                div class="nhsuk-error-summary__body" { ul class="nhsuk-list nhsuk-error-summary__list" { li { a href="#user" { (e) } } } }
            }
        }
        h1 class="nhsuk-heading-l" { "Sign in" }
        form action="/sign-in" method="post" novalidate {
            input type="hidden" name="csrf" value=(token);
            div class="nhsuk-form-group" {
                label class="nhsuk-label" for="user" { "User name" }
                input class="nhsuk-input nhsuk-u-width-one-half" id="user" name="user" type="text" autocomplete="username" spellcheck="false" value=(user);
            }
            div class="nhsuk-form-group" {
                label class="nhsuk-label" for="password" { "Password" }
                input class="nhsuk-input nhsuk-u-width-one-half" id="password" name="password" type="password" autocomplete="current-password";
            }
            button class="nhsuk-button" type="submit" { "Sign in" }
        }
    };
    layout(gateway, if error.is_some() { "Error: Sign in" } else { "Sign in" }, None, content)
}

/// `GET /sign-in`
pub(super) async fn sign_in_page(State(gateway): State<Arc<Gateway>>) -> Response {
    web::sign_in_form(&gateway.door, StatusCode::OK, |token| sign_in_markup(&gateway, token, "", None))
}

/// `POST /sign-in`
pub(super) async fn sign_in(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Response {
    let render = |token: &str, user: &str, error: &str| sign_in_markup(&gateway, token, user, Some(error));
    web::sign_in(&gateway.door, &headers, form, "/", render).await
}

/// `POST /sign-out`
pub(super) async fn sign_out(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    web::sign_out(&gateway.door, &headers, &form)
}

/// `GET /audit`: the gateway's newest lookups (safeguarding leads and administrators).
pub(super) async fn audit_page(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let Some(session) = gateway.door.session(&headers) else { return Redirect::to("/sign-in").into_response() };
    if !session.role.reads_audit() {
        return forbidden(
            &gateway,
            Some(&session),
            "Only safeguarding leads and administrators can read the audit log.",
        );
    }
    let entries = gateway.audit.recent(200);
    let content = html! {
        h1 class="nhsuk-heading-l" { "Audit log" }
        p { "The newest " (entries.len()) " lookups made through this gateway, newest first." }
        table class="nhsuk-table" {
            caption class="nhsuk-table__caption nhsuk-u-visually-hidden" { "Lookups, newest first" }
            thead class="nhsuk-table__head" {
                tr { th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "How" } th scope="col" { "NHS number" } th scope="col" { "Result" } }
            }
            tbody class="nhsuk-table__body" {
                @for e in &entries {
                    tr class="nhsuk-table__row" {
                        td class="nhsuk-table__cell" { (e.at) }
                        td class="nhsuk-table__cell" { (e.user_name) " (" (e.job) ", " (e.user_id) ")" }
                        td class="nhsuk-table__cell" { @if let Some(s) = &e.system { "system " (s) } @else { "page" } }
                        td class="nhsuk-table__cell" { (e.nhs) }
                        td class="nhsuk-table__cell" { (e.result) " (" (e.kind) ")" }
                    }
                }
            }
        }
    };
    page(StatusCode::OK, layout(&gateway, "Audit log", Some(&session), content))
}

/// The vendored NHS.UK frontend files.
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("nhsuk-frontend.min.css", "text/css", include_bytes!("../../assets/nhsuk/nhsuk-frontend.min.css")),
    ("images/favicon.ico", "image/x-icon", include_bytes!("../../assets/nhsuk/images/favicon.ico")),
    (
        "images/nhsuk-icon-arrow-down.svg",
        "image/svg+xml",
        include_bytes!("../../assets/nhsuk/images/nhsuk-icon-arrow-down.svg"),
    ),
    (
        "images/nhsuk-icon-arrow-up-down.svg",
        "image/svg+xml",
        include_bytes!("../../assets/nhsuk/images/nhsuk-icon-arrow-up-down.svg"),
    ),
    (
        "images/nhsuk-icon-arrow-up.svg",
        "image/svg+xml",
        include_bytes!("../../assets/nhsuk/images/nhsuk-icon-arrow-up.svg"),
    ),
    ("images/nhsuk-icon-cross.svg", "image/svg+xml", include_bytes!("../../assets/nhsuk/images/nhsuk-icon-cross.svg")),
];

/// `GET /assets/…`
pub(super) async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, bytes)) => {
            let headers = [(header::CONTENT_TYPE, *content_type), (header::CACHE_CONTROL, "public, max-age=86400")];
            (headers, *bytes).into_response()
        }
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}

/// Any other path.
pub(super) async fn not_found(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let session = gateway.door.session(&headers);
    let content = html! { h1 class="nhsuk-heading-l" { "Page not found" } p { a href="/" { "Go to the search" } } };
    page(StatusCode::NOT_FOUND, layout(&gateway, "Page not found", session.as_ref(), content))
}
