//! Regions (gateways and their port ranges), sites, and routers with their management
//! password encrypted at rest.

use std::collections::HashMap;

use domain::{OrgId, RegionId, RouterId, RouterStatus, SiteId, TokenId};

use crate::Store;
use crate::db::{Get, WritePool, db, db_write, ms, now, opt_ms};
use crate::error::{Result, StoreError};
use crate::records::{NewRegion, NewRouter, Region, Router, RouterFacts, RouterPatch, Site};
use crate::secret::{Secret, Slot};

macro_rules! region_sql {
    ($tail:literal) => {
        concat!(
            "SELECT id, name, entry_point, port_min, port_max, created_at FROM regions ",
            $tail
        )
    };
}

macro_rules! router_sql {
    ($tail:literal) => {
        concat!(
            "SELECT id, org_id, site_id, region_id, name, tunnel_address, api_port, ssh_port, \
             winbox_port, api_tls, api_tls_fingerprint, reach, tunnel_public_key, username, \
             status, identity, routeros_version, board_name, uptime, last_seen_at, created_at, updated_at \
             FROM routers ",
            $tail
        )
    };
}

fn region_from(r: &impl Get) -> Result<Region> {
    Ok(Region {
        id: r.parse("id")?,
        name: r.text("name")?,
        entry_point: r.text("entry_point")?,
        port_min: r.port("port_min")?,
        port_max: r.port("port_max")?,
        created_at: r.time("created_at")?,
    })
}

fn site_from(r: &impl Get) -> Result<Site> {
    Ok(Site {
        id: r.parse("id")?,
        org_id: r.parse("org_id")?,
        name: r.text("name")?,
        created_at: r.time("created_at")?,
    })
}

pub(crate) fn router_from(r: &impl Get) -> Result<Router> {
    Ok(Router {
        id: r.parse("id")?,
        org_id: r.parse("org_id")?,
        site_id: r.parse("site_id")?,
        region_id: r.parse("region_id")?,
        name: r.text("name")?,
        tunnel_address: r.parse("tunnel_address")?,
        api_port: r.port("api_port")?,
        ssh_port: r.port("ssh_port")?,
        winbox_port: r.port("winbox_port")?,
        api_tls: r.flag("api_tls")?,
        api_tls_fingerprint: r.opt_text("api_tls_fingerprint")?,
        reach: r.parse("reach")?,
        tunnel_public_key: r.opt_text("tunnel_public_key")?,
        username: r.text("username")?,
        status: r.parse("status")?,
        identity: r.opt_text("identity")?,
        routeros_version: r.opt_text("routeros_version")?,
        board_name: r.opt_text("board_name")?,
        uptime: r.opt_text("uptime")?,
        last_seen_at: r.opt_time("last_seen_at")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}

pub(crate) fn router_conflict(e: sqlx::Error, name: &str, site: &str) -> StoreError {
    let message = match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            if db.message().contains("tunnel_address")
                || db
                    .constraint()
                    .is_some_and(|c| c.contains("tunnel_address"))
            {
                "another tunnelled router of the region has that tunnel address".to_owned()
            } else if db.message().contains("site_id")
                || db.constraint().is_some_and(|c| c.contains("site_id"))
            {
                format!("site {site:?} already has a router")
            } else {
                format!("a router named {name:?} already exists")
            }
        }
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => "no such region".to_owned(),
        _ => return e.into(),
    };
    StoreError::Conflict(message)
}

impl Store {
    /// Creates a region or updates the one of that name; `Conflict` if the port range is
    /// empty.
    pub async fn upsert_region(&self, new: NewRegion) -> Result<Region> {
        let _writer = self.sqlite_writer().await;
        if new.port_min == 0 || new.port_min > new.port_max {
            return Err(StoreError::Conflict(format!(
                "port range {}-{} is empty",
                new.port_min, new.port_max
            )));
        }
        db_write!(self, |p, pg| {
            let row = sqlx::query(
                "INSERT INTO regions (id, name, entry_point, port_min, port_max, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (name) DO UPDATE SET entry_point = excluded.entry_point, \
                 port_min = excluded.port_min, port_max = excluded.port_max \
                 RETURNING id, name, entry_point, port_min, port_max, created_at",
            )
            .bind(RegionId::new().to_string())
            .bind(&new.name)
            .bind(&new.entry_point)
            .bind(i64::from(new.port_min))
            .bind(i64::from(new.port_max))
            .bind(ms(now()))
            .fetch_one(p)
            .await?;
            region_from(&row)
        })
    }

