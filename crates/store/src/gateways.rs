//! Regional gateways and the control plane's CA. A gateway is added pending with a
//! single-use join token (stored by its SHA-256 hex), joined once with what servers need
//! to reach it and its certificate, replaced by a later join for its region, removed by
//! an administrator. The CA's private key is sealed like every secret; concurrent first
//! starts agree on one CA. Time is a parameter.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use domain::{GatewayId, RegionId};

use crate::Store;
use crate::db::{Get, WritePool as _, db, db_write, ms, trunc};
use crate::error::{Result, StoreError};
use crate::secret::{Secret, Slot};
use crate::sessions::is_hash;

/// A gateway as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    pub id: GatewayId,
    pub region_id: RegionId,
    /// Who added it, as the logs name them.
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    /// Until when its join token may be used (meaningless once joined).
    pub token_expires_at: DateTime<Utc>,
    pub joined: Option<JoinedGateway>,
    pub removed_at: Option<DateTime<Utc>>,
}

/// What a gateway said of itself when it joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedGateway {
    pub at: DateTime<Utc>,
    pub from: Option<IpAddr>,
    /// `host:port` servers dial for the control channel.
    pub control_address: String,
    /// `host:port` routers send WireGuard to.
    pub tunnel_endpoint: String,
    pub entry_host: String,
    /// The region tunnel's WireGuard public key, base64.
    pub wireguard_public_key: String,
    /// Its control-channel certificate, PEM.
    pub certificate_pem: String,
}

impl Gateway {
    /// Whether it serves its region now: joined and not removed.
    pub fn live(&self) -> bool {
        self.joined.is_some() && self.removed_at.is_none()
    }
}

/// Input of `add_gateway`.
#[derive(Debug, Clone)]
pub struct NewGateway {
    pub id: GatewayId,
    pub region_id: RegionId,
    /// SHA-256 of the join token, hex.
    pub token_hash: String,
    pub created_by: String,
    pub at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// What a join found.
#[derive(Debug, Clone)]
pub enum GatewayJoin {
    /// No open token has this hash (unknown, spent, expired or its gateway removed): one
    /// answer for all, so the caller gives no oracle.
    Refused,
    /// Joined now, by this call alone; the gateway it replaced in the region, if any.
    Joined {
        gateway: Box<Gateway>,
        replaced: Option<GatewayId>,
    },
}

macro_rules! gateway_columns {
    () => {
        "id, region_id, created_by, created_at, token_expires_at, joined_at, joined_from, \
         control_address, tunnel_endpoint, entry_host, wireguard_public_key, \
         certificate_pem, removed_at"
    };
}

fn gateway_from(r: &impl Get) -> Result<Gateway> {
    let joined = match r.opt_time("joined_at")? {
        Some(at) => Some(JoinedGateway {
            at,
            from: r.opt_parse("joined_from")?,
            control_address: r.opt_text("control_address")?.unwrap_or_default(),
            tunnel_endpoint: r.opt_text("tunnel_endpoint")?.unwrap_or_default(),
            entry_host: r.opt_text("entry_host")?.unwrap_or_default(),
            wireguard_public_key: r.opt_text("wireguard_public_key")?.unwrap_or_default(),
            certificate_pem: r.opt_text("certificate_pem")?.unwrap_or_default(),
        }),
        None => None,
    };
    Ok(Gateway {
        id: r.parse("id")?,
        region_id: r.parse("region_id")?,
        created_by: r.text("created_by")?,
        created_at: r.time("created_at")?,
        token_expires_at: r.time("token_expires_at")?,
        joined,
        removed_at: r.opt_time("removed_at")?,
    })
}

/// The CA's row id in the sealing's additional data.
const CA_ROW: &str = "1";

impl Store {
    /// Records a pending gateway for a region with its join token. `NotFound` for an
    /// unknown region.
    pub async fn add_gateway(&self, new: NewGateway) -> Result<Gateway> {
        if !is_hash(&new.token_hash) {
            return Err(StoreError::Conflict(
                "a join token must be stored as a sha-256 hex".into(),
            ));
        }
        let _writer = self.sqlite_writer().await;
        let inserted = db_write!(self, |p, pg| {
            sqlx::query(
                "INSERT INTO gateways (id, region_id, created_by, created_at, token_hash, \
                 token_expires_at) SELECT $1, $2, $3, $4, $5, $6 \
                 WHERE EXISTS (SELECT 1 FROM regions WHERE id = $2)",
            )
            .bind(new.id.to_string())
            .bind(new.region_id.to_string())
            .bind(&new.created_by)
            .bind(ms(new.at))
            .bind(&new.token_hash)
            .bind(ms(new.expires_at))
            .execute(p)
            .await
            .map_err(|e| StoreError::unique(e, || "this join token exists already".into()))?
            .rows_affected()
        });
        drop(_writer);
        if inserted != 1 {
            return Err(StoreError::NotFound);
        }
        self.get_gateway(new.id).await
    }

