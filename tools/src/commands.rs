//! Runs each command: parse what the user typed, call the library, print text or one JSON
//! document, and choose the exit code.

use crate::{
    Cli, Command, ContactsCommand, DemoArgs, EnrolArgs, FederationCommand, InboxCommand, KeyArgs, LookupArgs,
    PlansCommand, RoleArg,
};
use anyhow::Context;
use cpis_node::client::{self, LookupRequest};
use cpis_node::config::{SettingConfig, read_directory};
use cpis_protocol::directory::Role;
use cpis_protocol::ids::{LookupId, NhsNumber, PlanRef};
use cpis_protocol::records::{Contacts, Person, PlanType};
use cpis_protocol::time::Date;
use cpis_tools::api::NodeApi;
use cpis_tools::render::{now, number};
use cpis_tools::{admin, care, council, demo, show, status};
use serde_json::{Value, json};
use std::path::Path;

/// Exit code: done.
pub(crate) const EXIT_OK: u8 = 0;
/// Exit code: failed.
pub(crate) const EXIT_FAILED: u8 = 1;
/// Exit code: bad command line or input; nothing was sent.
pub(crate) const EXIT_BAD_INPUT: u8 = 2;
/// Exit code: an import finished but refused some rows.
pub(crate) const EXIT_ROWS_REFUSED: u8 = 3;

/// A command that failed: the exit code, the error, and any JSON fields to add to `{"error"}`.
pub(crate) struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
    extra: Option<Value>,
}

impl Failure {
    /// The one JSON document printed for a failure under `--json`.
    pub(crate) fn json(&self) -> Value {
        let mut doc = self.extra.clone().unwrap_or_else(|| json!({}));
        doc["error"] = json!(message(&self.error));
        doc["exit_code"] = json!(self.code);
        doc
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure { code: EXIT_FAILED, error: e.into(), extra: None }
    }
}

/// The error and its causes, each cause added only if the text so far does not already say it.
pub(crate) fn message(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}

fn bad_input(message: String) -> Failure {
    Failure { code: EXIT_BAD_INPUT, error: anyhow::anyhow!(message), extra: None }
}

type Outcome = Result<u8, Failure>;

/// Prints `value` as JSON, or the text `render` makes of it.
fn emit(json: bool, value: &Value, render: impl FnOnce(&Value) -> String) {
    if json {
        println!("{value}");
    } else {
        print!("{}", render(value));
    }
}

pub(crate) async fn run(cli: Cli) -> Outcome {
    let json = cli.json;
    match cli.command {
        Command::Federation(c) => federation(c, json).await,
        Command::Plans(c) => plans(c, json).await,
        Command::Contacts(ContactsCommand::Set { name, office_phone, out_of_hours_phone, node }) => {
            let contacts = Contacts { name, office_phone, out_of_hours_phone };
            contacts.check().map_err(|e| bad_input(format!("{e}: nothing was sent")))?;
            let reply = council::set_contacts(&NodeApi::from_config(&node.node)?, &contacts).await?;
            emit(json, &reply, |v| council::result_text("contacts", true, v));
            Ok(EXIT_OK)
        }
        Command::Inbox(c) => inbox(c, json).await,
        Command::Lookup(args) => lookup(args, json).await,
        Command::Status(node) => {
            let reply = status::status(&NodeApi::from_config(&node.node)?).await?;
            emit(json, &reply, status::status_text);
            Ok(EXIT_OK)
        }
        Command::Demo(args) => run_demo(args, json).await,
    }
}