    /// A region by id.
    pub async fn get_region(&self, id: RegionId) -> Result<Region> {
        let region = db!(self, |p, pg| {
            let row = sqlx::query(region_sql!("WHERE id = $1"))
                .bind(id.to_string())
                .fetch_optional(p)
                .await?;
            row.map(|r| region_from(&r)).transpose()?
        });
        region.ok_or(StoreError::NotFound)
    }

    /// A region by name.
    pub async fn find_region_by_name(&self, name: &str) -> Result<Option<Region>> {
        if name.contains('\0') {
            // PostgreSQL refuses NUL in text; such a name cannot exist.
            return Ok(None);
        }
        db!(self, |p, pg| {
            let row = sqlx::query(region_sql!("WHERE name = $1"))
                .bind(name)
                .fetch_optional(p)
                .await?;
            row.map(|r| region_from(&r)).transpose()
        })
    }

    /// Every region, by name.
    pub async fn list_regions(&self) -> Result<Vec<Region>> {
        db!(self, |p, pg| {
            let rows = sqlx::query(region_sql!("ORDER BY name"))
                .fetch_all(p)
                .await?;
            rows.iter().map(region_from).collect()
        })
    }

    /// Creates a router, and its site when the org has no site of that name (the
    /// router's name when `site_name` is `None`), in one transaction. The password is
    /// encrypted. `Conflict` for a duplicate router name, a site that already has a
    /// router, or an unknown region.
    pub async fn create_router(&self, new: NewRouter) -> Result<Router> {
        let id = RouterId::new();
        let at = now();
        let site_name = new.site_name.clone().unwrap_or_else(|| new.name.clone());
        let sealed =
            self.inner
                .cipher
                .seal(Slot::RouterPassword, &id.to_string(), &new.password)?;
        db_write!(self, |p, pg| {
            let (_guard, mut tx) = p.begin_write(&self.inner.write_lock).await?;
            sqlx::query(
                "INSERT INTO sites (id, org_id, name, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (org_id, name) DO NOTHING",
            )
            .bind(SiteId::new().to_string())
            .bind(new.org_id.to_string())
            .bind(&site_name)
            .bind(ms(at))
            .execute(&mut *tx)
            .await?;
            let site = sqlx::query("SELECT id FROM sites WHERE org_id = $1 AND name = $2")
                .bind(new.org_id.to_string())
                .bind(&site_name)
                .fetch_one(&mut *tx)
                .await?;
            let site_id: String = site.text("id")?;
            sqlx::query(
                "INSERT INTO routers (id, org_id, site_id, region_id, name, tunnel_address, api_port, \
                 ssh_port, winbox_port, username, password, status, created_at, updated_at, \
                 api_tls, api_tls_fingerprint) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, $14, $15)",
            )
            .bind(id.to_string())
            .bind(new.org_id.to_string())
            .bind(&site_id)
            .bind(new.region_id.to_string())
            .bind(&new.name)
            .bind(new.tunnel_address.to_string())
            .bind(i64::from(new.api_port))
            .bind(i64::from(new.ssh_port))
            .bind(i64::from(new.winbox_port))
            .bind(&new.username)
            .bind(sealed)
            .bind(RouterStatus::Unknown.as_str())
            .bind(ms(at))
            .bind(new.api_tls)
            .bind(&new.api_tls_fingerprint)
            .execute(&mut *tx)
            .await
            .map_err(|e| router_conflict(e, &new.name, &site_name))?;
            tx.commit().await?;
        });
        self.get_router(new.org_id, id).await
    }

    /// A router of `org`.
    pub async fn get_router(&self, org: OrgId, id: RouterId) -> Result<Router> {
        let router = db!(self, |p, pg| {
            let row = sqlx::query(router_sql!("WHERE id = $1 AND org_id = $2"))
                .bind(id.to_string())
                .bind(org.to_string())
                .fetch_optional(p)
                .await?;
            row.map(|r| router_from(&r)).transpose()?
        });
        router.ok_or(StoreError::NotFound)
    }

