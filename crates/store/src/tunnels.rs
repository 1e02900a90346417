//! The management tunnel's rows: each region's WireGuard key (the private key sealed),
//! tunnelled routers (pending until enrolled with their public key), their tunnel
//! addresses allocated inside the region's prefix, and the peers the gateway loads.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

use domain::{RegionId, RouterId, RouterStatus, SiteId};
use ipnet::Ipv4Net;

use crate::Store;
use crate::db::{Get, WritePool, db, db_write, ms, now};
use crate::error::{Result, StoreError};
use crate::records::{NewTunnelRouter, RegionTunnel, Router, TunnelPeer};
use crate::secret::{Secret, Slot};

/// How many times a tunnelled router's creation retries when a concurrent one took the
/// address it chose (PostgreSQL; SQLite's writer lock serialises creations).
const ADDRESS_RETRIES: usize = 8;

/// The lowest address of `prefix` that is a host (neither the network nor the
/// broadcast address of a prefix shorter than /31), not `gateway` and not `taken`.
pub(crate) fn next_free(
    prefix: Ipv4Net,
    gateway: Ipv4Addr,
    taken: &HashSet<u32>,
) -> Option<Ipv4Addr> {
    let network = u32::from(prefix.network());
    let broadcast = u32::from(prefix.broadcast());
    let (first, last) = if prefix.prefix_len() >= 31 {
        (network, broadcast)
    } else {
        (network.checked_add(1)?, broadcast.checked_sub(1)?)
    };
    let gateway = u32::from(gateway);
    (first..=last)
        .find(|a| *a != gateway && !taken.contains(a))
        .map(Ipv4Addr::from)
}

fn taken_in(rows: &[impl Get]) -> Result<HashSet<u32>> {
    let mut taken = HashSet::with_capacity(rows.len());
    for r in rows {
        let addr: IpAddr = r.parse("tunnel_address")?;
        if let IpAddr::V4(v4) = addr {
            taken.insert(u32::from(v4));
        }
    }
    Ok(taken)
}

fn is_address_clash(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            db.message().contains("tunnel_address")
                || db
                    .constraint()
                    .is_some_and(|c| c.contains("tunnel_address"))
        }
        _ => false,
    }
}

fn key_clash(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict("another router already has that public key".to_owned())
        }
        _ => e.into(),
    }
}