async fn federation(command: FederationCommand, json: bool) -> Outcome {
    match command {
        FederationCommand::Create { dir, name, roots, threshold, valid_days } => {
            let options = admin::CreateOptions { dir, name, roots, threshold, valid_days };
            let created = admin::create(&options, now()).map_err(admin_failure)?;
            let files: Vec<String> = created.root_key_files.iter().map(|p| p.display().to_string()).collect();
            let d = &created.directory.directory;
            let value = json!({
                "federation": d.federation, "directory_version": d.version,
                "expires_at": d.expires_at.to_string(), "threshold": d.threshold,
                "root_key_files": files,
                "directory_file": options.dir.join(admin::DIRECTORY_FILE).display().to_string(),
            });
            emit(json, &value, |_| created_text(&options.dir, &files, d.threshold));
            Ok(EXIT_OK)
        }
        FederationCommand::Enrol(args) => enrol(*args, json),
        FederationCommand::RotateKey { key, key_out, key_valid_days } => {
            change_key(key, Some(key_out), key_valid_days, None, json)
        }
        FederationCommand::RetireKey { key, key_id } => change_key(key, None, 1, Some((key_id, false)), json),
        FederationCommand::RevokeKey { key, key_id } => change_key(key, None, 1, Some((key_id, true)), json),
        FederationCommand::Show { dir, file } => {
            let path = match (dir, file) {
                (_, Some(file)) => file,
                (Some(dir), None) => dir.join(admin::DIRECTORY_FILE),
                (None, None) => Path::new(admin::DIRECTORY_FILE).to_path_buf(),
            };
            let signed = read_directory(&path)?;
            let value = show::directory_json(&signed, now());
            emit(json, &value, |_| show::directory_text(&signed, now()));
            Ok(EXIT_OK)
        }
        FederationCommand::Publish { dir, node, from_version } => {
            let api = NodeApi::from_config(&node)?;
            let published = admin::publish(&dir, &api, from_version).await?;
            let value = json!({
                "node_version_before": published.node_version_before,
                "sent": published.sent, "node_version": published.node_version,
            });
            emit(json, &value, |_| match published.sent.as_slice() {
                [] => format!("The node already has directory version {}: nothing to send.\n", published.node_version),
                sent => format!(
                    "Sent versions {}..{}; the node now trusts version {} and passes it on to its peers.\n",
                    sent[0],
                    sent[sent.len() - 1],
                    published.node_version
                ),
            });
            Ok(EXIT_OK)
        }
    }
}

/// Rotate (`target` None), retire or revoke (`target` Some((key id, revoke))).
fn change_key(
    args: KeyArgs,
    key_out: Option<std::path::PathBuf>,
    key_valid_days: u64,
    target: Option<(String, bool)>,
    json: bool,
) -> Outcome {
    let change = match &target {
        None => admin::KeyChange::Add,
        Some((id, revoke)) => {
            let id = admin::parse_key_id(id).map_err(admin_failure)?;
            if *revoke { admin::KeyChange::Revoke(id) } else { admin::KeyChange::Retire(id) }
        }
    };
    let options = admin::KeyChangeOptions {
        dir: args.dir,
        roots_dir: args.roots_dir,
        code: args.code,
        key_out,
        key_valid_days,
        valid_days: args.valid_days,
    };
    let changed = admin::change_key(&options, change, now()).map_err(admin_failure)?;
    let version = changed.directory.directory.version;
    let new_key = changed.new_key.as_ref();
    let value = json!({
        "code": options.code, "directory_version": version,
        "new_key_id": new_key.map(|k| k.0.clone()),
        "new_key_file": new_key.map(|k| k.1.display().to_string()),
    });
    emit(json, &value, |_| {
        let next = match (change, new_key) {
            (admin::KeyChange::Add, Some((id, file))) => format!(
                "New key {id} written to {}. Publish version {version} to a hub, wait for it to spread, then install\n\
                 the file as the member's key (node.key or setting.key, owner-only) and restart it; then retire the old key.",
                file.display()
            ),
            (admin::KeyChange::Revoke(_), _) => format!(
                "Key revoked in version {version}: publish it to a hub now. Everything the key signed becomes invalid;\n\
                 an authority must then republish its live records under its new key."
            ),
            _ => format!("Key retired in version {version}: publish it to a hub."),
        };
        format!("{next}\n")
    });
    Ok(EXIT_OK)
}

fn admin_failure(e: admin::AdminError) -> Failure {
    let code = match e {
        admin::AdminError::Invalid(_) | admin::AdminError::Exists(_) | admin::AdminError::OutputExists(_) => {
            EXIT_BAD_INPUT
        }
        _ => EXIT_FAILED,
    };
    Failure { code, error: e.into(), extra: None }
}