    /// A router of `org` with its region (`None` when the router is not `org`'s), and
    /// whether API token `token` still exists (true when none is asked), in one read in
    /// the common case (what a grant's creation through the API needs first).
    pub async fn get_router_with_region(
        &self,
        org: OrgId,
        id: RouterId,
        token: Option<TokenId>,
    ) -> Result<(Option<(Router, Region)>, bool)> {
        let token = token.map(|t| t.to_string());
        db!(self, |p, pg| {
            let row = sqlx::query(
                "SELECT r.id, r.org_id, r.site_id, r.region_id, r.name, r.tunnel_address, \
                 r.api_port, r.ssh_port, r.winbox_port, r.api_tls, r.api_tls_fingerprint, \
                 r.reach, r.tunnel_public_key, r.username, r.status, r.identity, \
                 r.routeros_version, r.board_name, r.uptime, r.last_seen_at, r.created_at, \
                 r.updated_at, g.name AS region_name, g.entry_point AS region_entry_point, \
                 g.port_min AS region_port_min, g.port_max AS region_port_max, \
                 g.created_at AS region_created_at, \
                 (SELECT COUNT(*) FROM api_tokens t WHERE t.id = $3) AS tokens \
                 FROM routers r JOIN regions g ON g.id = r.region_id \
                 WHERE r.id = $1 AND r.org_id = $2",
            )
            .bind(id.to_string())
            .bind(org.to_string())
            .bind(token.clone().unwrap_or_default())
            .fetch_optional(p)
            .await?;
            let Some(r) = row else {
                // No router: the token is asked on its own (a 404 or a 401, rarely).
                let exists = match &token {
                    None => true,
                    Some(t) => {
                        let row = sqlx::query("SELECT COUNT(*) AS n FROM api_tokens WHERE id = $1")
                            .bind(t)
                            .fetch_one(p)
                            .await?;
                        row.int("n")? > 0
                    }
                };
                return Ok((None, exists));
            };
            let router = router_from(&r)?;
            let region = Region {
                id: router.region_id,
                name: r.text("region_name")?,
                entry_point: r.text("region_entry_point")?,
                port_min: r.port("region_port_min")?,
                port_max: r.port("region_port_max")?,
                created_at: r.time("region_created_at")?,
            };
            let exists = token.is_none() || r.int("tokens")? > 0;
            Ok((Some((router, region)), exists))
        })
    }

    /// A router of any organisation (for the orchestrator, which acts for all).
    pub async fn get_router_any_org(&self, id: RouterId) -> Result<Router> {
        let router = db!(self, |p, pg| {
            let row = sqlx::query(router_sql!("WHERE id = $1"))
                .bind(id.to_string())
                .fetch_optional(p)
                .await?;
            row.map(|r| router_from(&r)).transpose()?
        });
        router.ok_or(StoreError::NotFound)
    }

    /// The routers of `org`, by name.
    pub async fn list_routers(&self, org: OrgId) -> Result<Vec<Router>> {
        db!(self, |p, pg| {
            let rows = sqlx::query(router_sql!("WHERE org_id = $1 ORDER BY name, id"))
                .bind(org.to_string())
                .fetch_all(p)
                .await?;
            rows.iter().map(router_from).collect()
        })
    }

