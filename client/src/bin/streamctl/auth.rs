//! `streamctl auth`: who am I, what may I do, and the broker's principals,
//! API tokens and grants. Everything but `whoami` and `can` needs
//! `admin:auth` on `cluster` (the bootstrap token's principal has it).
//!
//! `token create` prints the new token once, alone on stdout (or in the
//! JSON), so it can be piped into a file; the broker keeps only its hash.

use clap::Subcommand;
use client::types as pb;
use client::{Access, allow, deny};
use serde_json::json;

use crate::output::{note_empty, print, print_json, table};
use crate::time::{format_rfc3339, parse_duration};
use crate::{CliError, Global};

#[derive(Debug, Subcommand)]
pub enum AuthCmd {
    /// Who the broker takes this caller for, how it was proven, and its grants.
    #[command(name = "whoami")]
    WhoAmI,
    /// Whether this caller may do ACTION (record:put) on RESOURCE
    /// (stream:<name>, group:<stream>/<group> or cluster) now, by the
    /// broker's own rule; exits 1 when not.
    Can { action: String, resource: String },
    /// Create, list and delete principals.
    #[command(subcommand)]
    Principal(PrincipalCmd),
    /// Create, list and revoke API tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Add, list and remove grants.
    #[command(subcommand)]
    Grant(GrantCmd),
}

