//! `cpis gateway …`: a setting gateway's people and calling systems, as text or JSON. The
//! accounts file itself is `cpis_node::accounts`; the running gateway reads it again
//! whenever it changes.

use cpis_node::accounts::Accounts;
use serde_json::{Value, json};
use std::fmt::Write;

/// A new random password: 20 characters from an alphabet with no look-alikes (about 115 bits).
pub fn random_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzACDEFGHJKLMNPQRTUVWXY34679";
    (0..20).map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char).collect()
}

/// `{"users": [{"user", "name", "job", "role", "disabled"}], "systems": [{"system", "name", "disabled"}]}`
pub fn list_json(accounts: &Accounts) -> Value {
    let users: Vec<Value> = accounts
        .users
        .iter()
        .map(|u| json!({ "user": u.user, "name": u.name, "job": u.job, "role": u.role.name(), "disabled": u.disabled }))
        .collect();
    let systems: Vec<Value> = accounts
        .systems
        .iter()
        .map(|s| {
            json!({
                "system": s.system,
                "name": s.name,
                "disabled": s.disabled,
                "may": s.may.iter().map(|a| a.name()).collect::<Vec<_>>(),
                "valid_until": s.valid_until.map(|d| d.to_string()),
            })
        })
        .collect();
    json!({ "users": users, "systems": systems })
}

/// What each `cpis gateway` command prints as text.
pub fn text(v: &Value) -> String {
    let mut out = String::new();
    if let Some(users) = v["users"].as_array() {
        let _ = writeln!(out, "{} people:", users.len());
        for u in users {
            let off = if u["disabled"] == json!(true) { "  (disabled)" } else { "" };
            let _ = writeln!(
                out,
                "  {:<20} {:<18} {} ({}){off}",
                text_of(&u["user"]),
                text_of(&u["role"]),
                text_of(&u["name"]),
                text_of(&u["job"])
            );
        }
        let systems = v["systems"].as_array().map_or(&[][..], Vec::as_slice);
        let _ = writeln!(out, "{} calling systems:", systems.len());
        for s in systems {
            let off = if s["disabled"] == json!(true) { "  (disabled)" } else { "" };
            let may =
                s["may"].as_array().map_or(String::new(), |m| m.iter().map(text_of).collect::<Vec<_>>().join("+"));
            let until = s["valid_until"]
                .as_str()
                .map_or("no expiry (renew it to set one)".into(), |d| format!("token until {d}"));
            let _ = writeln!(out, "  {:<20} {:<15} {until}  {}{off}", text_of(&s["system"]), may, text_of(&s["name"]));
        }
        return out;
    }
    if let Some(user) = v["user"].as_str() {
        let _ = writeln!(out, "{user}: saved in {}", text_of(&v["file"]));
        if let Some(p) = v["password"].as_str() {
            let _ = writeln!(out, "password (shown once; give it to them privately): {p}");
        }
    } else if let Some(system) = v["system"].as_str() {
        let _ = writeln!(out, "system {system}: saved in {}", text_of(&v["file"]));
        let _ = writeln!(out, "bearer token (shown once; only its hash is kept): {}", text_of(&v["token"]));
        let _ = writeln!(out, "accepted until the end of {} (UTC); renew it before then", text_of(&v["valid_until"]));
    } else if let Some(name) = v["disabled"].as_str() {
        let _ = writeln!(out, "{name} disabled in {}", text_of(&v["file"]));
    }
    out
}

fn text_of(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}