    /// Changes the given fields of a router (re-encrypting a new password).
    pub async fn update_router(
        &self,
        org: OrgId,
        id: RouterId,
        patch: RouterPatch,
    ) -> Result<Router> {
        let _writer = self.sqlite_writer().await;
        let sealed = patch
            .password
            .as_deref()
            .map(|pw| {
                self.inner
                    .cipher
                    .seal(Slot::RouterPassword, &id.to_string(), pw)
            })
            .transpose()?;
        let name = patch.name.clone().unwrap_or_default();
        let changed = db_write!(self, |p, pg| {
            sqlx::query(
                "UPDATE routers SET name = COALESCE($3, name), \
                 tunnel_address = COALESCE($4, tunnel_address), api_port = COALESCE($5, api_port), \
                 ssh_port = COALESCE($6, ssh_port), winbox_port = COALESCE($7, winbox_port), \
                 username = COALESCE($8, username), password = COALESCE($9, password), \
                 region_id = COALESCE($10, region_id), updated_at = $11, \
                 api_tls = COALESCE($12, api_tls), \
                 api_tls_fingerprint = CASE WHEN $13 THEN $14 ELSE api_tls_fingerprint END \
                 WHERE id = $1 AND org_id = $2",
            )
            .bind(id.to_string())
            .bind(org.to_string())
            .bind(patch.name)
            .bind(patch.tunnel_address.map(|a| a.to_string()))
            .bind(patch.api_port.map(i64::from))
            .bind(patch.ssh_port.map(i64::from))
            .bind(patch.winbox_port.map(i64::from))
            .bind(patch.username)
            .bind(sealed)
            .bind(patch.region_id.map(|r| r.to_string()))
            .bind(ms(now()))
            .bind(patch.api_tls)
            .bind(patch.api_tls_fingerprint.is_some())
            .bind(patch.api_tls_fingerprint.clone().flatten())
            .execute(p)
            .await
            .map_err(|e| router_conflict(e, &name, ""))?
            .rows_affected()
        });
        if changed == 0 {
            return Err(StoreError::NotFound);
        }
        self.get_router(org, id).await
    }

