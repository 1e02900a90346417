//! Organisations, users and API tokens.

use chrono::{DateTime, Utc};
use domain::{OrgId, Role, TokenId, UserId};

use crate::Store;
use crate::db::{Get, db, db_write, ms, now, opt_ms, trunc};
use crate::error::{Result, StoreError};
use crate::records::{ApiToken, NewApiToken, NewUser, Organisation, User};

macro_rules! user_sql {
    ($tail:literal) => {
        concat!(
            "SELECT id, org_id, username, role, password_hash, disabled, created_at FROM users ",
            $tail
        )
    };
}

macro_rules! token_sql {
    ($tail:literal) => {
        concat!(
            "SELECT id, org_id, name, role, token_hash, created_by, created_at, expires_at, last_used_at FROM api_tokens ",
            $tail
        )
    };
}

fn user_from(r: &impl Get) -> Result<User> {
    Ok(User {
        id: r.parse("id")?,
        org_id: r.parse("org_id")?,
        username: r.text("username")?,
        role: r.parse("role")?,
        password_hash: r.text("password_hash")?,
        disabled: r.flag("disabled")?,
        created_at: r.time("created_at")?,
    })
}

fn token_from(r: &impl Get) -> Result<ApiToken> {
    Ok(ApiToken {
        id: r.parse("id")?,
        org_id: r.parse("org_id")?,
        name: r.text("name")?,
        role: r.parse("role")?,
        token_hash: r.text("token_hash")?,
        created_by: r.opt_parse("created_by")?,
        created_at: r.time("created_at")?,
        expires_at: r.opt_time("expires_at")?,
        last_used_at: r.opt_time("last_used_at")?,
    })
}

impl Store {
    /// Creates an organisation.
    pub async fn create_organisation(&self, name: &str) -> Result<Organisation> {
        let _writer = self.sqlite_writer().await;
        let org = Organisation {
            id: OrgId::new(),
            name: name.to_owned(),
            created_at: now(),
        };
        db_write!(self, |p, pg| {
            sqlx::query("INSERT INTO organisations (id, name, created_at) VALUES ($1, $2, $3)")
                .bind(org.id.to_string())
                .bind(&org.name)
                .bind(ms(org.created_at))
                .execute(p)
                .await?;
        });
        Ok(org)
    }

