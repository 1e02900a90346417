//! Admin-only routes: the audit log, API tokens and users of the caller's organisation.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::TimeDelta;
use domain::{TokenId, UserId};
use serde_json::json;

use super::common::{Checks, audit, not_found_as};
use super::routers::page;
use crate::auth::{Caller, generate_token, hash_token, random_alnum};
use crate::dto::{
    AuditView, CreateToken, CreateUser, NewTokenView, NewUserView, PageQuery, TokenView,
    UpdateUser, UserView, timestamp,
};
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery, parse_id};
use crate::state::AppState;

/// The shortest password a user may be given.
const MIN_PASSWORD: usize = 12;

/// The organisation's audit log, newest first.
#[utoipa::path(
    get,
    path = "/api/audit",
    tag = "admin",
    params(PageQuery),
    responses(
        (status = 200, description = "Audit entries, newest first", body = [AuditView]),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Admins only", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad paging", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn audit_list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Vec<AuditView>>, ApiError> {
    caller.require_admin()?;
    let page = page(&q)?;
    let entries = state.store.list_audit(caller.org_id, page).await?;
    Ok(Json(
        entries
            .into_iter()
            .map(|e| AuditView {
                id: e.id.to_string(),
                at: timestamp(e.at),
                actor: e.actor,
                actor_address: e.actor_address.map(|a| a.to_string()),
                action: e.action,
                target: e.target,
                details: e.details,
            })
            .collect(),
    ))
}

fn token_view(t: &store::ApiToken) -> TokenView {
    TokenView {
        id: t.id.to_string(),
        name: t.name.clone(),
        role: t.role.into(),
        created_at: timestamp(t.created_at),
        expires_at: t.expires_at.map(timestamp),
        last_used_at: t.last_used_at.map(timestamp),
    }
}

/// The organisation's API tokens (never their secrets).
#[utoipa::path(
    get,
    path = "/api/tokens",
    tag = "admin",
    responses(
        (status = 200, description = "Tokens", body = [TokenView]),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Admins only", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn tokens_list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    caller.require_admin()?;
    let tokens = state.store.list_api_tokens(caller.org_id).await?;
    Ok(Json(tokens.iter().map(token_view).collect()))
}

/// Makes an API token; the response is the only time its secret is shown.
#[utoipa::path(
    post,
    path = "/api/tokens",
    tag = "admin",
    request_body = CreateToken,
    responses(
        (status = 201, description = "Created: keep `token`, it is not shown again", body = NewTokenView),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Admins only", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn tokens_post(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateToken>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require_admin()?;
    let mut checks = Checks::default();
    let name = checks.take(domain::rules::token_name(&req.name));
    let now = state.now();
    let expires_at = match req.expires_in_days {
        Some(d) if (1..=3650).contains(&d) => Some(now + TimeDelta::days(d)),
        Some(_) => {
            checks.push("expires_in_days", "must be between 1 and 3650");
            None
        }
        None => None,
    };
    checks.finish()?;
    let Some(name) = name else {
        return Err(ApiError::Internal(
            "validation passed without values".into(),
        ));
    };
    let secret = generate_token();
    let token = state
        .store
        .create_api_token(store::NewApiToken {
            org_id: caller.org_id,
            name: name.clone(),
            role: req.role.into(),
            token_hash: hash_token(&secret),
            created_by: caller.user_id,
            expires_at,
        })
        .await?;
    state
        .store
        .append_audit(audit(
            &caller,
            now,
            "token.create",
            Some(format!("token:{}", token.id)),
            json!({ "name": name, "role": token.role.as_str() }),
        ))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(NewTokenView {
            info: token_view(&token),
            token: secret,
        }),
    ))
}