impl Store {
    /// The region's tunnel key, made now from `private`/`public` when it has none
    /// (the caller generates the pair; `private` is sealed before it is written). The
    /// region's existing key wins over the one given, so concurrent first starts agree.
    /// `NotFound` for an unknown region.
    pub async fn ensure_region_tunnel(
        &self,
        region: RegionId,
        private: &Secret,
        public: &str,
    ) -> Result<RegionTunnel> {
        let sealed =
            self.inner
                .cipher
                .seal(Slot::RegionTunnelKey, &region.to_string(), private.expose())?;
        {
            let _writer = self.sqlite_writer().await;
            db_write!(self, |p, pg| {
                sqlx::query(
                    "INSERT INTO region_tunnels (region_id, private_key, public_key, created_at) \
                     SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM regions WHERE id = $1) \
                     ON CONFLICT (region_id) DO NOTHING",
                )
                .bind(region.to_string())
                .bind(sealed)
                .bind(public)
                .bind(ms(now()))
                .execute(p)
                .await?;
            });
        }
        self.region_tunnel(region)
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// The region's tunnel key (public half), if it has one.
    pub async fn region_tunnel(&self, region: RegionId) -> Result<Option<RegionTunnel>> {
        db!(self, |p, pg| {
            let row = sqlx::query(
                "SELECT region_id, public_key, created_at FROM region_tunnels WHERE region_id = $1",
            )
            .bind(region.to_string())
            .fetch_optional(p)
            .await?;
            row.map(|r| -> Result<RegionTunnel> {
                Ok(RegionTunnel {
                    region_id: r.parse("region_id")?,
                    public_key: r.text("public_key")?,
                    created_at: r.time("created_at")?,
                })
            })
            .transpose()
        })
    }

    /// The region's tunnel private key (base64), decrypted: for the gateway only.
    pub async fn region_tunnel_private_key(&self, region: RegionId) -> Result<Secret> {
        let sealed = db!(self, |p, pg| {
            let row = sqlx::query("SELECT private_key FROM region_tunnels WHERE region_id = $1")
                .bind(region.to_string())
                .fetch_optional(p)
                .await?;
            row.map(|r| r.bytes("private_key")).transpose()?
        });
        let sealed = sealed.ok_or(StoreError::NotFound)?;
        self.inner
            .cipher
            .open(Slot::RegionTunnelKey, &region.to_string(), &sealed)
    }

    /// The next free tunnel address of `prefix` in the region (its tunnelled routers'
    /// addresses, `gateway`, the network and broadcast addresses excluded), as of now:
    /// `create_tunnel_router` allocates in its own transaction. `Conflict` when the
    /// prefix is full.
    pub async fn next_tunnel_address(
        &self,
        region: RegionId,
        prefix: Ipv4Net,
        gateway: Ipv4Addr,
    ) -> Result<Ipv4Addr> {
        let taken = db!(self, |p, pg| {
            let rows = sqlx::query(
                "SELECT tunnel_address FROM routers WHERE region_id = $1 AND reach = 'tunnel'",
            )
            .bind(region.to_string())
            .fetch_all(p)
            .await?;
            taken_in(&rows)?
        });
        next_free(prefix, gateway, &taken).ok_or_else(|| full(prefix))
    }

    /// Creates a pending tunnelled router (and its site, as `create_router` does), at
    /// the next free address of the region's prefix, chosen in the same transaction.
    /// `Conflict` as `create_router`, or when the prefix is full.
    pub async fn create_tunnel_router(&self, new: NewTunnelRouter) -> Result<Router> {
        let id = RouterId::new();
        let site_name = new.site_name.clone().unwrap_or_else(|| new.name.clone());
        let sealed =
            self.inner
                .cipher
                .seal(Slot::RouterPassword, &id.to_string(), &new.password)?;
        let mut tries = 0;
        loop {
            tries += 1;
            let at = now();
            let done: std::result::Result<(), StoreError> = db_write!(self, |p, pg| {
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
                let rows = sqlx::query(
                    "SELECT tunnel_address FROM routers WHERE region_id = $1 AND reach = 'tunnel'",
                )
                .bind(new.region_id.to_string())
                .fetch_all(&mut *tx)
                .await?;
                let taken = taken_in(&rows)?;
                let address = next_free(new.tunnel_prefix, new.gateway_address, &taken)
                    .ok_or_else(|| full(new.tunnel_prefix))?;
                let inserted = sqlx::query(
                    "INSERT INTO routers (id, org_id, site_id, region_id, name, tunnel_address, \
                     api_port, ssh_port, winbox_port, username, password, status, created_at, \
                     updated_at, api_tls, api_tls_fingerprint, reach, tunnel_public_key) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, \
                     FALSE, NULL, 'tunnel', NULL)",
                )
                .bind(id.to_string())
                .bind(new.org_id.to_string())
                .bind(&site_id)
                .bind(new.region_id.to_string())
                .bind(&new.name)
                .bind(address.to_string())
                .bind(i64::from(new.api_port))
                .bind(i64::from(new.ssh_port))
                .bind(i64::from(new.winbox_port))
                .bind(&new.username)
                .bind(&sealed)
                .bind(RouterStatus::Unknown.as_str())
                .bind(ms(at))
                .execute(&mut *tx)
                .await;
                match inserted {
                    Ok(_) => {
                        tx.commit().await?;
                        Ok(())
                    }
                    Err(e) if is_address_clash(&e) => Err(StoreError::Conflict(
                        "tunnel address taken meanwhile".to_owned(),
                    )),
                    Err(e) => Err(crate::routers::router_conflict(e, &new.name, &site_name)),
                }
            });
            match done {
                Ok(()) => break,
                Err(StoreError::Conflict(m))
                    if m == "tunnel address taken meanwhile" && tries < ADDRESS_RETRIES =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        self.get_router(new.org_id, id).await
    }

    /// Enrols a tunnelled router: records its WireGuard public key (base64, as given;
    /// the caller validates it). Setting the key it already has is a no-op. `NotFound`
    /// unless the router exists and is tunnelled; `Conflict` when another router
    /// already has that key.
    pub async fn set_router_tunnel_key(&self, id: RouterId, public_key: &str) -> Result<Router> {
        let changed = {
            let _writer = self.sqlite_writer().await;
            db_write!(self, |p, pg| {
                sqlx::query(
                    "UPDATE routers SET tunnel_public_key = $2, updated_at = $3 \
                     WHERE id = $1 AND reach = 'tunnel'",
                )
                .bind(id.to_string())
                .bind(public_key)
                .bind(ms(now()))
                .execute(p)
                .await
                .map_err(key_clash)?
                .rows_affected()
            })
        };
        if changed == 0 {
            return Err(StoreError::NotFound);
        }
        self.get_router_any_org(id).await
    }

    /// The enrolled tunnelled routers of a region (every organisation), by address:
    /// the gateway's peers.
    pub async fn list_tunnel_peers(&self, region: RegionId) -> Result<Vec<TunnelPeer>> {
        db!(self, |p, pg| {
            let rows = sqlx::query(
                "SELECT id, org_id, region_id, tunnel_public_key, tunnel_address, tunnel_endpoint FROM routers \
                 WHERE region_id = $1 AND reach = 'tunnel' AND tunnel_public_key IS NOT NULL \
                 ORDER BY tunnel_address, id",
            )
            .bind(region.to_string())
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(TunnelPeer {
                        router_id: r.parse("id")?,
                        org_id: r.parse("org_id")?,
                        region_id: r.parse("region_id")?,
                        public_key: r.text("tunnel_public_key")?,
                        tunnel_address: r.parse("tunnel_address")?,
                        endpoint: r.opt_text("tunnel_endpoint")?,
                    })
                })
                .collect()
        })
    }
}

impl Store {
    /// Records where the gateway now sees these routers (`ip:port`): read back by
    /// [`Store::list_tunnel_peers`] when a gateway starts, to resume them. One
    /// transaction; routers that are gone are skipped.
    pub async fn set_tunnel_endpoints(&self, seen: &[(RouterId, String)]) -> Result<()> {
        if seen.is_empty() {
            return Ok(());
        }
        db_write!(self, |p, pg| {
            let (_guard, mut tx) = p.begin_write(&self.inner.write_lock).await?;
            for (router, endpoint) in seen {
                sqlx::query(
                    "UPDATE routers SET tunnel_endpoint = $1 WHERE id = $2 AND reach = 'tunnel'",
                )
                .bind(endpoint)
                .bind(router.to_string())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }
}

fn full(prefix: Ipv4Net) -> StoreError {
    StoreError::Conflict(format!("the tunnel prefix {prefix} has no free address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_free_skips_network_gateway_broadcast_and_taken() {
        let p: Ipv4Net = "100.64.0.0/29".parse().unwrap();
        let gw: Ipv4Addr = "100.64.0.1".parse().unwrap();
        let mut taken = HashSet::new();
        assert_eq!(
            next_free(p, gw, &taken),
            Some("100.64.0.2".parse().unwrap())
        );
        for a in 2..=5u8 {
            taken.insert(u32::from(Ipv4Addr::new(100, 64, 0, a)));
        }
        assert_eq!(
            next_free(p, gw, &taken),
            Some("100.64.0.6".parse().unwrap())
        );
        taken.insert(u32::from(Ipv4Addr::new(100, 64, 0, 6)));
        // .7 is the broadcast address: the prefix is full.
        assert_eq!(next_free(p, gw, &taken), None);
        // A hole is reused.
        taken.remove(&u32::from(Ipv4Addr::new(100, 64, 0, 3)));
        assert_eq!(
            next_free(p, gw, &taken),
            Some("100.64.0.3".parse().unwrap())
        );
    }
}