#[derive(Debug, Subcommand)]
pub enum PrincipalCmd {
    /// Create a principal (1..=128 of [a-zA-Z0-9_.@-]).
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List every principal.
    #[command(alias = "ls")]
    List,
    /// Delete a principal with its tokens and grants (needs --yes).
    Delete {
        name: String,
        /// Really delete it.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Issue a token for a principal; the token is printed this once.
    Create {
        principal: String,
        /// How long it works (`90s`, `30m`, `12h`, `720h`); default: until revoked.
        #[arg(long)]
        ttl: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List tokens (ids, never the tokens), of one principal or all.
    #[command(alias = "ls")]
    List {
        #[arg(long)]
        principal: Option<String>,
    },
    /// Revoke a token by id; its long-lived calls end within the broker's re-check interval.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum GrantCmd {
    /// Allow (or with --deny, deny) ACTION on RESOURCE to PRINCIPAL.
    ///
    /// ACTION: stream:create|delete|describe|configure, record:put|get,
    /// group:read|commit|admin, admin:auth|repair|metrics|account, a family
    /// (record:*) or *. RESOURCE: stream:NAME, group:STREAM/GROUP, cluster,
    /// a prefix ending in * (stream:orders-*), or *.
    Add {
        principal: String,
        action: String,
        resource: String,
        /// A deny grant, which wins over every allow.
        #[arg(long)]
        deny: bool,
    },
    /// Remove a grant (the same four values it was added with).
    Remove {
        principal: String,
        action: String,
        resource: String,
        #[arg(long)]
        deny: bool,
    },
    /// List grants, of one principal or all.
    #[command(alias = "ls")]
    List {
        #[arg(long)]
        principal: Option<String>,
    },
}

fn effect_name(effect: i32) -> &'static str {
    match pb::Effect::try_from(effect) {
        Ok(pb::Effect::Deny) => "deny",
        Ok(pb::Effect::Allow) => "allow",
        _ => "unknown",
    }
}

fn grant_json(g: &pb::Grant) -> serde_json::Value {
    json!({ "principal": g.principal, "effect": effect_name(g.effect), "action": g.action, "resource": g.resource })
}

fn grant_rows(grants: &[pb::Grant]) -> Vec<Vec<String>> {
    grants
        .iter()
        .map(|g| vec![g.principal.clone(), effect_name(g.effect).into(), g.action.clone(), g.resource.clone()])
        .collect()
}

/// A time in ms since the epoch, or `-` for 0 (never).
fn when(ms: u64) -> String {
    if ms == 0 { "-".into() } else { format_rfc3339(ms) }
}

fn token_json(t: &pb::TokenInfo) -> serde_json::Value {
    json!({
        "id": t.id,
        "principal": t.principal,
        "description": t.description,
        "created_at_ms": t.created_at_ms,
        "expires_at_ms": t.expires_at_ms,
        "revoked_at_ms": t.revoked_at_ms,
    })
}

pub async fn run(g: &Global, cmd: AuthCmd) -> Result<(), CliError> {
    let access = Access::from_channel(g.channel().await?);
    match cmd {
        AuthCmd::WhoAmI => {
            let me = access.who_am_i().await?;
            if g.json {
                return print_json(&json!({
                    "principal": me.principal,
                    "credential": me.credential,
                    "token_id": me.token_id,
                    "authentication_enabled": me.authentication_enabled,
                    "super_user": me.super_user,
                    "grants": me.grants.iter().map(grant_json).collect::<Vec<_>>(),
                }));
            }
            let mut out = if !me.authentication_enabled {
                "anonymous (authentication is off on this broker: every caller may do everything)\n".to_string()
            } else if me.principal.is_empty() {
                "anonymous\n".to_string()
            } else {
                let by = match me.token_id.as_str() {
                    "" => me.credential.clone(),
                    id => format!("{} {id}", me.credential),
                };
                let su = if me.super_user { ", allowed everything" } else { "" };
                format!("{} (by {by}{su})\n", me.principal)
            };
            if !me.grants.is_empty() {
                out.push_str(&table(&["PRINCIPAL", "EFFECT", "ACTION", "RESOURCE"], &grant_rows(&me.grants)));
            }
            print(&out)
        }
        AuthCmd::Can { action, resource } => {
            let r = access.check_access(&action, &resource).await?;
            let who = if r.principal.is_empty() { "anonymous" } else { r.principal.as_str() };
            if g.json {
                print_json(&json!({
                    "principal": r.principal,
                    "action": action,
                    "resource": resource,
                    "allowed": r.allowed,
                    "authentication_enabled": r.authentication_enabled,
                }))?;
            } else if r.allowed {
                print(&format!("{who} may {action} on {resource}\n"))?;
            }
            if r.allowed { Ok(()) } else { Err(CliError::failed(format!("{who} may not {action} on {resource}"))) }
        }
        AuthCmd::Principal(PrincipalCmd::Create { name, description }) => {
            let p = access.create_principal(&name, &description).await?;
            if g.json {
                return print_json(&json!({ "name": p.name, "description": p.description }));
            }
            print(&format!("created principal {}\n", p.name))
        }
        AuthCmd::Principal(PrincipalCmd::List) => {
            let ps = access.list_principals().await?;
            if g.json {
                let v: Vec<_> = ps
                    .iter()
                    .map(|p| json!({ "name": p.name, "description": p.description, "created_at_ms": p.created_at_ms }))
                    .collect();
                return print_json(&json!({ "principals": v }));
            }
            if ps.is_empty() {
                note_empty("principals");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = ps
                .iter()
                .map(|p| vec![p.name.clone(), format_rfc3339(p.created_at_ms), p.description.clone()])
                .collect();
            print(&table(&["NAME", "CREATED", "DESCRIPTION"], &rows))
        }
        AuthCmd::Principal(PrincipalCmd::Delete { name, yes }) => {
            if !yes {
                return Err(CliError::failed(format!(
                    "would delete principal {name} with its tokens and grants; run again with --yes"
                )));
            }
            let (tokens, grants) = access.delete_principal(&name).await?;
            if g.json {
                return print_json(&json!({ "deleted": name, "tokens_removed": tokens, "grants_removed": grants }));
            }
            print(&format!("deleted principal {name} ({tokens} tokens, {grants} grants)\n"))
        }
        AuthCmd::Token(TokenCmd::Create { principal, ttl, description }) => {
            let ttl =
                ttl.map(|t| parse_duration(&t).map_err(|e| CliError::usage(format!("--ttl: {e}")))).transpose()?;
            let (info, token) = access.create_token(&principal, &description, ttl).await?;
            if g.json {
                let mut v = token_json(&info);
                v["token"] = json!(token.expose());
                return print_json(&v);
            }
            // The token alone on stdout, so `> file` keeps it; what it is goes to stderr.
            eprintln!("token {} for {} (shown once; the broker keeps only its hash)", info.id, info.principal);
            print(&format!("{}\n", token.expose()))
        }
        AuthCmd::Token(TokenCmd::List { principal }) => {
            let ts = access.list_tokens(principal.as_deref()).await?;
            if g.json {
                return print_json(&json!({ "tokens": ts.iter().map(token_json).collect::<Vec<_>>() }));
            }
            if ts.is_empty() {
                note_empty("tokens");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = ts
                .iter()
                .map(|t| {
                    vec![
                        t.id.clone(),
                        t.principal.clone(),
                        format_rfc3339(t.created_at_ms),
                        when(t.expires_at_ms),
                        when(t.revoked_at_ms),
                        t.description.clone(),
                    ]
                })
                .collect();
            print(&table(&["ID", "PRINCIPAL", "CREATED", "EXPIRES", "REVOKED", "DESCRIPTION"], &rows))
        }
        AuthCmd::Token(TokenCmd::Revoke { id }) => {
            let t = access.revoke_token(&id).await?;
            if g.json {
                return print_json(&token_json(&t));
            }
            print(&format!("revoked token {} of {}\n", t.id, t.principal))
        }
        AuthCmd::Grant(GrantCmd::Add { principal, action, resource, deny: is_deny }) => {
            let grant =
                if is_deny { deny(&principal, &action, &resource) } else { allow(&principal, &action, &resource) };
            let added = access.add_grant(grant.clone()).await?;
            if g.json {
                return print_json(&json!({ "grant": grant_json(&grant), "added": added }));
            }
            let what = if added { "added" } else { "already present:" };
            print(&format!("{what} {} {} {} {}\n", principal, effect_name(grant.effect), action, resource))
        }
        AuthCmd::Grant(GrantCmd::Remove { principal, action, resource, deny: is_deny }) => {
            let grant =
                if is_deny { deny(&principal, &action, &resource) } else { allow(&principal, &action, &resource) };
            let removed = access.remove_grant(grant.clone()).await?;
            if g.json {
                return print_json(&json!({ "grant": grant_json(&grant), "removed": removed }));
            }
            if !removed {
                return Err(CliError::failed(format!(
                    "no such grant: {principal} {} {action} {resource}",
                    effect_name(grant.effect)
                )));
            }
            print(&format!("removed {} {} {} {}\n", principal, effect_name(grant.effect), action, resource))
        }
        AuthCmd::Grant(GrantCmd::List { principal }) => {
            let gs = access.list_grants(principal.as_deref()).await?;
            if g.json {
                return print_json(&json!({ "grants": gs.iter().map(grant_json).collect::<Vec<_>>() }));
            }
            if gs.is_empty() {
                note_empty("grants");
                return Ok(());
            }
            print(&table(&["PRINCIPAL", "EFFECT", "ACTION", "RESOURCE"], &grant_rows(&gs)))
        }
    }
}