    /// Deletes a router, its ended grants and its jobs; `Conflict` while it has live
    /// grants (checked in the same transaction, under a row lock on PostgreSQL). Its
    /// site stays.
    pub async fn delete_router(&self, org: OrgId, id: RouterId) -> Result<()> {
        db_write!(self, |p, pg| {
            let (_guard, mut tx) = p.begin_write(&self.inner.write_lock).await?;
            if pg {
                // Lock order: a grant's row, then its router's. A grant transition holds
                // the grant's row and locks the router's at commit (the grants_version
                // trigger), so taking the router's first here could deadlock with it.
                let mine = sqlx::query("SELECT id FROM routers WHERE id = $1 AND org_id = $2")
                    .bind(id.to_string())
                    .bind(org.to_string())
                    .fetch_optional(&mut *tx)
                    .await?;
                if mine.is_none() {
                    return Err(StoreError::NotFound);
                }
                for lock in [
                    "SELECT id FROM transient_access WHERE router_id = $1 FOR UPDATE",
                    "SELECT id FROM transient_forwards WHERE router_id = $1 FOR UPDATE",
                ] {
                    sqlx::query(lock)
                        .bind(id.to_string())
                        .fetch_all(&mut *tx)
                        .await?;
                }
            }
            let lock = if pg {
                "SELECT id FROM routers WHERE id = $1 AND org_id = $2 FOR UPDATE"
            } else {
                "SELECT id FROM routers WHERE id = $1 AND org_id = $2"
            };
            let found = sqlx::query(lock)
                .bind(id.to_string())
                .bind(org.to_string())
                .fetch_optional(&mut *tx)
                .await?;
            if found.is_none() {
                return Err(StoreError::NotFound);
            }
            let live = sqlx::query(
                "SELECT (SELECT COUNT(*) FROM transient_access WHERE router_id = $1 \
                   AND status IN ('requested', 'provisioning', 'active')) \
                 + (SELECT COUNT(*) FROM transient_forwards WHERE router_id = $1 \
                   AND status IN ('requested', 'provisioning', 'active')) AS n",
            )
            .bind(id.to_string())
            .fetch_one(&mut *tx)
            .await?
            .int("n")?;
            if live > 0 {
                return Err(StoreError::Conflict(format!(
                    "the router has {live} live grant(s); revoke them first"
                )));
            }
            sqlx::query(
                "DELETE FROM gateway_ports WHERE grant_id IN \
                 (SELECT id FROM transient_access WHERE router_id = $1 \
                  UNION SELECT id FROM transient_forwards WHERE router_id = $1)",
            )
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM routers WHERE id = $1")
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Pins the certificate a router's API-SSL presented on first use: only when it
    /// uses TLS and has no pin yet (false otherwise: someone pinned or changed it
    /// meanwhile). `updated_at` stays, so the connection that learnt it is kept.
    pub async fn pin_router_certificate(&self, id: RouterId, fingerprint: &str) -> Result<bool> {
        let _writer = self.sqlite_writer().await;
        let changed = db_write!(self, |p, pg| {
            sqlx::query(
                "UPDATE routers SET api_tls_fingerprint = $2 \
                 WHERE id = $1 AND api_tls AND api_tls_fingerprint IS NULL",
            )
            .bind(id.to_string())
            .bind(fingerprint)
            .execute(p)
            .await?
            .rows_affected()
        });
        Ok(changed == 1)
    }

    /// A router's management password, decrypted (any organisation: for the
    /// orchestrator).
    pub async fn router_password(&self, id: RouterId) -> Result<Secret> {
        let sealed = db!(self, |p, pg| {
            let row = sqlx::query("SELECT password FROM routers WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(p)
                .await?;
            row.map(|r| r.bytes("password")).transpose()?
        });
        let sealed = sealed.ok_or(StoreError::NotFound)?;
        self.inner
            .cipher
            .open(Slot::RouterPassword, &id.to_string(), &sealed)
    }

    /// Records what Postern learnt from a router.
    pub async fn set_router_facts(&self, id: RouterId, facts: RouterFacts) -> Result<()> {
        let _writer = self.sqlite_writer().await;
        let changed = db_write!(self, |p, pg| {
            sqlx::query(
                "UPDATE routers SET status = $2, identity = COALESCE($3, identity), \
                 routeros_version = COALESCE($4, routeros_version), \
                 board_name = COALESCE($5, board_name), \
                 last_seen_at = COALESCE($6, last_seen_at), uptime = COALESCE($7, uptime) \
                 WHERE id = $1",
            )
            .bind(id.to_string())
            .bind(facts.status.as_str())
            .bind(facts.identity)
            .bind(facts.routeros_version)
            .bind(facts.board_name)
            .bind(opt_ms(facts.last_seen_at))
            .bind(facts.uptime)
            .execute(p)
            .await?
            .rows_affected()
        });
        if changed == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// The sites of `org` with their routers, by site name.
    pub async fn list_sites(&self, org: OrgId) -> Result<Vec<(Site, Vec<Router>)>> {
        let (sites, routers) = db!(self, |p, pg| {
            let sites = sqlx::query(
                "SELECT id, org_id, name, created_at FROM sites WHERE org_id = $1 ORDER BY name, id",
            )
            .bind(org.to_string())
            .fetch_all(p)
            .await?;
            let sites = sites.iter().map(site_from).collect::<Result<Vec<_>>>()?;
            let routers = sqlx::query(router_sql!("WHERE org_id = $1 ORDER BY name, id"))
                .bind(org.to_string())
                .fetch_all(p)
                .await?;
            let routers = routers
                .iter()
                .map(router_from)
                .collect::<Result<Vec<_>>>()?;
            (sites, routers)
        });
        let mut by_site: HashMap<SiteId, Vec<Router>> = HashMap::new();
        for router in routers {
            by_site.entry(router.site_id).or_default().push(router);
        }
        Ok(sites
            .into_iter()
            .map(|site| {
                let routers = by_site.remove(&site.id).unwrap_or_default();
                (site, routers)
            })
            .collect())
    }

    /// A site of `org` with its routers.
    pub async fn get_site(&self, org: OrgId, id: SiteId) -> Result<(Site, Vec<Router>)> {
        db!(self, |p, pg| {
            let site = sqlx::query(
                "SELECT id, org_id, name, created_at FROM sites WHERE id = $1 AND org_id = $2",
            )
            .bind(id.to_string())
            .bind(org.to_string())
            .fetch_optional(p)
            .await?
            .ok_or(StoreError::NotFound)?;
            let site = site_from(&site)?;
            let routers = sqlx::query(router_sql!(
                "WHERE site_id = $1 AND org_id = $2 ORDER BY name, id"
            ))
            .bind(id.to_string())
            .bind(org.to_string())
            .fetch_all(p)
            .await?;
            let routers = routers
                .iter()
                .map(router_from)
                .collect::<Result<Vec<_>>>()?;
            Ok((site, routers))
        })
    }
}