    /// A gateway, whatever its state.
    pub async fn get_gateway(&self, id: GatewayId) -> Result<Gateway> {
        db!(self, |p, pg| {
            let row = sqlx::query(concat!(
                "SELECT ",
                gateway_columns!(),
                " FROM gateways WHERE id = $1"
            ))
            .bind(id.to_string())
            .fetch_optional(p)
            .await?;
            row.map(|r| gateway_from(&r))
                .transpose()?
                .ok_or(StoreError::NotFound)
        })
    }

    /// Every gateway not removed (pending ones included), oldest first.
    pub async fn list_gateways(&self) -> Result<Vec<Gateway>> {
        db!(self, |p, pg| {
            let rows = sqlx::query(concat!(
                "SELECT ",
                gateway_columns!(),
                " FROM gateways WHERE removed_at IS NULL ORDER BY created_at, id"
            ))
            .fetch_all(p)
            .await?;
            rows.iter().map(gateway_from).collect()
        })
    }

    /// Spends an open join token at `at`: records the gateway's facts and certificate
    /// (made by the caller for this gateway's id, which `certificate` is given) and
    /// removes the gateway the region had, in one transaction. Of concurrent joins with
    /// one token, one alone gets `Joined`.
    pub async fn join_gateway(
        &self,
        token_hash: &str,
        at: DateTime<Utc>,
        joined: impl FnOnce(GatewayId) -> Result<JoinedGateway>,
    ) -> Result<GatewayJoin> {
        if !is_hash(token_hash) {
            return Ok(GatewayJoin::Refused);
        }
        let pending = db!(self, |p, pg| {
            let row = sqlx::query(concat!(
                "SELECT ",
                gateway_columns!(),
                " FROM gateways WHERE token_hash = $1"
            ))
            .bind(token_hash)
            .fetch_optional(p)
            .await?;
            row.map(|r| gateway_from(&r)).transpose()?
        });
        let Some(pending) = pending else {
            return Ok(GatewayJoin::Refused);
        };
        if pending.joined.is_some()
            || pending.removed_at.is_some()
            || pending.token_expires_at <= at
        {
            return Ok(GatewayJoin::Refused);
        }
        let facts = joined(pending.id)?;
        let at = trunc(at);
        let replaced = db_write!(self, |p, pg| {
            let (_guard, mut tx) = p.begin_write(&self.inner.write_lock).await?;
            let old: Option<String> = sqlx::query(
                "SELECT id FROM gateways WHERE region_id = $1 AND joined_at IS NOT NULL \
                 AND removed_at IS NULL AND id <> $2",
            )
            .bind(pending.region_id.to_string())
            .bind(pending.id.to_string())
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.text("id"))
            .transpose()?;
            if let Some(old) = &old {
                sqlx::query("UPDATE gateways SET removed_at = $2 WHERE id = $1")
                    .bind(old)
                    .bind(ms(at))
                    .execute(&mut *tx)
                    .await?;
            }
            let spent = sqlx::query(
                "UPDATE gateways SET token_hash = NULL, joined_at = $2, joined_from = $3, \
                 control_address = $4, tunnel_endpoint = $5, entry_host = $6, \
                 wireguard_public_key = $7, certificate_pem = $8 \
                 WHERE token_hash = $1 AND joined_at IS NULL AND removed_at IS NULL \
                 AND token_expires_at > $2",
            )
            .bind(token_hash)
            .bind(ms(at))
            .bind(facts.from.map(|a| a.to_string()))
            .bind(&facts.control_address)
            .bind(&facts.tunnel_endpoint)
            .bind(&facts.entry_host)
            .bind(&facts.wireguard_public_key)
            .bind(&facts.certificate_pem)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if spent != 1 {
                // Another join spent it first: nothing of this one is kept.
                return Ok(GatewayJoin::Refused);
            }
            tx.commit().await?;
            old.map(|o| o.parse::<GatewayId>())
                .transpose()
                .map_err(|_| StoreError::Corrupt("gateways.id".into()))?
        });
        let gateway = self.get_gateway(pending.id).await?;
        Ok(GatewayJoin::Joined {
            gateway: Box::new(gateway),
            replaced,
        })
    }

