//! `cpis`: the command line of the child protection federation, for administrators, councils
//! and care settings, with a one-command demonstration. See docs/cli.md.
//!
//! Exit codes: 0 done; 1 failed (nothing, or only what the message says, was done); 2 the
//! command line or an input was wrong and nothing was sent; 3 an import finished but refused
//! some rows.

mod commands;

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "cpis",
    version,
    about = "The child protection federation's command line: administrators, councils and care settings",
    after_help = "Try `cpis demo` to see the whole federation at work. Exit codes: 0 done, 1 failed, 2 bad input (nothing sent), 3 import with refused rows."
)]
struct Cli {
    /// Print one JSON document instead of text (shapes in docs/cli.md).
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to wait for a node's or a gateway's HTTP API before giving up (a large import is
    /// the slowest call; `cpis lookup` over QUIC keeps the setting's hub_timeout_ms).
    #[arg(long, global = true, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Administrators: the federation's members, keys and directory versions (docs/keys.md).
    #[command(subcommand)]
    Federation(FederationCommand),
    /// Councils: record, end, withdraw, list and import plans at the authority node.
    #[command(subcommand)]
    Plans(PlansCommand),
    /// Councils: the authority's contact details shown to clinicians.
    #[command(subcommand)]
    Contacts(ContactsCommand),
    /// Councils: notifications of your children being looked up, and acknowledging them.
    #[command(subcommand)]
    Inbox(InboxCommand),
    /// Care settings: look a child up by NHS number (whether it notifies follows the setting's
    /// type in the directory).
    Lookup(LookupArgs),
    /// Care settings: the gateway's people (who sign in at its page) and calling systems (which
    /// use its FHIR API with a bearer token). Works whether or not the gateway is running.
    #[command(subcommand)]
    Gateway(GatewayCommand),
    /// Councils: the people who sign in at the authority node's pages (needs `[pages]` in its
    /// config). Works whether or not the node is running.
    #[command(subcommand)]
    Council(CouncilCommand),
    /// Anyone running a node: its role, peers, replication lag and queues.
    Status(NodeArg),
    /// Plays the federation's founding story on an embedded federation on loopback, checking
    /// every step.
    Demo(DemoArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Hub,
    Authority,
    Setting,
}

#[derive(Subcommand)]
enum FederationCommand {
    /// Creates the root keys and directory version 1 in a new federation folder.
    Create {
        /// The federation folder to create (root keys go in DIR/roots/).
        #[arg(long)]
        dir: PathBuf,
        /// The federation's name, e.g. "England CPIS".
        #[arg(long)]
        name: String,
        /// How many root keys.
        #[arg(long, default_value_t = 3)]
        roots: u8,
        /// How many root keys must sign each directory version.
        #[arg(long, default_value_t = 2)]
        threshold: u8,
        /// Days until directory version 1 expires.
        #[arg(long, default_value_t = 365)]
        valid_days: u64,
    },
    /// Enrols a hub, an authority or a care setting: its key, a ready config, the next version.
    Enrol(Box<EnrolArgs>),
    /// Shows a directory: version, expiry, roots and every member with its keys.
    Show {
        /// The federation folder (shows DIR/directory.cpis).
        #[arg(long, conflicts_with = "file")]
        dir: Option<PathBuf>,
        /// A directory file (e.g. a node's directory.cpis).
        #[arg(long)]
        file: Option<PathBuf>,
        /// A hub's config: also show the key and directory version of the hub itself and of each
        /// hub and authority that has connected to it since it started.
        #[arg(long)]
        node: Option<PathBuf>,
    },
    /// Adds a new key for a member (written to --key-out) beside its current one (docs/keys.md).
    RotateKey {
        #[command(flatten)]
        change: ChangeArgs,
        /// The member's code.
        #[arg(long)]
        code: String,
        /// Where to write the new secret key (owner-only); install it as the member's key file.
        #[arg(long)]
        key_out: PathBuf,
        /// Days the new key is valid.
        #[arg(long, default_value_t = 730)]
        key_valid_days: u64,
    },
    /// Retires a member's old key once its node runs on the new one: what it signed stays valid.
    RetireKey {
        #[command(flatten)]
        change: ChangeArgs,
        /// The member's code.
        #[arg(long)]
        code: String,
        /// The key id, as `cpis federation show` prints it.
        #[arg(long)]
        key_id: String,
        /// A hub's config: its status tells which key each hub and authority that has connected
        /// to it since it started runs on, and a key still in use is not retired. One of --node
        /// or --force is needed.
        #[arg(long, required_unless_present = "force")]
        node: Option<PathBuf>,
        /// Retire the key without checking (or even though) a node runs on it.
        #[arg(long)]
        force: bool,
    },
    /// Revokes a key believed stolen: every record it signed becomes invalid.
    RevokeKey {
        #[command(flatten)]
        change: ChangeArgs,
        /// The member's code.
        #[arg(long)]
        code: String,
        /// The key id, as `cpis federation show` prints it.
        #[arg(long)]
        key_id: String,
        /// Add the replacement key in the same version, written to this file (needed when the
        /// revoked key is the member's last usable one).
        #[arg(long)]
        replace_with: Option<PathBuf>,
        /// Days the replacement key is valid.
        #[arg(long, default_value_t = 730)]
        key_valid_days: u64,
    },
    /// Drops keys past their validity window (of one member, or of all); never a member's last.
    PruneKeys {
        #[command(flatten)]
        change: ChangeArgs,
        /// Only this member's keys.
        #[arg(long)]
        code: Option<String>,
    },
    /// Issues the same directory with a new expiry (do it well before the current one expires).
    Renew {
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Changes a member's name, a hub's addresses, home hubs or an authority's contacts.
    SetMember(Box<SetMemberArgs>),
    /// Removes a member from the federation (a hub only once no member names it as home hub).
    Remove {
        #[command(flatten)]
        change: ChangeArgs,
        /// The member's code.
        #[arg(long)]
        code: String,
    },
    /// Replaces the root keys: signed by a threshold of the current roots and of the new ones.
    RotateRoots {
        #[command(flatten)]
        change: ChangeArgs,
        /// How many new root keys.
        #[arg(long, default_value_t = 3)]
        roots: u8,
        /// How many new root keys must sign each later version.
        #[arg(long, default_value_t = 2)]
        threshold: u8,
        /// The new folder to write the new root keys to (move them offline afterwards).
        #[arg(long)]
        roots_out: PathBuf,
    },
    /// A root key holder adds their signature to a proposal (made with --propose).
    Sign {
        /// The proposal file.
        #[arg(long)]
        proposal: PathBuf,
        /// The root key file to sign with.
        #[arg(long)]
        root_key: PathBuf,
        /// The federation folder (or a node's folder): lets a key of the current roots sign a
        /// proposal that replaces them.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Checks a signed proposal (a threshold of root signatures) and saves it as the newest
    /// version in the federation folder; then `publish` sends it to a hub.
    Assemble {
        /// The federation folder.
        #[arg(long)]
        dir: PathBuf,
        /// The signed proposal file.
        #[arg(long)]
        proposal: PathBuf,
    },
    /// Sends a node the directory versions it lacks; hubs spread them to everyone.
    Publish {
        /// The federation folder.
        #[arg(long)]
        dir: PathBuf,
        /// The node's config file.
        #[arg(long, default_value = "node.toml")]
        node: PathBuf,
        /// Send from this version on (default: the one after the node's).
        #[arg(long)]
        from_version: Option<u64>,
    },
}

/// How every change to the directory is signed.
#[derive(Args)]
struct ChangeArgs {
    /// The federation folder.
    #[arg(long)]
    dir: PathBuf,
    /// Where the root keys are (default DIR/roots): bring them from offline storage.
    #[arg(long, conflicts_with = "propose")]
    roots_dir: Option<PathBuf>,
    /// Write the new version, unsigned, to this file for the root key holders to sign on their
    /// own machines (`cpis federation sign`), instead of signing it here.
    #[arg(long)]
    propose: Option<PathBuf>,
    /// Days until the new directory version expires.
    #[arg(long, default_value_t = 365)]
    valid_days: u64,
}

#[derive(Args)]
struct SetMemberArgs {
    #[command(flatten)]
    change: ChangeArgs,
    /// The member's code.
    #[arg(long)]
    code: String,
    #[arg(long)]
    name: Option<String>,
    /// A hub's addresses, host:port (repeat for more; replaces them all).
    #[arg(long = "address")]
    addresses: Vec<String>,
    /// An authority's or setting's home hubs in order of preference (repeat; replaces them all).
    #[arg(long = "home-hub")]
    home_hubs: Vec<String>,
    #[arg(long)]
    contact_name: Option<String>,
    #[arg(long)]
    office_phone: Option<String>,
    #[arg(long)]
    out_of_hours_phone: Option<String>,
}

#[derive(Args)]
struct EnrolArgs {
    /// The federation folder.
    #[arg(long)]
    dir: PathBuf,
    /// Where the root keys are (default DIR/roots): bring them from offline storage.
    #[arg(long, conflicts_with = "propose")]
    roots_dir: Option<PathBuf>,
    /// Write the new version, unsigned, to this file for the root key holders to sign.
    #[arg(long)]
    propose: Option<PathBuf>,
    #[arg(long, value_enum)]
    role: RoleArg,
    /// The member's ODS code (an authority: 3 digits or letter-digit-letter-digit-letter).
    #[arg(long)]
    code: String,
    #[arg(long)]
    name: String,
    /// A hub's address, host:port, where settings and peers reach it (repeat for more).
    #[arg(long = "address")]
    addresses: Vec<String>,
    /// A hub's QUIC listen address (default: from its first --address).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// An authority's or setting's home hub, in order of preference (repeat for more).
    #[arg(long = "home-hub")]
    home_hubs: Vec<String>,
    /// A setting's type, e.g. urgent-treatment-centre, emergency-department, general-practice.
    #[arg(long)]
    setting_type: Option<String>,
    /// An authority's contact name (default "NAME children's social care").
    #[arg(long)]
    contact_name: Option<String>,
    /// An authority's office-hours phone.
    #[arg(long)]
    office_phone: Option<String>,
    /// An authority's out-of-hours (emergency duty team) phone.
    #[arg(long)]
    out_of_hours_phone: Option<String>,
    /// The member's folder to create: key, directory and config.
    #[arg(long)]
    out: PathBuf,
    /// Days the member's key is valid.
    #[arg(long, default_value_t = 730)]
    key_valid_days: u64,
    /// Days until the new directory version expires.
    #[arg(long, default_value_t = 365)]
    valid_days: u64,
}

#[derive(Args)]
struct NodeArg {
    /// The node's config file (its data_dir holds api.addr and api.token).
    #[arg(long, default_value = "node.toml")]
    node: PathBuf,
}

#[derive(Subcommand)]
enum PlansCommand {
    /// Records a plan (or changes it: the reference names it).
    Add {
        #[arg(long)]
        reference: String,
        /// The NHS number (the pregnant woman's for an unborn-child plan).
        #[arg(long)]
        nhs: String,
        /// CPP, LAC, UCPP or the SNOMED CT code.
        #[arg(long = "type")]
        plan_type: String,
        /// YYYY-MM-DD
        #[arg(long)]
        start: String,
        /// YYYY-MM-DD
        #[arg(long)]
        end: Option<String>,
        /// Expected due date, YYYY-MM-DD (unborn-child plans only).
        #[arg(long)]
        due: Option<String>,
        #[command(flatten)]
        node: NodeArg,
    },
    /// Ends a plan: it stays visible for 365 days after the end date.
    End {
        reference: String,
        /// YYYY-MM-DD
        #[arg(long)]
        end: String,
        #[command(flatten)]
        node: NodeArg,
    },
    /// Withdraws a plan entered in error: it is shown nowhere from now on.
    Withdraw {
        reference: String,
        #[command(flatten)]
        node: NodeArg,
    },
    /// Lists the plans held at the node.
    List {
        #[command(flatten)]
        node: NodeArg,
    },
    /// Imports a CSV file from a case-management system (format in docs/cli.md).
    Import {
        file: PathBuf,
        /// Check every row's fields and print the report, storing nothing ("applied" means the
        /// row would be sent; the node's own checks, such as dates against today, come with the
        /// real import).
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        node: NodeArg,
    },
}

#[derive(Subcommand)]
enum ContactsCommand {
    /// Sets the contacts clinicians see with every alert of this authority.
    Set {
        #[arg(long)]
        name: String,
        #[arg(long)]
        office_phone: String,
        #[arg(long)]
        out_of_hours_phone: String,
        #[command(flatten)]
        node: NodeArg,
    },
}

#[derive(Subcommand)]
enum InboxCommand {
    /// Lists notifications: who looked, where, when, which plan.
    List {
        /// Only those not yet acknowledged.
        #[arg(long)]
        unacknowledged: bool,
        /// Most to show, newest first.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        limit: u64,
        /// How many of the newest to skip first (the next page: --offset 100).
        #[arg(long, default_value_t = 0)]
        offset: u64,
        #[command(flatten)]
        node: NodeArg,
    },
    /// Acknowledges a notification.
    Ack {
        /// The lookup id (32 hex characters, from `cpis inbox list`).
        lookup_id: String,
        /// Who read it and is following up.
        #[arg(long)]
        by: String,
        #[command(flatten)]
        node: NodeArg,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum GatewayRoleArg {
    Clinician,
    SafeguardingLead,
    Administrator,
}

#[derive(Clone, Copy, ValueEnum)]
enum CouncilRoleArg {
    SocialWorker,
    TeamManager,
    Administrator,
}

#[derive(Subcommand)]
enum CouncilCommand {
    /// Adds a person who signs in at the council's pages; prints a new random password once,
    /// unless --password-stdin gives one.
    AddUser {
        #[command(flatten)]
        node: NodeArg,
        /// The user name they sign in with (letters, digits, . - _ @).
        #[arg(long)]
        user: String,
        /// Their full name, recorded with everything they do.
        #[arg(long)]
        name: String,
        /// Their job, e.g. "Duty social worker".
        #[arg(long)]
        job: String,
        /// What they may do: read and acknowledge (social worker), also change plans and import
        /// (team manager), also read the audit log (administrator).
        #[arg(long, value_enum, default_value = "social-worker")]
        role: CouncilRoleArg,
        /// Read the password (at least 12 characters) from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Sets a new password for a person (and enables the account).
    SetPassword {
        #[command(flatten)]
        node: NodeArg,
        #[arg(long)]
        user: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Disables a person (the entry stays, for the audit log).
    Disable {
        #[command(flatten)]
        node: NodeArg,
        #[arg(long)]
        name: String,
    },
    /// Lists people (never a password).
    List {
        #[command(flatten)]
        node: NodeArg,
    },
}

#[derive(Args)]
struct GatewayArg {
    /// The setting's config file (its `[gateway]` data folder holds the accounts).
    #[arg(long, default_value = "setting.toml")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum GatewayCommand {
    /// Adds a person who signs in at the gateway's page; prints a new random password once,
    /// unless --password-stdin gives one.
    AddUser {
        #[command(flatten)]
        gateway: GatewayArg,
        /// The user name they sign in with (letters, digits, . - _ @).
        #[arg(long)]
        user: String,
        /// Their full name, recorded in every lookup they make.
        #[arg(long)]
        name: String,
        /// Their job, recorded in every lookup as their role, e.g. "Staff nurse".
        #[arg(long)]
        job: String,
        /// What they may do at the gateway.
        #[arg(long, value_enum, default_value = "clinician")]
        role: GatewayRoleArg,
        /// Read the password (at least 12 characters) from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Sets a new password for a person (and enables the account); prints a new random one
    /// unless --password-stdin gives one.
    SetPassword {
        #[command(flatten)]
        gateway: GatewayArg,
        #[arg(long)]
        user: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Adds a calling system (a clinical system's integration) and prints its bearer token once.
    AddSystem {
        #[command(flatten)]
        gateway: GatewayArg,
        /// A short name for the system, e.g. EPIC-ED.
        #[arg(long)]
        system: String,
        /// What it is, e.g. "Epic, emergency department".
        #[arg(long)]
        name: String,
        /// What it may read: alerts (CareTeam lookups) and history (AuditEvent); repeat for
        /// both. Default: both.
        #[arg(long = "may", value_parser = ["alerts", "history"])]
        may: Vec<String>,
        /// Days its token is accepted for, from today (1 to 730).
        #[arg(long, default_value_t = cpis_node::accounts::SYSTEM_TOKEN_DAYS_DEFAULT)]
        valid_days: u32,
    },
    /// Gives a calling system a new bearer token (printed once) accepted for --valid-days; its
    /// old token stops working as soon as the gateway reads the file again.
    RenewSystem {
        #[command(flatten)]
        gateway: GatewayArg,
        /// The system's short name.
        #[arg(long)]
        system: String,
        /// Days the new token is accepted for, from today (1 to 730).
        #[arg(long, default_value_t = cpis_node::accounts::SYSTEM_TOKEN_DAYS_DEFAULT)]
        valid_days: u32,
    },
    /// Disables a person or a calling system by name (the entry stays, for the audit log).
    Disable {
        #[command(flatten)]
        gateway: GatewayArg,
        /// The user name or system name.
        #[arg(long)]
        name: String,
    },
    /// Lists people and systems (never a password or token).
    List {
        #[command(flatten)]
        gateway: GatewayArg,
    },
}

#[derive(Args)]
struct LookupArgs {
    /// The NHS number, e.g. "943 476 5919"; checked before anything is sent.
    #[arg(long)]
    nhs: String,
    /// The setting's config file.
    #[arg(long, default_value = "setting.toml")]
    config: PathBuf,
    /// Look up through this setting gateway's FHIR API instead (`http://127.0.0.1:PORT`, as in
    /// the gateway's http.addr), as a calling system: needs --token-file.
    #[arg(long, requires = "token_file")]
    gateway: Option<String>,
    /// A file holding the calling system's bearer token (`cpis gateway add-system`).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The user id of the person looking.
    #[arg(long)]
    user_id: String,
    #[arg(long)]
    user_name: String,
    /// Their role, e.g. "Staff nurse".
    #[arg(long)]
    role: String,
}

#[derive(Args)]
struct DemoArgs {
    /// Keep the federation's files in this new folder instead of a temporary one.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// After the story, keep the federation up this many seconds (or until Ctrl-C) with a
    /// setting gateway: prints the clinician page, the FHIR base and demonstration sign-ins.
    #[arg(long, value_name = "SECONDS")]
    serve: Option<u64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cpis_tools::api::set_request_timeout(std::time::Duration::from_secs(cli.timeout));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let json = cli.json;
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            if json {
                println!("{}", failure.json());
            }
            eprintln!("error: {}", commands::message(&failure.error));
            ExitCode::from(failure.code)
        }
    }
}