    /// An organisation by id.
    pub async fn get_organisation(&self, id: OrgId) -> Result<Organisation> {
        let row = db!(self, |p, pg| {
            let row = sqlx::query("SELECT id, name, created_at FROM organisations WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(p)
                .await?;
            row.map(|r| -> Result<Organisation> {
                Ok(Organisation {
                    id: r.parse("id")?,
                    name: r.text("name")?,
                    created_at: r.time("created_at")?,
                })
            })
            .transpose()?
        });
        row.ok_or(StoreError::NotFound)
    }

    /// Every organisation, oldest first (the first is the one made at first start).
    pub async fn list_organisations(&self) -> Result<Vec<Organisation>> {
        db!(self, |p, pg| {
            let rows = sqlx::query(
                "SELECT id, name, created_at FROM organisations ORDER BY created_at, id",
            )
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(Organisation {
                        id: r.parse("id")?,
                        name: r.text("name")?,
                        created_at: r.time("created_at")?,
                    })
                })
                .collect()
        })
    }

    /// How many users exist in all organisations (zero on first start).
    pub async fn count_users(&self) -> Result<u64> {
        let n = db!(self, |p, pg| {
            let r = sqlx::query("SELECT COUNT(*) AS n FROM users")
                .fetch_one(p)
                .await?;
            r.int("n")?
        });
        u64::try_from(n).map_err(|_| StoreError::Corrupt("negative count".into()))
    }

    /// Creates a user; `Conflict` if the username is taken in its organisation
    /// (usernames are per organisation: another tenant's names are never revealed).
    pub async fn create_user(&self, new: NewUser) -> Result<User> {
        let _writer = self.sqlite_writer().await;
        let user = User {
            id: UserId::new(),
            org_id: new.org_id,
            username: new.username,
            role: new.role,
            password_hash: new.password_hash,
            disabled: false,
            created_at: now(),
        };
        db_write!(self, |p, pg| {
            sqlx::query(
                "INSERT INTO users (id, org_id, username, role, password_hash, disabled, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(user.id.to_string())
            .bind(user.org_id.to_string())
            .bind(&user.username)
            .bind(user.role.as_str())
            .bind(&user.password_hash)
            .bind(user.disabled)
            .bind(ms(user.created_at))
            .execute(p)
            .await
            .map_err(|e| {
                StoreError::unique(e, || format!("a user named {:?} already exists", user.username))
            })?;
        });
        Ok(user)
    }

    /// The user of `org` with this login name.
    pub async fn find_user(&self, org: OrgId, username: &str) -> Result<Option<User>> {
        if username.contains('\0') {
            // PostgreSQL refuses NUL in text; such a name cannot exist.
            return Ok(None);
        }
        db!(self, |p, pg| {
            let row = sqlx::query(user_sql!("WHERE org_id = $1 AND username = $2"))
                .bind(org.to_string())
                .bind(username)
                .fetch_optional(p)
                .await?;
            row.map(|r| user_from(&r)).transpose()
        })
    }

    /// The organisation with this name (the oldest, should two share it), for sign-in.
    pub async fn find_organisation_by_name(&self, name: &str) -> Result<Option<Organisation>> {
        if name.contains('\0') {
            return Ok(None);
        }
        db!(self, |p, pg| {
            let row = sqlx::query(
                "SELECT id, name, created_at FROM organisations WHERE name = $1 \
                 ORDER BY created_at, id LIMIT 1",
            )
            .bind(name)
            .fetch_optional(p)
            .await?;
            row.map(|r| -> Result<Organisation> {
                Ok(Organisation {
                    id: r.parse("id")?,
                    name: r.text("name")?,
                    created_at: r.time("created_at")?,
                })
            })
            .transpose()
        })
    }

    /// The organisation a sign-in that names none means: the one named "default"
    /// (first start makes it), or else the only one, if there is exactly one.
    pub async fn default_organisation(&self) -> Result<Option<Organisation>> {
        if let Some(org) = self.find_organisation_by_name("default").await? {
            return Ok(Some(org));
        }
        let mut all = self.list_organisations().await?;
        Ok(if all.len() == 1 { all.pop() } else { None })
    }

    /// A user of `org`.
    pub async fn get_user(&self, org: OrgId, id: UserId) -> Result<User> {
        let user = db!(self, |p, pg| {
            let row = sqlx::query(user_sql!("WHERE id = $1 AND org_id = $2"))
                .bind(id.to_string())
                .bind(org.to_string())
                .fetch_optional(p)
                .await?;
            row.map(|r| user_from(&r)).transpose()?
        });
        user.ok_or(StoreError::NotFound)
    }

    /// The users of `org`, by username.
    pub async fn list_users(&self, org: OrgId) -> Result<Vec<User>> {
        db!(self, |p, pg| {
            let rows = sqlx::query(user_sql!("WHERE org_id = $1 ORDER BY username"))
                .bind(org.to_string())
                .fetch_all(p)
                .await?;
            rows.iter().map(user_from).collect()
        })
    }

    /// Changes a user's role.
    pub async fn set_user_role(&self, org: OrgId, id: UserId, role: Role) -> Result<User> {
        let _writer = self.sqlite_writer().await;
        let changed = db_write!(self, |p, pg| {
            sqlx::query("UPDATE users SET role = $3 WHERE id = $1 AND org_id = $2")
                .bind(id.to_string())
                .bind(org.to_string())
                .bind(role.as_str())
                .execute(p)
                .await?
                .rows_affected()
        });
        if changed == 0 {
            return Err(StoreError::NotFound);
        }
        self.get_user(org, id).await
    }

    /// Disables or enables a user.
    pub async fn set_user_disabled(&self, org: OrgId, id: UserId, disabled: bool) -> Result<User> {
        let _writer = self.sqlite_writer().await;
        let changed = db_write!(self, |p, pg| {
            sqlx::query("UPDATE users SET disabled = $3 WHERE id = $1 AND org_id = $2")
                .bind(id.to_string())
                .bind(org.to_string())
                .bind(disabled)
                .execute(p)
                .await?
                .rows_affected()
        });
        if changed == 0 {
            return Err(StoreError::NotFound);
        }
        self.get_user(org, id).await
    }

    /// Changes a user's password hash.
    pub async fn set_user_password_hash(&self, org: OrgId, id: UserId, hash: &str) -> Result<()> {
        let _writer = self.sqlite_writer().await;
        let changed = db_write!(self, |p, pg| {
            sqlx::query("UPDATE users SET password_hash = $3 WHERE id = $1 AND org_id = $2")
                .bind(id.to_string())
                .bind(org.to_string())
                .bind(hash)
                .execute(p)
                .await?
                .rows_affected()
        });
        if changed == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Deletes a user (tokens it created stay, with `created_by` cleared).
    pub async fn delete_user(&self, org: OrgId, id: UserId) -> Result<()> {
        let _writer = self.sqlite_writer().await;
        let changed = db_write!(self, |p, pg| {
            sqlx::query("DELETE FROM users WHERE id = $1 AND org_id = $2")
                .bind(id.to_string())
                .bind(org.to_string())
                .execute(p)
                .await?
                .rows_affected()
        });
        if changed == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Records a new API token by its hash; `Conflict` if the hash exists.
    pub async fn create_api_token(&self, new: NewApiToken) -> Result<ApiToken> {
        let _writer = self.sqlite_writer().await;
        let token = ApiToken {
            id: TokenId::new(),
            org_id: new.org_id,
            name: new.name,
            role: new.role,
            token_hash: new.token_hash,
            created_by: new.created_by,
            created_at: now(),
            expires_at: new.expires_at.map(trunc),
            last_used_at: None,
        };
        db_write!(self, |p, pg| {
            sqlx::query(
                "INSERT INTO api_tokens (id, org_id, name, role, token_hash, created_by, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(token.id.to_string())
            .bind(token.org_id.to_string())
            .bind(&token.name)
            .bind(token.role.as_str())
            .bind(&token.token_hash)
            .bind(token.created_by.map(|u| u.to_string()))
            .bind(ms(token.created_at))
            .bind(opt_ms(token.expires_at))
            .execute(p)
            .await
            .map_err(|e| StoreError::unique(e, || "a token with this hash already exists".into()))?;
        });
        Ok(token)
    }

    /// The token with this hash, in any organisation (expired ones too: the caller
    /// checks `expires_at`).
    pub async fn find_api_token_by_hash(&self, token_hash: &str) -> Result<Option<ApiToken>> {
        if token_hash.contains('\0') {
            // PostgreSQL refuses NUL in text; such a name cannot exist.
            return Ok(None);
        }
        db!(self, |p, pg| {
            let row = sqlx::query(token_sql!("WHERE token_hash = $1"))
                .bind(token_hash)
                .fetch_optional(p)
                .await?;
            row.map(|r| token_from(&r)).transpose()
        })
    }

    /// Whether a token still exists (a cached token is checked with this: one indexed
    /// read, so a deleted token stops working at once in every process).
    pub async fn api_token_exists(&self, id: TokenId) -> Result<bool> {
        db!(self, |p, pg| {
            Ok(sqlx::query("SELECT id FROM api_tokens WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(p)
                .await?
                .is_some())
        })
    }

    /// Records a use of a token.
    pub async fn touch_api_token(&self, id: TokenId, at: DateTime<Utc>) -> Result<()> {
        let _writer = self.sqlite_writer().await;
        let changed = db_write!(self, |p, pg| {
            sqlx::query("UPDATE api_tokens SET last_used_at = $2 WHERE id = $1")
                .bind(id.to_string())
                .bind(ms(at))
                .execute(p)
                .await?
                .rows_affected()
        });
        if changed == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// The tokens of `org`, newest first.
    pub async fn list_api_tokens(&self, org: OrgId) -> Result<Vec<ApiToken>> {
        db!(self, |p, pg| {
            let rows = sqlx::query(token_sql!("WHERE org_id = $1 ORDER BY created_at DESC, id"))
                .bind(org.to_string())
                .fetch_all(p)
                .await?;
            rows.iter().map(token_from).collect()
        })
    }

    /// Deletes (revokes) a token.
    pub async fn delete_api_token(&self, org: OrgId, id: TokenId) -> Result<()> {
        let _writer = self.sqlite_writer().await;
        let changed = db_write!(self, |p, pg| {
            sqlx::query("DELETE FROM api_tokens WHERE id = $1 AND org_id = $2")
                .bind(id.to_string())
                .bind(org.to_string())
                .execute(p)
                .await?
                .rows_affected()
        });
        if changed == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}
