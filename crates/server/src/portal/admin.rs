//! The admin pages: users, API tokens and the audit log of the organisation (read-only
//! lists; admins only).

use askama::Template;
use axum::extract::State;
use axum::response::Response;

use super::error::PortalError;
use super::session::Signed;
use super::{Layout, human, render};
use crate::state::AppState;

fn admin_only(signed: &Signed) -> Result<(), PortalError> {
    if signed.caller.role.is_admin() {
        Ok(())
    } else {
        Err(PortalError::NotAllowed)
    }
}

struct UserRow {
    username: String,
    role: &'static str,
    state: &'static str,
    created: String,
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    l: Layout,
    rows: Vec<UserRow>,
}

/// `GET /users`.
pub async fn users_get(
    State(state): State<AppState>,
    signed: Signed,
) -> Result<Response, PortalError> {
    admin_only(&signed)?;
    let rows = state
        .store
        .list_users(signed.caller.org_id)
        .await?
        .into_iter()
        .map(|u| UserRow {
            username: u.username,
            role: u.role.as_str(),
            state: if u.disabled { "disabled" } else { "active" },
            created: human(u.created_at),
        })
        .collect();
    render(&UsersPage {
        l: Layout::new(&state, &signed, "Users", "users"),
        rows,
    })
}

struct TokenRow {
    name: String,
    role: &'static str,
    created: String,
    expires: String,
    last_used: String,
}

#[derive(Template)]
#[template(path = "tokens.html")]
struct TokensPage {
    l: Layout,
    rows: Vec<TokenRow>,
}

/// `GET /tokens`.
pub async fn tokens_get(
    State(state): State<AppState>,
    signed: Signed,
) -> Result<Response, PortalError> {
    admin_only(&signed)?;
    let rows = state
        .store
        .list_api_tokens(signed.caller.org_id)
        .await?
        .into_iter()
        .map(|t| TokenRow {
            name: t.name,
            role: t.role.as_str(),
            created: human(t.created_at),
            expires: t.expires_at.map_or_else(|| "never".into(), human),
            last_used: t.last_used_at.map_or_else(|| "never".into(), human),
        })
        .collect();
    render(&TokensPage {
        l: Layout::new(&state, &signed, "API tokens", "tokens"),
        rows,
    })
}

struct AuditRow {
    at: String,
    actor: String,
    address: String,
    action: String,
    target: String,
    details: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    l: Layout,
    rows: Vec<AuditRow>,
}

/// `GET /audit`: the newest 200 entries.
pub async fn audit_get(
    State(state): State<AppState>,
    signed: Signed,
) -> Result<Response, PortalError> {
    admin_only(&signed)?;
    let page = store::Page {
        limit: 200,
        offset: 0,
    };
    let rows = state
        .store
        .list_audit(signed.caller.org_id, page)
        .await?
        .into_iter()
        .map(|e| AuditRow {
            at: human(e.at),
            actor: e.actor,
            address: e.actor_address.map(|a| a.to_string()).unwrap_or_default(),
            action: e.action,
            target: e.target.unwrap_or_default(),
            details: readable(&e.details),
        })
        .collect();
    render(&AuditPage {
        l: Layout::new(&state, &signed, "Audit log", "audit"),
        rows,
    })
}

/// An entry's details for people: `key: value` pairs, strings unquoted.
fn readable(details: &serde_json::Value) -> String {
    match details.as_object() {
        Some(map) => map
            .iter()
            .map(|(k, v)| match v.as_str() {
                Some(text) => format!("{k}: {text}"),
                None => format!("{k}: {v}"),
            })
            .collect::<Vec<_>>()
            .join(" · "),
        None => details.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn details_read_as_pairs() {
        let v = serde_json::json!({"name": "web", "role": "admin", "n": 2});
        assert_eq!(super::readable(&v), "n: 2 · name: web · role: admin");
        assert_eq!(super::readable(&serde_json::json!({})), "");
        assert_eq!(super::readable(&serde_json::json!([1])), "[1]");
    }
}