/// Deletes an API token; it stops working at once.
#[utoipa::path(
    delete,
    path = "/api/tokens/{token_id}",
    tag = "admin",
    params(("token_id" = String, Path, description = "Token id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Admins only", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found in your organisation", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn token_delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(token_id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let id: TokenId = parse_id(&token_id, "token")?;
    state
        .store
        .delete_api_token(caller.org_id, id)
        .await
        .map_err(|e| not_found_as(e, "token"))?;
    state.tokens.forget(id);
    state
        .store
        .append_audit(audit(
            &caller,
            state.now(),
            "token.delete",
            Some(format!("token:{id}")),
            json!({}),
        ))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn user_view(u: &store::User) -> UserView {
    UserView {
        id: u.id.to_string(),
        username: u.username.clone(),
        role: u.role.into(),
        disabled: u.disabled,
        created_at: timestamp(u.created_at),
    }
}

/// The organisation's users.
#[utoipa::path(
    get,
    path = "/api/users",
    tag = "admin",
    responses(
        (status = 200, description = "Users", body = [UserView]),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Admins only", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn users_list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<UserView>>, ApiError> {
    caller.require_admin()?;
    let users = state.store.list_users(caller.org_id).await?;
    Ok(Json(users.iter().map(user_view).collect()))
}

/// Adds a user; without `password`, one is generated and shown once.
#[utoipa::path(
    post,
    path = "/api/users",
    tag = "admin",
    request_body = CreateUser,
    responses(
        (status = 201, description = "Created", body = NewUserView),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Admins only", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The user name is taken in this organisation (names are per organisation)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Too many passwords are being hashed at once; `Retry-After` says when to try again", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn users_post(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateUser>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require_admin()?;
    let mut checks = Checks::default();
    let username = checks.take(domain::rules::username(&req.username));
    if let Some(p) = &req.password
        && !(MIN_PASSWORD..=1024).contains(&p.chars().count())
    {
        checks.push(
            "password",
            format!("must be between {MIN_PASSWORD} and 1024 characters"),
        );
    }
    checks.finish()?;
    let Some(username) = username else {
        return Err(ApiError::Internal(
            "validation passed without values".into(),
        ));
    };
    let generated = req.password.is_none();
    let password = req.password.unwrap_or_else(|| random_alnum(20, false));
    let password_hash = state.hashing.hash(password.clone()).await?;
    let now = state.now();
    let user = state
        .store
        .create_user(store::NewUser {
            org_id: caller.org_id,
            username: username.clone(),
            role: req.role.into(),
            password_hash,
        })
        .await?;
    state
        .store
        .append_audit(audit(
            &caller,
            now,
            "user.create",
            Some(format!("user:{}", user.id)),
            json!({ "username": username, "role": user.role.as_str() }),
        ))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(NewUserView {
            user: user_view(&user),
            password: generated.then_some(password),
        }),
    ))
}

/// Changes a user's role or disables them.
#[utoipa::path(
    patch,
    path = "/api/users/{user_id}",
    tag = "admin",
    params(("user_id" = String, Path, description = "User id")),
    request_body = UpdateUser,
    responses(
        (status = 200, description = "The user as changed", body = UserView),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Admins only", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found in your organisation", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn user_patch(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(user_id): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateUser>,
) -> Result<Json<UserView>, ApiError> {
    caller.require_admin()?;
    let id: UserId = parse_id(&user_id, "user")?;
    // Existence first, so a bad id is 404 whatever the body says.
    state
        .store
        .get_user(caller.org_id, id)
        .await
        .map_err(|e| not_found_as(e, "user"))?;
    if req.role.is_none() && req.disabled.is_none() {
        return Err(ApiError::field("role", "give role or disabled"));
    }
    if let Some(role) = req.role {
        state
            .store
            .set_user_role(caller.org_id, id, role.into())
            .await
            .map_err(|e| not_found_as(e, "user"))?;
    }
    if let Some(disabled) = req.disabled {
        state
            .store
            .set_user_disabled(caller.org_id, id, disabled)
            .await
            .map_err(|e| not_found_as(e, "user"))?;
    }
    let user = state
        .store
        .get_user(caller.org_id, id)
        .await
        .map_err(|e| not_found_as(e, "user"))?;
    state
        .store
        .append_audit(audit(
            &caller,
            state.now(),
            "user.update",
            Some(format!("user:{id}")),
            json!({ "role": req.role.map(|r| domain::Role::from(r).as_str()), "disabled": req.disabled }),
        ))
        .await?;
    Ok(Json(user_view(&user)))
}

/// Removes a user.
#[utoipa::path(
    delete,
    path = "/api/users/{user_id}",
    tag = "admin",
    params(("user_id" = String, Path, description = "User id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Admins only", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found in your organisation", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn user_delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(user_id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let id: UserId = parse_id(&user_id, "user")?;
    state
        .store
        .delete_user(caller.org_id, id)
        .await
        .map_err(|e| not_found_as(e, "user"))?;
    state
        .store
        .append_audit(audit(
            &caller,
            state.now(),
            "user.delete",
            Some(format!("user:{id}")),
            json!({}),
        ))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
