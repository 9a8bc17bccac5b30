//! Runs each command: parse what the user typed, call the library, print text or one JSON
//! document, and choose the exit code.

use crate::{
    ChangeArgs, Cli, Command, ContactsCommand, CouncilCommand, CouncilRoleArg, DemoArgs, EnrolArgs, FederationCommand,
    GatewayCommand, GatewayRoleArg, InboxCommand, LookupArgs, PlansCommand, RoleArg, SetMemberArgs,
};
use anyhow::Context;
use cpis_node::accounts::{Access, AccountRole, Accounts, AccountsError};
use cpis_node::client::{self, LookupRequest};
use cpis_node::config::{SettingConfig, read_directory};
use cpis_protocol::directory::Role;
use cpis_protocol::ids::{LookupId, NhsNumber, OdsCode, PlanRef};
use cpis_protocol::records::{Contacts, Person, PlanType};
use cpis_protocol::time::Date;
use cpis_tools::api::NodeApi;
use cpis_tools::render::{now, number, out};
use cpis_tools::{admin, care, council, demo, gateway, show, status};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
        out(&format!("{value}\n"));
    } else {
        out(&render(value));
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
        Command::Gateway(c) => gateway(c, json),
        Command::Council(c) => council_accounts(c, json),
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
        FederationCommand::RotateKey { change, code, key_out, key_valid_days } => {
            let options = key_options(change, code, Some(key_out), key_valid_days);
            key_change(options, admin::KeyChange::Add, json)
        }
        FederationCommand::RetireKey { change, code, key_id, node, force } => {
            let id = admin::parse_key_id(&key_id).map_err(admin_failure)?;
            let mut options = key_options(change, code, None, 1);
            options.force = force;
            if let Some(node) = node {
                let running = show::running_from_status(&status::status(&NodeApi::from_config(&node)?).await?);
                let running = running
                    .into_iter()
                    .filter_map(|(code, r)| OdsCode::parse(&code).ok().map(|c| (c, r.key_id)))
                    .collect();
                options.running = Some(running);
            }
            key_change(options, admin::KeyChange::Retire(id), json)
        }
        FederationCommand::RevokeKey { change, code, key_id, replace_with, key_valid_days } => {
            let id = admin::parse_key_id(&key_id).map_err(admin_failure)?;
            key_change(key_options(change, code, replace_with, key_valid_days), admin::KeyChange::Revoke(id), json)
        }
        FederationCommand::PruneKeys { change, code } => {
            let options = change_options(change);
            let (next, dropped) = admin::prune_keys(&options, code.as_deref(), now()).map_err(admin_failure)?;
            let mut value = next_json(&next);
            value["dropped"] = json!(dropped);
            let text = format!("Dropped {} expired key(s): {}.\n", dropped.len(), dropped.join(", "));
            emit(json, &value, |_| text + &next_text(&next, &options.dir));
            Ok(EXIT_OK)
        }
        FederationCommand::Renew { change } => {
            let options = change_options(change);
            let next = admin::renew(&options, now()).map_err(admin_failure)?;
            emit(json, &next_json(&next), |_| next_text(&next, &options.dir));
            Ok(EXIT_OK)
        }
        FederationCommand::SetMember(args) => {
            let SetMemberArgs {
                change,
                code,
                name,
                addresses,
                home_hubs,
                contact_name,
                office_phone,
                out_of_hours_phone,
            } = *args;
            let edit = admin::MemberEdit {
                name,
                addresses: (!addresses.is_empty()).then_some(addresses),
                home_hubs: (!home_hubs.is_empty()).then_some(home_hubs),
                contact_name,
                office_phone,
                out_of_hours_phone,
            };
            let options = change_options(change);
            let next = admin::set_member(&options, &code, &edit, now()).map_err(admin_failure)?;
            emit(json, &next_json(&next), |_| next_text(&next, &options.dir));
            Ok(EXIT_OK)
        }
        FederationCommand::Remove { change, code } => {
            let options = change_options(change);
            let next = admin::remove_member(&options, &code, now()).map_err(admin_failure)?;
            emit(json, &next_json(&next), |_| format!("Removed {code}.\n{}", next_text(&next, &options.dir)));
            Ok(EXIT_OK)
        }
        FederationCommand::RotateRoots { change, roots, threshold, roots_out } => {
            let options = change_options(change);
            let (next, files) =
                admin::rotate_roots(&options, roots, threshold, &roots_out, now()).map_err(admin_failure)?;
            let files: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
            let mut value = next_json(&next);
            value["root_key_files"] = json!(files);
            emit(json, &value, |_| {
                format!(
                    "New root keys (any {threshold} of them sign each later version):\n  {}\n\
                     Move them to offline storage as you did the old ones.\n{}",
                    files.join("\n  "),
                    next_text(&next, &options.dir)
                )
            });
            Ok(EXIT_OK)
        }
        FederationCommand::Sign { proposal, root_key, dir } => {
            let current = dir.map(|d| read_directory(&d.join(admin::DIRECTORY_FILE))).transpose()?;
            let signed = admin::sign_proposal(&proposal, &root_key, current.as_ref().map(|c| &c.directory))
                .map_err(admin_failure)?;
            let value = json!({
                "directory_version": signed.version, "key_id": signed.key_id, "signatures": signed.signatures,
            });
            emit(json, &value, |_| {
                format!(
                    "Root key {} signed proposed version {}: it now carries {} signature(s). Pass the file on;\n\
                     once enough holders have signed, `cpis federation assemble --dir DIR --proposal {}` saves it.\n",
                    signed.key_id,
                    signed.version,
                    signed.signatures,
                    proposal.display()
                )
            });
            Ok(EXIT_OK)
        }
        FederationCommand::Assemble { dir, proposal } => {
            let signed = admin::assemble(&dir, &proposal, now()).map_err(admin_failure)?;
            let next = admin::Next::Published(signed);
            emit(json, &next_json(&next), |_| next_text(&next, &dir));
            Ok(EXIT_OK)
        }
        FederationCommand::Show { dir, file, node } => {
            let path = match (dir, file) {
                (_, Some(file)) => file,
                (Some(dir), None) => dir.join(admin::DIRECTORY_FILE),
                (None, None) => Path::new(admin::DIRECTORY_FILE).to_path_buf(),
            };
            let signed = read_directory(&path)?;
            let running = match node {
                Some(node) => show::running_from_status(&status::status(&NodeApi::from_config(&node)?).await?),
                None => BTreeMap::new(),
            };
            let value = show::directory_json(&signed, now(), &running);
            emit(json, &value, |_| show::directory_text(&signed, now(), &running));
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

fn change_options(args: ChangeArgs) -> admin::ChangeOptions {
    let signing = admin::Signing::from_options(&args.dir, args.roots_dir, args.propose);
    admin::ChangeOptions { dir: args.dir, signing, valid_days: args.valid_days }
}

fn key_options(
    change: ChangeArgs,
    code: String,
    key_out: Option<PathBuf>,
    key_valid_days: u64,
) -> admin::KeyChangeOptions {
    admin::KeyChangeOptions {
        change: change_options(change),
        code,
        key_out,
        key_valid_days,
        running: None,
        force: false,
    }
}

fn next_json(next: &admin::Next) -> Value {
    match next {
        admin::Next::Published(_) => json!({ "directory_version": next.version(), "published": true }),
        admin::Next::Proposed { version, file } => {
            json!({ "directory_version": version, "published": false, "proposal_file": file.display().to_string() })
        }
    }
}

/// What became of a new directory version, and what to do next.
fn next_text(next: &admin::Next, dir: &Path) -> String {
    match next {
        admin::Next::Published(_) => format!(
            "Directory version {} is signed and saved in {dir}. Publish it to a hub, which spreads it to everyone:\n  \
             cpis federation publish --dir {dir} --node HUB_CONFIG\n",
            next.version(),
            dir = dir.display()
        ),
        admin::Next::Proposed { version, file } => format!(
            "Directory version {version} is proposed, unsigned, in {file}. Each root key holder signs it on their own\n\
             machine:  cpis federation sign --proposal {file} --root-key ROOT_KEY\n\
             then:     cpis federation assemble --dir {dir} --proposal {file}\n",
            file = file.display(),
            dir = dir.display()
        ),
    }
}

fn key_change(options: admin::KeyChangeOptions, change: admin::KeyChange, json: bool) -> Outcome {
    let changed = admin::change_key(&options, change, now()).map_err(admin_failure)?;
    let new_key = changed.new_key.as_ref();
    let mut value = next_json(&changed.next);
    value["code"] = json!(options.code);
    value["new_key_id"] = json!(new_key.map(|k| k.0.clone()));
    value["new_key_file"] = json!(new_key.map(|k| k.1.display().to_string()));
    let version = changed.next.version();
    emit(json, &value, |_| {
        let what = match (change, new_key) {
            (admin::KeyChange::Add, Some((id, file))) => format!(
                "New key {id} written to {} for version {version}. Once the version has spread, install the file\n\
                 as the member's key (node.key or setting.key, owner-only) and restart its node; then retire the old key.",
                file.display()
            ),
            (admin::KeyChange::Revoke(_), replacement) => {
                let replacement = replacement
                    .map(|(id, file)| {
                        format!("\nIts replacement {id} is in {}: install it and restart the node.", file.display())
                    })
                    .unwrap_or_default();
                format!(
                    "Key revoked in version {version}: everything it signed becomes invalid once nodes hold the version.\n\
                     An authority's node republishes its live records under its active key by itself.{replacement}"
                )
            }
            _ => format!("Key retired in version {version}: what it signed stays valid; it opens no connections."),
        };
        format!("{what}\n{}", next_text(&changed.next, &options.change.dir))
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
        propose: args.propose,
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
        "directory_version": enrolled.next.version(),
        "published": matches!(enrolled.next, admin::Next::Published(_)),
        "proposal_file": match &enrolled.next {
            admin::Next::Proposed { file, .. } => Some(file.display().to_string()),
            admin::Next::Published(_) => None,
        },
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
            "Enrolled {} {} ({}) with key {key_id}.\n\
             Key (owner-only, never copy it elsewhere): {}\nConfig: {}\n{next}\n\
             Running nodes learn of the new member once the version reaches a hub.\n{}",
            role.name(),
            m.code,
            m.name,
            enrolled.key_file.display(),
            enrolled.config_file.display(),
            next_text(&enrolled.next, &options.dir),
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
        PlansCommand::Import { file, dry_run, node } => return import(&file, &node.node, dry_run, json).await,
    }
    Ok(EXIT_OK)
}

async fn import(file: &Path, node: &Path, dry_run: bool, json: bool) -> Outcome {
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
    let report = council::import(&api, csv, dry_run).await?;
    emit(json, &report, council::import_text);
    if number(&report, "refused") > 0 { Ok(EXIT_ROWS_REFUSED) } else { Ok(EXIT_OK) }
}

async fn inbox(command: InboxCommand, json: bool) -> Outcome {
    match command {
        InboxCommand::List { unacknowledged, limit, offset, node } => {
            let api = NodeApi::from_config(&node.node)?;
            let reply = council::notifications(&api, unacknowledged, limit, offset).await?;
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

fn gateway_role(role: GatewayRoleArg) -> AccountRole {
    match role {
        GatewayRoleArg::Clinician => AccountRole::Clinician,
        GatewayRoleArg::SafeguardingLead => AccountRole::SafeguardingLead,
        GatewayRoleArg::Administrator => AccountRole::Administrator,
    }
}

/// A password from the first line of standard input, or a new random one (to be printed).
fn password(from_stdin: bool) -> Result<(String, bool), Failure> {
    if !from_stdin {
        return Ok((gateway::random_password(), true));
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).context("reading the password from standard input")?;
    Ok((line.trim_end_matches(['\r', '\n']).to_string(), false))
}

/// The last day a calling system's token is accepted, as the accounts file has it.
fn valid_until(accounts: &Accounts, system: &str) -> Option<String> {
    accounts.systems.iter().find(|s| s.system == system)?.valid_until.map(|d| d.to_string())
}

/// A change to an accounts file, whichever door it is for.
enum AccountsAction {
    AddUser { user: String, name: String, job: String, role: AccountRole, password_stdin: bool },
    SetPassword { user: String, password_stdin: bool },
    AddSystem { system: String, name: String, may: Vec<Access>, valid_days: u32 },
    RenewSystem { system: String, valid_days: u32 },
    Disable { name: String },
    List,
}

fn gateway(command: GatewayCommand, json: bool) -> Outcome {
    let path = |g: &crate::GatewayArg| SettingConfig::load(&g.config).map(|c| c.gateway.users_path());
    let (path, action) = match command {
        GatewayCommand::AddUser { gateway, user, name, job, role, password_stdin } => {
            (path(&gateway)?, AccountsAction::AddUser { user, name, job, role: gateway_role(role), password_stdin })
        }
        GatewayCommand::SetPassword { gateway, user, password_stdin } => {
            (path(&gateway)?, AccountsAction::SetPassword { user, password_stdin })
        }
        GatewayCommand::AddSystem { gateway, system, name, may, valid_days } => {
            let may = if may.is_empty() {
                Access::ALL.to_vec()
            } else {
                may.iter().filter_map(|m| Access::parse(m)).collect()
            };
            (path(&gateway)?, AccountsAction::AddSystem { system, name, may, valid_days })
        }
        GatewayCommand::RenewSystem { gateway, system, valid_days } => {
            (path(&gateway)?, AccountsAction::RenewSystem { system, valid_days })
        }
        GatewayCommand::Disable { gateway, name } => (path(&gateway)?, AccountsAction::Disable { name }),
        GatewayCommand::List { gateway } => (path(&gateway)?, AccountsAction::List),
    };
    accounts(&path, action, json)
}

fn council_accounts(command: CouncilCommand, json: bool) -> Outcome {
    let path = |n: &crate::NodeArg| cpis_node::config::NodeConfig::load(&n.node).map(|c| c.users_path());
    let role = |r: CouncilRoleArg| match r {
        CouncilRoleArg::SocialWorker => AccountRole::SocialWorker,
        CouncilRoleArg::TeamManager => AccountRole::TeamManager,
        CouncilRoleArg::Administrator => AccountRole::Administrator,
    };
    let (path, action) = match command {
        CouncilCommand::AddUser { node, user, name, job, role: r, password_stdin } => {
            (path(&node)?, AccountsAction::AddUser { user, name, job, role: role(r), password_stdin })
        }
        CouncilCommand::SetPassword { node, user, password_stdin } => {
            (path(&node)?, AccountsAction::SetPassword { user, password_stdin })
        }
        CouncilCommand::Disable { node, name } => (path(&node)?, AccountsAction::Disable { name }),
        CouncilCommand::List { node } => (path(&node)?, AccountsAction::List),
    };
    accounts(&path, action, json)
}

fn accounts(path: &Path, action: AccountsAction, json: bool) -> Outcome {
    let invalid = |e: AccountsError| match e {
        AccountsError::Invalid { .. } | AccountsError::Exists { .. } | AccountsError::Missing { .. } => {
            bad_input(format!("{e}: nothing was changed"))
        }
        other => Failure::from(other),
    };
    let mut accounts = Accounts::load(path)?;
    let reply = match action {
        AccountsAction::AddUser { user, name, job, role, password_stdin } => {
            let (password, generated) = password(password_stdin)?;
            accounts.add_user(&user, &name, &job, role, &password).map_err(invalid)?;
            json!({ "user": user, "role": role.name(), "password": generated.then_some(password), "file": path })
        }
        AccountsAction::SetPassword { user, password_stdin } => {
            let (password, generated) = password(password_stdin)?;
            accounts.set_password(&user, &password).map_err(invalid)?;
            json!({ "user": user, "password": generated.then_some(password), "file": path })
        }
        AccountsAction::AddSystem { system, name, may, valid_days } => {
            let token = accounts.add_system(&system, &name, &may, valid_days, now().date()).map_err(invalid)?;
            json!({ "system": system, "token": token, "valid_until": valid_until(&accounts, &system), "file": path })
        }
        AccountsAction::RenewSystem { system, valid_days } => {
            let token = accounts.renew_system(&system, valid_days, now().date()).map_err(invalid)?;
            json!({ "system": system, "token": token, "valid_until": valid_until(&accounts, &system), "file": path })
        }
        AccountsAction::Disable { name } => {
            accounts.disable(&name).map_err(invalid)?;
            json!({ "disabled": name, "file": path })
        }
        AccountsAction::List => {
            emit(json, &gateway::list_json(&accounts), gateway::text);
            return Ok(EXIT_OK);
        }
    };
    accounts.save(path)?;
    emit(json, &reply, gateway::text);
    Ok(EXIT_OK)
}

async fn lookup(args: LookupArgs, json: bool) -> Outcome {
    // The number is checked before anything is read or sent.
    let nhs = parse_nhs(&args.nhs)?;
    if let (Some(url), Some(token_file)) = (&args.gateway, &args.token_file) {
        return lookup_through_gateway(url, token_file, nhs, &args, json).await;
    }
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

/// `cpis lookup --gateway URL --token-file F`: the FHIR `CareTeam` search, as a calling system.
async fn lookup_through_gateway(
    url: &str,
    token_file: &Path,
    nhs: NhsNumber,
    args: &LookupArgs,
    json: bool,
) -> Outcome {
    let addr = url
        .strip_prefix("http://")
        .map(|rest| rest.trim_end_matches('/'))
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| bad_input(format!("--gateway {url}: give http://ADDRESS:PORT of a gateway on this machine (its http.addr); clinical systems reach a gateway over HTTPS with the FHIR API itself")))?;
    let token = std::fs::read_to_string(token_file).with_context(|| format!("reading {}", token_file.display()))?;
    let api = NodeApi::new(addr, token.trim().to_string());
    let (_, metadata) = api.get_with("/FHIR/R4/metadata", &[]).await?;
    let unscheduled = care::gateway_lookup_kind(&metadata) != Some("scheduled");
    let headers = [
        ("IsUnscheduledAccessEvent", unscheduled.to_string()),
        ("X-User-Id", args.user_id.clone()),
        ("X-User-Name", args.user_name.clone()),
        ("X-User-Role", args.role.clone()),
    ];
    let path = format!("/FHIR/R4/CareTeam?patient:identifier=https://fhir.nhs.uk/Id/nhs-number|{}", nhs.digits());
    let (status, bundle) = api.get_with(&path, &headers).await?;
    if status != 200 {
        let code = if status == 400 { EXIT_BAD_INPUT } else { EXIT_FAILED };
        let text = care::outcome_text(&bundle);
        return Err(Failure {
            code,
            error: anyhow::anyhow!("the gateway answered {status}: {text}"),
            extra: Some(bundle),
        });
    }
    emit(json, &bundle, |b| care::bundle_text(b, nhs));
    Ok(EXIT_OK)
}

async fn run_demo(args: DemoArgs, json: bool) -> Outcome {
    let serve = args.serve.map(std::time::Duration::from_secs);
    let report = if json {
        demo::run(args.keep, serve, &mut demo::Silent).await
    } else {
        demo::run(args.keep, serve, &mut demo::Printer).await
    };
    // While serving, the report was printed as serving began.
    if json && report.serve.is_none() {
        out(&format!("{}\n", report.json()));
    }
    Ok(if report.held { EXIT_OK } else { EXIT_FAILED })
}