fn created_text(dir: &Path, files: &[String], threshold: u8) -> String {
    format!(
        "Created the federation in {dir}: directory version 1, no members yet.\n\n\
         Root keys (any {threshold} of them sign each new directory version):\n  {keys}\n\n\
         WARNING: the root keys control who is in the federation. Move them to offline storage\n\
         (encrypted removable media kept apart from each other) and delete them from this machine;\n\
         bring {threshold} of them back with --roots-dir only to sign a new directory version.\n\n\
         Next: enrol the hubs first, then authorities and settings (`cpis federation enrol`).\n",
        dir = dir.display(),
        keys = files.join("\n  "),
    )
}

fn enrol(args: EnrolArgs, json: bool) -> Outcome {
    let role = match args.role {
        RoleArg::Hub => Role::Hub,
        RoleArg::Authority => Role::Authority,
        RoleArg::Setting => Role::Setting,
    };
    let options = admin::EnrolOptions {
        dir: args.dir,
        roots_dir: args.roots_dir,
        role,
        code: args.code,
        name: args.name,
        addresses: args.addresses,
        home_hubs: args.home_hubs,
        setting_type: args.setting_type,
        contact_name: args.contact_name,
        office_phone: args.office_phone,
        out_of_hours_phone: args.out_of_hours_phone,
        listen: args.listen,
        out: args.out,
        key_valid_days: args.key_valid_days,
        valid_days: args.valid_days,
    };
    let enrolled = admin::enrol(&options, now()).map_err(admin_failure)?;
    let m = &enrolled.member;
    let key_id = m.keys.first().map(|k| k.id().to_string()).unwrap_or_default();
    let value = json!({
        "code": m.code.as_str(), "role": role.name(), "name": m.name, "key_id": key_id,
        "directory_version": enrolled.directory.directory.version,
        "key_file": enrolled.key_file.display().to_string(),
        "config_file": enrolled.config_file.display().to_string(),
        "directory_file": options.out.join(admin::DIRECTORY_FILE).display().to_string(),
    });
    emit(json, &value, |_| {
        let next = match role {
            Role::Setting => format!(
                "Look a child up:  cpis lookup --config {} --nhs NUMBER --user-id ID --user-name NAME --role ROLE",
                enrolled.config_file.display()
            ),
            _ => format!("Start the node:   cpis-node run --config {}", enrolled.config_file.display()),
        };
        format!(
            "Enrolled {} {} ({}) with key {key_id}: directory version {}.\n\
             Key (owner-only, never copy it elsewhere): {}\nConfig: {}\n{next}\n\
             Running nodes learn of the new member once the version is published to a hub\n\
             (`cpis federation publish --dir {} --node HUB_CONFIG`).\n",
            role.name(),
            m.code,
            m.name,
            enrolled.directory.directory.version,
            enrolled.key_file.display(),
            enrolled.config_file.display(),
            options.dir.display(),
        )
    });
    Ok(EXIT_OK)
}

fn parse_date(option: &str, text: &str) -> Result<Date, Failure> {
    Date::parse(text).map_err(|e| bad_input(format!("{option}: {e}: nothing was sent")))
}

fn parse_reference(text: &str) -> Result<PlanRef, Failure> {
    PlanRef::parse(text).map_err(|e| bad_input(format!("reference: {e}: nothing was sent")))
}

fn parse_nhs(text: &str) -> Result<NhsNumber, Failure> {
    NhsNumber::parse(text)
        .map_err(|e| bad_input(format!("invalid NHS number: {e}. Nothing was sent: check the number and try again")))
}