    /// Removes a gateway (pending or joined): its token no longer joins and servers stop
    /// reaching it. Whether it was there to remove.
    pub async fn remove_gateway(&self, id: GatewayId, at: DateTime<Utc>) -> Result<bool> {
        let _writer = self.sqlite_writer().await;
        let changed = db_write!(self, |p, pg| {
            sqlx::query(
                "UPDATE gateways SET removed_at = $2, token_hash = NULL \
                 WHERE id = $1 AND removed_at IS NULL",
            )
            .bind(id.to_string())
            .bind(ms(at))
            .execute(p)
            .await?
            .rows_affected()
        });
        Ok(changed == 1)
    }

    /// The control plane's CA: the stored one, else `make()`'s (certificate PEM, private
    /// key PEM), stored now. Of concurrent first starts, every one gets the one stored.
    pub async fn ensure_control_ca(
        &self,
        make: impl FnOnce() -> Result<(String, Secret)>,
    ) -> Result<(String, Secret)> {
        if let Some(ca) = self.control_ca().await? {
            return Ok(ca);
        }
        let (cert, key) = make()?;
        let sealed = self
            .inner
            .cipher
            .seal(Slot::ControlCaKey, CA_ROW, key.expose())?;
        {
            let _writer = self.sqlite_writer().await;
            db_write!(self, |p, pg| {
                sqlx::query(
                    "INSERT INTO control_ca (id, certificate_pem, private_key, created_at) \
                     VALUES (1, $1, $2, $3) ON CONFLICT (id) DO NOTHING",
                )
                .bind(&cert)
                .bind(sealed)
                .bind(ms(crate::db::now()))
                .execute(p)
                .await?;
            });
        }
        self.control_ca().await?.ok_or(StoreError::NotFound)
    }

    /// The control plane's CA (certificate PEM, private key PEM decrypted), if made.
    pub async fn control_ca(&self) -> Result<Option<(String, Secret)>> {
        let row = db!(self, |p, pg| {
            let row =
                sqlx::query("SELECT certificate_pem, private_key FROM control_ca WHERE id = 1")
                    .fetch_optional(p)
                    .await?;
            row.map(|r| -> Result<(String, Vec<u8>)> {
                Ok((r.text("certificate_pem")?, r.bytes("private_key")?))
            })
            .transpose()?
        });
        let Some((cert, sealed)) = row else {
            return Ok(None);
        };
        let key = self
            .inner
            .cipher
            .open(Slot::ControlCaKey, CA_ROW, &sealed)?;
        Ok(Some((cert, key)))
    }
}