async fn plans(command: PlansCommand, json: bool) -> Outcome {
    match command {
        PlansCommand::Add { reference, nhs, plan_type, start, end, due, node } => {
            let plan = council::NewPlan {
                reference: parse_reference(&reference)?,
                nhs: parse_nhs(&nhs)?,
                plan_type: PlanType::parse(&plan_type)
                    .ok_or_else(|| bad_input("--type: use CPP, LAC, UCPP or the SNOMED CT code".into()))?,
                start: parse_date("--start", &start)?,
                end: end.as_deref().map(|d| parse_date("--end", d)).transpose()?,
                due: due.as_deref().map(|d| parse_date("--due", d)).transpose()?,
            };
            let reply = council::add_plan(&NodeApi::from_config(&node.node)?, &plan).await?;
            emit(json, &reply, |v| council::result_text(&format!("plan {}", plan.reference), true, v));
        }
        PlansCommand::End { reference, end, node } => {
            let (reference, end) = (parse_reference(&reference)?, parse_date("--end", &end)?);
            let reply = council::end_plan(&NodeApi::from_config(&node.node)?, &reference, end).await?;
            emit(json, &reply, |v| council::result_text(&format!("plan {reference} ended on {end}"), true, v));
        }
        PlansCommand::Withdraw { reference, node } => {
            let reference = parse_reference(&reference)?;
            let reply = council::withdraw_plan(&NodeApi::from_config(&node.node)?, &reference).await?;
            emit(json, &reply, |v| council::result_text(&format!("plan {reference} withdrawn"), true, v));
        }
        PlansCommand::List { node } => {
            let reply = council::list_plans(&NodeApi::from_config(&node.node)?).await?;
            emit(json, &reply, council::plans_text);
        }
        PlansCommand::Import { file, node } => return import(&file, &node.node, json).await,
    }
    Ok(EXIT_OK)
}

async fn import(file: &Path, node: &Path, json: bool) -> Outcome {
    let size = std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?.len();
    if size > council::IMPORT_BYTES_MAX {
        return Err(bad_input(format!(
            "{} is {size} bytes; the node takes at most {} bytes per import: split the file",
            file.display(),
            council::IMPORT_BYTES_MAX
        )));
    }
    let csv = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let api = NodeApi::from_config(node)?;
    let report = council::import(&api, csv).await?;
    emit(json, &report, council::import_text);
    if number(&report, "refused") > 0 { Ok(EXIT_ROWS_REFUSED) } else { Ok(EXIT_OK) }
}

async fn inbox(command: InboxCommand, json: bool) -> Outcome {
    match command {
        InboxCommand::List { unacknowledged, node } => {
            let mut reply = council::notifications(&NodeApi::from_config(&node.node)?).await?;
            if unacknowledged && let Some(list) = reply.get_mut("notifications").and_then(Value::as_array_mut) {
                list.retain(|n| n.get("acknowledged").is_none_or(Value::is_null));
            }
            emit(json, &reply, |v| council::inbox_text(v, unacknowledged));
        }
        InboxCommand::Ack { lookup_id, by, node } => {
            let id = LookupId::from_hex(&lookup_id)
                .ok_or_else(|| bad_input("the lookup id is 32 hex characters (see `cpis inbox list`)".into()))?;
            let reply = council::acknowledge(&NodeApi::from_config(&node.node)?, id, &by).await?;
            emit(json, &reply, |v| council::result_text(&format!("notification {id} acknowledged"), false, v));
        }
    }
    Ok(EXIT_OK)
}

async fn lookup(args: LookupArgs, json: bool) -> Outcome {
    // The number is checked before anything is read or sent.
    let nhs = parse_nhs(&args.nhs)?;
    let config = SettingConfig::load(&args.config)?;
    let request = LookupRequest { nhs, person: Person { id: args.user_id, name: args.user_name, role: args.role } };
    match client::lookup(&config, request).await {
        Ok(outcome) => {
            let value = care::lookup_json(&outcome, now());
            emit(json, &value, |_| care::lookup_text(&outcome, now()));
            Ok(EXIT_OK)
        }
        Err(e) => {
            let code = match e {
                client::ClientError::Request(_) => EXIT_BAD_INPUT,
                _ => EXIT_FAILED,
            };
            let extra = Some(care::error_json(&e));
            Err(Failure { code, error: e.into(), extra })
        }
    }
}

async fn run_demo(args: DemoArgs, json: bool) -> Outcome {
    let report = if json {
        demo::run(args.keep, &mut demo::Silent).await
    } else {
        demo::run(args.keep, &mut demo::Printer).await
    };
    if json {
        println!("{}", report.json());
    }
    Ok(if report.held { EXIT_OK } else { EXIT_FAILED })
}
