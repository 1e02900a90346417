//! Router job handlers, each idempotent (objects are looked up by their
//! `postern:<kind>:<id>` comment before anything is added) and each step logged:
//! Postern's groups, the temporary user, the self-expiry scheduler entry, a forward's
//! NAT rules, and the end of a grant (sessions logged out, objects removed).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use chrono::{
    DateTime, Datelike as _, Duration as ChronoDuration, NaiveDate, NaiveDateTime, NaiveTime, Utc,
};
use domain::{AccessId, AccessLevel, ForwardId, GrantStatus};
use routeros::api::{self, Filter};
use routeros::{Command, Item};
use store::Job;

use crate::Inner;
use crate::connections::{self, RouterConn};
use crate::dataplane::{EndReason, GrantKey, LiveGrant};
use crate::error::{Error, Result};
use crate::joblog::JobLog;

/// Postern's groups: name, comment tag, policies.
///
/// `postern-read` is a real read-only group: no `reboot`, `sniff`, `sensitive`, `write`,
/// `policy` or `password`, and no `ftp` (file transfer can write files) either.
/// `postern-write` is RouterOS's `write` (no `policy`, no `sensitive`).
pub const GROUPS: [(&str, &str, &str); 3] = [
    (
        "postern-full",
        "postern:group:full",
        "local,telnet,ssh,ftp,reboot,read,write,policy,test,winbox,password,web,sniff,sensitive,api,romon,rest-api",
    ),
    (
        "postern-write",
        "postern:group:write",
        "local,telnet,ssh,ftp,reboot,read,write,test,winbox,password,web,sniff,api,romon,rest-api",
    ),
    (
        "postern-read",
        "postern:group:read",
        "local,telnet,ssh,read,test,winbox,web,api,romon,rest-api",
    ),
];

/// The private ranges a user may also log in from when `allow_rfc1918`.
pub const RFC1918: [&str; 3] = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"];

/// The group of an access level.
pub fn group_for(level: AccessLevel) -> &'static str {
    match level {
        AccessLevel::Full => "postern-full",
        AccessLevel::Write => "postern-write",
        AccessLevel::Read => "postern-read",
    }
}

/// The scheduler entry of a grant.
pub fn schedule_name(key: GrantKey) -> String {
    format!("postern-{}-{}", key.kind(), key.id())
}

/// Runs one command step, logging what was sent (never a secret: callers describe the
/// command) and how it went.
pub(crate) async fn step<T>(
    log: &JobLog,
    what: &str,
    call: impl Future<Output = Result<T, routeros::Error>>,
) -> Result<T> {
    let started = Instant::now();
    match call.await {
        Ok(value) => {
            log.line(format!(
                "sent {what}: ok in {} ms",
                started.elapsed().as_millis()
            ));
            Ok(value)
        }
        Err(routeros::Error::Trap { message, .. }) => {
            log.line(format!(
                "sent {what}: the router answered !trap \"{message}\""
            ));
            let text = format!("the router refused {what}: {message}");
            if crate::error::is_refusal(&message) {
                Err(Error::Refused(text))
            } else {
                Err(Error::Router(text))
            }
        }
        Err(e) => {
            tracing::info!(error = %e, "router command failed: {what}");
            log.line(format!(
                "sent {what}: failed: {}",
                crate::error::neutral(&e)
            ));
            Err(Error::from_router(e))
        }
    }
}

/// What a handler's success leaves to the end of the attempt, which records it in the
/// same transaction as the job's completion.
pub(crate) enum Done {
    /// Nothing more.
    Nothing,
    /// The grant is on the router: `provisioning` → `active` (an active grant stays
    /// so), then the data plane is told.
    Activate(Box<LiveGrant>),
    /// The router holds nothing of the grant any more: `closing` → this final status.
    End(GrantKey, GrantStatus),
}

/// Runs a job's handler.
pub(crate) async fn run(inner: &Arc<Inner>, job: &Job, log: &JobLog) -> Result<Done> {
    match job.kind.as_str() {
        "access.create" | "access.update" => access_create(inner, job, log).await,
        "forward.create" | "forward.update" => forward_create(inner, job, log).await,
        "access.end" | "access.delete" => grant_end(inner, job, log, true).await,
        "forward.end" | "forward.delete" => grant_end(inner, job, log, false).await,
        "router.reconcile" => crate::reconcile::run_job(inner, job, log)
            .await
            .map(|()| Done::Nothing),
        "noop" => {
            log.line(format!(
                "nothing to do; run by worker {}",
                inner.config.owner
            ));
            Ok(Done::Nothing)
        }
        other => Err(Error::Permanent(format!("unknown job kind {other:?}"))),
    }
}

fn payload_id<T: std::str::FromStr>(job: &Job) -> Result<T> {
    let text = job
        .payload
        .get("grant_id")
        .or_else(|| job.payload.get("access_id"))
        .or_else(|| job.payload.get("forward_id"))
        .and_then(|v| v.as_str())
        .ok_or_else(|| Error::Permanent("the job names no grant".into()))?;
    text.parse()
        .map_err(|_| Error::Permanent(format!("the job names an unreadable grant id {text:?}")))
}

fn not_found_is_permanent(e: store::StoreError) -> Error {
    match e {
        store::StoreError::NotFound => Error::Permanent("the grant no longer exists".into()),
        e => Error::Store(e),
    }
}

async fn access_create(inner: &Arc<Inner>, job: &Job, log: &JobLog) -> Result<Done> {
    let id: AccessId = payload_id(job)?;
    let (mut grant, password, source) = inner
        .store
        .access_to_make(job.org_id, job.router_id, id)
        .await
        .map_err(not_found_is_permanent)?;
    if !grant.status.is_live() {
        log.line(format!(
            "transient access {id} is {}: nothing to create",
            grant.status
        ));
        return Ok(Done::Nothing);
    }
    // The lease moves it (not when another transaction held the grant then); for a
    // job run behind a leased one, the end of its attempt does.
    if grant.status == GrantStatus::Requested && job.lease_owner.is_some() {
        let now = inner.clock.now();
        if let Ok(g) = inner
            .store
            .transition_access(
                id,
                &[GrantStatus::Requested],
                GrantStatus::Provisioning,
                now,
                None,
            )
            .await
        {
            grant = g;
        }
    }
    let conn = connections::connect_to(inner, job.router_id, log).await?;
    ensure_groups(&conn, log).await?;
    let known = Known {
        password,
        addresses: addresses_from(
            inner,
            crate::dataplane::gateway_source(
                &*inner.dataplane,
                conn.reach,
                grant.region_id,
                source,
                inner.config.default_tunnel_source,
            ),
            &grant,
        ),
    };
    if grant.access == AccessLevel::Write {
        // No entry that removes users may stand on a router where a write user can
        // edit it (see `self_expiry_refusal`): other grants' entries go first.
        remove_user_entries(inner, &conn, log).await?;
        ensure_user(inner, &conn, &grant, Some(known), log).await?;
        ensure_schedule(
            inner,
            &conn,
            GrantKey::Access(id),
            grant.expires_at,
            Some(&grant),
            log,
        )
        .await?;
    } else {
        // The user and the self-expiry entry are independent: their commands go out
        // together on the connection (each under its own tag).
        let (user, schedule) = tokio::join!(
            ensure_user(inner, &conn, &grant, Some(known), log),
            ensure_schedule(
                inner,
                &conn,
                GrantKey::Access(id),
                grant.expires_at,
                Some(&grant),
                log,
            )
        );
        user?;
        schedule?;
    }
    Ok(Done::Activate(Box::new(LiveGrant::Access(grant))))
}

async fn forward_create(inner: &Arc<Inner>, job: &Job, log: &JobLog) -> Result<Done> {
    let id: ForwardId = payload_id(job)?;
    let (grant, router) = tokio::join!(
        inner.store.get_forward(job.org_id, job.router_id, id),
        inner.store.get_router_any_org(job.router_id),
    );
    let mut grant = grant.map_err(not_found_is_permanent)?;
    if !grant.status.is_live() {
        log.line(format!(
            "transient forward {id} is {}: nothing to create",
            grant.status
        ));
        return Ok(Done::Nothing);
    }
    if grant.status == GrantStatus::Requested && job.lease_owner.is_some() {
        let now = inner.clock.now();
        if let Ok(g) = inner
            .store
            .transition_forward(
                id,
                &[GrantStatus::Requested],
                GrantStatus::Provisioning,
                now,
                None,
            )
            .await
        {
            grant = g;
        }
    }
    let router = router?;
    let conn = connections::connect(inner, &router, log).await?;
    let source = forward_source(inner, &router, grant.region_id).await?;
    let (nat, schedule) = tokio::join!(
        ensure_nat(&conn, &router, &grant, source, log),
        ensure_schedule(
            inner,
            &conn,
            GrantKey::Forward(id),
            grant.expires_at,
            None,
            log,
        )
    );
    nat?;
    schedule?;
    Ok(Done::Activate(Box::new(LiveGrant::Forward(grant))))
}

/// The policies a group grants, as a sorted set: what RouterOS lists without `!`
/// (it prints the ones it denies as `!name`).
fn granted(policy: &[String]) -> std::collections::BTreeSet<&str> {
    policy
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty() && !p.starts_with('!'))
        .collect()
}

/// A Postern group found on the router whose policies are not exactly Postern's.
#[derive(Debug, Clone)]
pub struct GroupDrift {
    pub id: api::ItemId,
    pub name: &'static str,
    pub found: String,
    pub wanted: &'static str,
}

impl std::fmt::Display for GroupDrift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "group {} has policy {} instead of Postern's {}",
            self.name, self.found, self.wanted
        )
    }
}

/// Postern's groups among `groups` whose policies differ from Postern's.
pub(crate) fn group_drift(groups: &[api::group::Group]) -> Vec<GroupDrift> {
    let mut out = Vec::new();
    for (name, _, policy) in GROUPS {
        let wanted: Vec<String> = policy.split(',').map(str::to_owned).collect();
        for g in groups.iter().filter(|g| g.name == name) {
            if granted(&g.policy) != granted(&wanted) {
                out.push(GroupDrift {
                    id: g.id.clone(),
                    name,
                    found: {
                        let found: Vec<&str> = granted(&g.policy).into_iter().collect();
                        found.join(",")
                    },
                    wanted: policy,
                });
            }
        }
    }
    out
}

/// Sets a drifted group's policies back to Postern's (the server's log says so; the
/// caller has written the drift in the job's).
pub(crate) async fn repair_group(
    conn: &RouterConn,
    drift: &GroupDrift,
    log: &JobLog,
) -> Result<()> {
    tracing::warn!(router = %conn.name(), group = drift.name, found = %drift.found, "a Postern group's policies drifted; setting them back");
    let wanted: Vec<String> = drift.wanted.split(',').map(str::to_owned).collect();
    step(
        log,
        &format!(
            "/user/group/set .id={} policy={} ({})",
            drift.id, drift.wanted, drift.name
        ),
        api::group::set_policy(&conn.client, &drift.id, &wanted),
    )
    .await
}

/// Makes `postern-full`, `postern-write` and `postern-read` exist with exactly Postern's
/// policies. Run before every user is added (one `print`): a group is trusted by what
/// it grants, never by its name, so a group someone widened (a full user can) is set
/// back before a user is put in it.
pub(crate) async fn ensure_groups(conn: &RouterConn, log: &JobLog) -> Result<()> {
    let groups = step(
        log,
        "/user/group/print",
        api::group::print(&conn.client, &Filter::all()),
    )
    .await?;
    for drift in group_drift(&groups) {
        log.line(format!("drift: {drift}"));
        repair_group(conn, &drift, log).await?;
    }
    for (name, tag, policy) in GROUPS {
        if groups.iter().any(|g| g.name == name) {
            continue;
        }
        let new = api::group::NewGroup {
            name: name.into(),
            policy: policy.split(',').map(str::to_owned).collect(),
            comment: Some(tag.into()),
        };
        step(
            log,
            &format!("/user/group/add name={name} policy={policy} comment={tag}"),
            api::group::add(&conn.client, &new),
        )
        .await?;
    }
    Ok(())
}

/// The address a router sees the gateway's connections come from, for a forward's NAT
/// rules: the gateway's tunnel address for a tunnelled router, else the region's tunnel
/// source (or the configured default).
pub(crate) async fn forward_source(
    inner: &Arc<Inner>,
    router: &store::Router,
    region: domain::RegionId,
) -> Result<Option<std::net::IpAddr>> {
    let region_source = match router.reach {
        store::Reach::Tunnel => None,
        store::Reach::Direct => match inner.store.region_tunnel_source(region).await {
            Ok(s) => s,
            Err(store::StoreError::NotFound) => None,
            Err(e) => return Err(e.into()),
        },
    };
    Ok(crate::dataplane::gateway_source(
        &*inner.dataplane,
        router.reach,
        region,
        region_source,
        inner.config.default_tunnel_source,
    ))
}

/// The addresses a temporary user may log in from, on a router reached as `reach`.
pub(crate) async fn user_addresses(
    inner: &Arc<Inner>,
    reach: store::Reach,
    grant: &store::TransientAccess,
) -> Result<Vec<String>> {
    let region_source = match reach {
        store::Reach::Tunnel => None,
        store::Reach::Direct => match inner.store.region_tunnel_source(grant.region_id).await {
            Ok(s) => s,
            Err(store::StoreError::NotFound) => None,
            Err(e) => return Err(e.into()),
        },
    };
    let source = crate::dataplane::gateway_source(
        &*inner.dataplane,
        reach,
        grant.region_id,
        region_source,
        inner.config.default_tunnel_source,
    );
    Ok(addresses_from(inner, source, grant))
}

/// The addresses a temporary user may log in from, given where the gateway's
/// connections come from (`gateway_source`), and the RFC 1918 ranges when allowed.
fn addresses_from(
    _inner: &Arc<Inner>,
    source: Option<std::net::IpAddr>,
    grant: &store::TransientAccess,
) -> Vec<String> {
    let mut addresses = Vec::new();
    if let Some(source) = source {
        let bits = if source.is_ipv4() { 32 } else { 128 };
        addresses.push(format!("{source}/{bits}"));
    }
    if grant.allow_rfc1918 {
        addresses.extend(RFC1918.iter().map(|s| s.to_string()));
    }
    addresses
}

/// What adding a user takes besides its grant, when the caller has read it already.
pub(crate) struct Known {
    pub password: store::Secret,
    pub addresses: Vec<String>,
}

/// Adds the grant's user unless a user with its tag is there already. Its password and
/// addresses are `known`, or read here.
pub(crate) async fn ensure_user(
    inner: &Arc<Inner>,
    conn: &RouterConn,
    grant: &store::TransientAccess,
    known: Option<Known>,
    log: &JobLog,
) -> Result<()> {
    let tag = GrantKey::Access(grant.id).tag();
    let Known {
        password,
        addresses,
    } = match known {
        Some(known) => known,
        None => Known {
            password: inner.store.access_password(grant.id).await?,
            addresses: user_addresses(inner, conn.reach, grant).await?,
        },
    };
    if addresses.is_empty() {
        log.line(
            "the region has no tunnel source address configured: the user is not limited by address",
        );
    }
    let group = group_for(grant.access);
    let new = api::user::NewUser {
        name: grant.username.clone(),
        group: group.into(),
        password: password.expose().to_owned(),
        address: addresses.clone(),
        comment: Some(tag.clone()),
        disabled: false,
    };
    let what = format!(
        "/user/add name={} group={group} address={} comment={tag} (password not logged)",
        grant.username,
        addresses.join(",")
    );
    // Added at once (the common case, one round trip); if the router refuses, a user
    // of this grant may be there already (an earlier attempt made it): looked for then.
    let Err(refused) = step(log, &what, api::user::add(&conn.client, &new)).await else {
        return Ok(());
    };
    let found = step(
        log,
        &format!("/user/print ?comment={tag}"),
        api::user::print(&conn.client, &Filter::comment(&tag)),
    )
    .await?;
    if found.iter().any(|u| u.name == grant.username) {
        log.line(format!(
            "user {} is already on the router: nothing to add",
            grant.username
        ));
        return Ok(());
    }
    Err(refused)
}

/// Adds a forward's dst-nat rule (and masquerade rule when asked) unless there. Both
/// match only what comes from the gateway: `src-address=` the region's tunnel source
/// (the address routers see gateway connections come from), and `in-interface=` the
/// router's tunnel interface where it has one (a router reached directly has none
/// Postern knows of, so the source is what narrows it then). So a host on the router's
/// LAN, or anyone else who can reach its address, does not reach the device through
/// the rule. The masquerade rule is narrowed the same way (after dst-nat, the
/// connection still comes from the gateway's address).
pub(crate) async fn ensure_nat(
    conn: &RouterConn,
    router: &store::Router,
    grant: &store::TransientForward,
    source: Option<std::net::IpAddr>,
    log: &JobLog,
) -> Result<()> {
    let tag = GrantKey::Forward(grant.id).tag();
    let src_address = source.map(|s| s.to_string());
    // A tunnelled router's connections from the gateway arrive on its WireGuard
    // interface, as its enrolment script named it.
    let in_interface: Option<String> = (router.reach == store::Reach::Tunnel)
        .then(|| crate::dataplane::TUNNEL_INTERFACE.to_owned());
    if src_address.is_none() {
        log.line(
            "the region has no tunnel source address configured: the forward's NAT rules are not limited by source",
        );
    }
    let narrowing = format!(
        "{}{}",
        src_address
            .as_deref()
            .map(|s| format!(" src-address={s}"))
            .unwrap_or_default(),
        in_interface
            .as_deref()
            .map(|i| format!(" in-interface={i}"))
            .unwrap_or_default(),
    );
    let found = step(
        log,
        &format!("/ip/firewall/nat/print ?comment={tag}"),
        api::nat::print(&conn.client, &Filter::comment(&tag)),
    )
    .await?;
    if found.iter().any(|r| r.action.as_deref() == Some("dst-nat")) {
        log.line("the dst-nat rule is already on the router");
    } else {
        let rule = api::nat::NewNatRule {
            chain: "dstnat".into(),
            action: "dst-nat".into(),
            protocol: Some("tcp".into()),
            src_address: src_address.clone(),
            in_interface: in_interface.clone(),
            dst_address: Some(router.tunnel_address.to_string()),
            dst_port: Some(grant.router_port.to_string()),
            to_addresses: Some(grant.dst_address.to_string()),
            to_ports: Some(grant.dst_port.to_string()),
            comment: Some(tag.clone()),
            ..Default::default()
        };
        step(
            log,
            &format!(
                "/ip/firewall/nat/add chain=dstnat action=dst-nat protocol=tcp{narrowing} dst-address={} dst-port={} to-addresses={} to-ports={} comment={tag}",
                router.tunnel_address, grant.router_port, grant.dst_address, grant.dst_port
            ),
            api::nat::add(&conn.client, &rule),
        )
        .await?;
    }
    if grant.masquerade {
        if found
            .iter()
            .any(|r| r.action.as_deref() == Some("masquerade"))
        {
            log.line("the masquerade rule is already on the router");
        } else {
            let rule = api::nat::NewNatRule {
                chain: "srcnat".into(),
                action: "masquerade".into(),
                protocol: Some("tcp".into()),
                src_address: src_address.clone(),
                dst_address: Some(grant.dst_address.to_string()),
                dst_port: Some(grant.dst_port.to_string()),
                comment: Some(tag.clone()),
                ..Default::default()
            };
            let src = src_address
                .as_deref()
                .map(|s| format!(" src-address={s}"))
                .unwrap_or_default();
            step(
                log,
                &format!(
                    "/ip/firewall/nat/add chain=srcnat action=masquerade protocol=tcp{src} dst-address={} dst-port={} comment={tag}",
                    grant.dst_address, grant.dst_port
                ),
                api::nat::add(&conn.client, &rule),
            )
            .await?;
        }
    }
    Ok(())
}

/// Whether the router's device-mode lets the scheduler run (asked once per connection).
pub(crate) async fn scheduler_allowed(conn: &RouterConn, log: &JobLog) -> Result<bool> {
    let known = *conn
        .scheduler_allowed
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(allowed) = known {
        return Ok(allowed);
    }
    let allowed = match api::system::device_mode(&conn.client).await {
        Ok(mode) => mode.mode.as_deref() != Some("home") && mode.scheduler != Some(false),
        // RouterOS before 7.17 has no device-mode menu: nothing restricts the scheduler.
        Err(routeros::Error::Trap { .. }) => true,
        Err(e) => return Err(Error::from_router(e)),
    };
    log.line(format!(
        "sent /system/device-mode/print: the scheduler is {}",
        if allowed { "allowed" } else { "not allowed" }
    ));
    *conn
        .scheduler_allowed
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some(allowed);
    Ok(allowed)
}

/// How long a router's measured clock offset is used before it is read again: a burst
/// of grants on one router reads it once, and a clock that is set meanwhile is seen
/// within a second.
const CLOCK_FRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// How far the router's wall clock is ahead of UTC here (its time zone plus any skew),
/// from `/system/clock print` (read at most [`CLOCK_FRESH`] ago on this connection).
/// Writing the scheduler's start in the router's own clock this way is right whatever
/// its time zone, and survives a skewed clock.
async fn router_clock_offset(
    conn: &RouterConn,
    now: DateTime<Utc>,
    log: &JobLog,
) -> Result<(ChronoDuration, bool)> {
    let known = *conn.clock.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, offset, v7)) = known
        && at.elapsed() < CLOCK_FRESH
    {
        return Ok((offset, v7));
    }
    let asked = Instant::now();
    let response = step(
        log,
        "/system/clock/print",
        conn.client.call(Command::new("/system/clock/print")),
    )
    .await?;
    let item = response
        .items
        .first()
        .ok_or_else(|| Error::Router("/system/clock/print returned nothing".into()))?;
    let (local, v7) = parse_router_clock(item)
        .ok_or_else(|| Error::Router("/system/clock/print: unreadable date or time".into()))?;
    let offset = local - now.naive_utc();
    *conn.clock.lock().unwrap_or_else(|e| e.into_inner()) = Some((asked, offset, v7));
    Ok((offset, v7))
}

/// Whether the router speaks RouterOS 7 (its clock's date form, read as
/// [`router_clock_offset`] reads it, so usually from the connection's cache).
pub(crate) async fn router_is_v7(
    inner: &Arc<Inner>,
    conn: &RouterConn,
    log: &JobLog,
) -> Result<bool> {
    Ok(router_clock_offset(conn, inner.clock.now(), log).await?.1)
}

/// The router's local date and time, and whether the date is in RouterOS 7's form.
pub fn parse_router_clock(item: &Item) -> Option<(NaiveDateTime, bool)> {
    let date = item.get_str("date")?;
    let time = NaiveTime::parse_from_str(item.get_str("time")?, "%H:%M:%S").ok()?;
    if let Ok(d) = NaiveDate::parse_from_str(date, "%Y-%m-%d") {
        return Some((d.and_time(time), true));
    }
    let d = NaiveDate::parse_from_str(date, "%b/%d/%Y").ok()?;
    Some((d.and_time(time), false))
}

/// The policies a self-expiry entry runs with: exactly what its script needs.
/// RouterOS runs a scheduler entry's `on-event` with the entry's `policy` (all of
/// `ftp,reboot,read,write,policy,test,password,sniff,sensitive,romon` when none is
/// given, which is how a write user could once turn Postern's entry into a full user).
/// Removing a user needs `policy` with `write` ("user management"), finding it `read`;
/// removing NAT rules and the entry itself `read` and `write`.
pub const ENTRY_POLICY_USER: &str = "read,write,policy";
/// See [`ENTRY_POLICY_USER`].
pub const ENTRY_POLICY_NAT: &str = "read,write";

/// A grant's self-expiry entry as Postern writes it: its `on-event` script and policy.
///
/// RouterOS 6 (`v7` false) has no `/user active remove`; a script naming it would not
/// compile there and so would remove nothing: its script only removes the user.
pub fn entry_script(key: GrantKey, username: Option<&str>, v7: bool) -> (String, &'static str) {
    let name = schedule_name(key);
    let tag = key.tag();
    let mut script = Vec::new();
    let policy = if let Some(user) = username {
        if v7 {
            script.extend(end_sessions_script(user));
        }
        script.push(format!("/user remove [find comment=\"{tag}\"]"));
        ENTRY_POLICY_USER
    } else {
        script.push(format!("/ip firewall nat remove [find comment=\"{tag}\"]"));
        ENTRY_POLICY_NAT
    };
    script.push(format!("/system scheduler remove [find name=\"{name}\"]"));
    (script.join("\n"), policy)
}

/// Whether an entry on the router is the one Postern writes for its grant: the same
/// script and the same policies (what the router prints without `!`).
pub fn entry_matches(entry: &api::scheduler::Schedule, script: &str, policy: &str) -> bool {
    let wanted: Vec<String> = policy.split(',').map(str::to_owned).collect();
    entry.on_event.as_deref() == Some(script) && granted(&entry.policy) == granted(&wanted)
}

/// Why an access grant gets no self-expiry entry, if it does not: its entry removes a
/// user, so it carries `policy`, and whether RouterOS lets a `write` user (who may edit
/// scheduler entries but not users) rewrite the script of an entry with more policies
/// than its own is not documented. So such an entry never stands on a router while a
/// write user of Postern's may be there: a `write` grant gets none, and while one is
/// live on the router other access grants get none either (the reconciler puts them
/// back once it has ended). Expiry then relies on Postern alone, as under device-mode.
pub(crate) async fn self_expiry_refusal(
    inner: &Arc<Inner>,
    grant: &store::TransientAccess,
) -> Result<Option<&'static str>> {
    if grant.access == AccessLevel::Write {
        return Ok(Some(
            "no self-expiry entry for a write grant (a write user could edit it); expiry relies on Postern",
        ));
    }
    if inner
        .store
        .router_has_unfinished_write_access(grant.router_id)
        .await?
    {
        return Ok(Some(
            "no self-expiry entry while a write grant is live on this router (its user could edit it); expiry relies on Postern",
        ));
    }
    Ok(None)
}

/// Removes every access grant's self-expiry entry from the router (a write grant is
/// about to put a user there who could edit them); the reconciler adds them back once
/// no write grant is live.
pub(crate) async fn remove_user_entries(
    inner: &Arc<Inner>,
    conn: &RouterConn,
    log: &JobLog,
) -> Result<()> {
    if !inner.config.router_self_expiry {
        return Ok(());
    }
    let entries = step(
        log,
        "/system/scheduler/print",
        api::scheduler::print(&conn.client, &Filter::all()),
    )
    .await?;
    for e in entries.iter().filter(|e| {
        e.comment
            .as_deref()
            .is_some_and(|c| c.starts_with("postern:access:"))
    }) {
        step(
            log,
            &format!(
                "/system/scheduler/remove .id={} ({}: a write user may edit scheduler entries)",
                e.id, e.name
            ),
            api::scheduler::remove(&conn.client, &e.id),
        )
        .await?;
    }
    Ok(())
}

/// The self-expiry entry's `start-date` and `start-time` for a grant ending at
/// `expires_at`, in the router's clock (`offset` from UTC, RouterOS 7's date form or 6's).
/// The router prints whole seconds, so the measured offset may be up to 1 s short: one
/// more second, then rounded up to a whole second, keeps the entry from ever running
/// before the grant's end (it runs within 2 s after). Postern's own timer is the exact
/// one; this is the backstop. `None` when the router's clock is so far off that the time
/// is past the last date there is (a router's reply must not crash the worker) or not a
/// four-digit year (RouterOS dates have four).
pub fn schedule_start(
    expires_at: DateTime<Utc>,
    offset: ChronoDuration,
    v7: bool,
) -> Option<(String, String)> {
    let local = expires_at
        .naive_utc()
        .checked_add_signed(offset)?
        .checked_add_signed(ChronoDuration::seconds(1))?;
    let frac = i64::from(local.and_utc().timestamp_subsec_nanos());
    let local = if frac > 0 {
        local.checked_add_signed(ChronoDuration::nanoseconds(1_000_000_000 - frac))?
    } else {
        local
    };
    if !(1970..=9999).contains(&local.year()) {
        return None;
    }
    let date = if v7 {
        local.format("%Y-%m-%d").to_string()
    } else {
        local.format("%b/%d/%Y").to_string().to_lowercase()
    };
    Some((date, local.format("%H:%M:%S").to_string()))
}

/// Adds (or moves) the entry that ends the grant on the router itself at its expiry,
/// when device-mode allows the scheduler, the config asks for it, and (for an access
/// grant, `user`) [`self_expiry_refusal`] does not refuse it. The entry carries only
/// the policies its script needs.
pub(crate) async fn ensure_schedule(
    inner: &Arc<Inner>,
    conn: &RouterConn,
    key: GrantKey,
    expires_at: DateTime<Utc>,
    user: Option<&store::TransientAccess>,
    log: &JobLog,
) -> Result<()> {
    if !inner.config.router_self_expiry {
        return Ok(());
    }
    if let Some(grant) = user
        && let Some(why) = self_expiry_refusal(inner, grant).await?
    {
        log.line(why);
        return Ok(());
    }
    if !scheduler_allowed(conn, log).await? {
        log.line("router's device-mode does not allow the scheduler; expiry relies on Postern");
        return Ok(());
    }
    let now = inner.clock.now();
    let (offset, v7) = router_clock_offset(conn, now, log).await?;
    let Some((date, time)) = schedule_start(expires_at, offset, v7) else {
        log.line(format!(
            "router clock {:+} s from UTC puts the grant's end outside the dates it can hold; expiry relies on Postern",
            offset.num_seconds()
        ));
        return Ok(());
    };
    let name = schedule_name(key);
    let tag = key.tag();
    let (script, policy) = entry_script(key, user.map(|g| g.username.as_str()), v7);
    let entry = api::scheduler::NewSchedule {
        name: name.clone(),
        start_date: Some(date.clone()),
        start_time: Some(time.clone()),
        interval: None,
        on_event: script.clone(),
        comment: Some(tag.clone()),
        policy: policy.split(',').map(str::to_owned).collect(),
    };
    let what = format!(
        "/system/scheduler/add name={name} start-date={date} start-time={time} policy={policy} comment={tag} (router clock {:+} s from UTC)",
        offset.num_seconds()
    );
    // Added at once (the common case, one round trip); if the router refuses, an entry
    // of that name is there already (an earlier attempt's, or one for an older end):
    // kept if it is Postern's entry ending the grant at this time, else replaced.
    let Err(refused) = step(log, &what, api::scheduler::add(&conn.client, &entry)).await else {
        return Ok(());
    };
    let existing = step(
        log,
        &format!("/system/scheduler/print ?name={name}"),
        api::scheduler::print(&conn.client, &Filter::name(&name)),
    )
    .await?;
    if existing.is_empty() {
        return Err(refused);
    }
    for old in &existing {
        if old.start_date.as_deref() == Some(date.as_str())
            && old.start_time.as_deref() == Some(time.as_str())
            && entry_matches(old, &script, policy)
        {
            log.line(format!(
                "scheduler entry {name} already ends the grant at {date} {time}"
            ));
            return Ok(());
        }
        step(
            log,
            &format!(
                "/system/scheduler/remove .id={} (its time, script or policy is not Postern's)",
                old.id
            ),
            api::scheduler::remove(&conn.client, &old.id),
        )
        .await?;
    }
    step(log, &what, api::scheduler::add(&conn.client, &entry)).await?;
    Ok(())
}

/// The lines of a self-expiry script that end a user's live sessions: each session on
/// its own, a refusal caught, so neither a session RouterOS will not end (it refuses
/// API and REST API ones with `action failed (6)`) nor any other stops the user's own
/// removal on the next line.
pub fn end_sessions_script(user: &str) -> Vec<String> {
    vec![format!(
        ":foreach s in=[/user active find where name=\"{user}\"] do={{ :do {{ /user active remove $s }} on-error={{ :log warning \"postern: a session of {user} could not be ended\" }} }}"
    )]
}

/// Ends one live session (`/user/active/remove`). A router that refuses (RouterOS
/// refuses API and REST API sessions with `action failed (6)`; RouterOS 6 has no such
/// command) does not stop the clean-up: the gateway has already cut every connection
/// that came through it, so this is logged and the user's removal goes on. A lost
/// connection still fails the attempt.
pub(crate) async fn end_session(
    conn: &RouterConn,
    session: &api::active::ActiveUser,
    log: &JobLog,
) -> Result<()> {
    let what = format!(
        "/user/active/remove .id={} ({} session from {})",
        session.id,
        session.via.as_deref().unwrap_or("a"),
        session.address.as_deref().unwrap_or("an unknown address")
    );
    match step(log, &what, api::active::remove(&conn.client, &session.id)).await {
        Ok(()) => Ok(()),
        Err(Error::Router(_) | Error::Refused(_)) => {
            log.line(format!(
                "the {} session of {} could not be ended on the router; the gateway has already cut every connection that came through it, so the user's removal goes on",
                session.via.as_deref().unwrap_or("unknown"),
                session.name
            ));
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Logs out a user's sessions and removes its tagged user.
pub(crate) async fn remove_user(
    conn: &RouterConn,
    tag: &str,
    username: &str,
    log: &JobLog,
) -> Result<()> {
    let sessions = step(
        log,
        &format!("/user/active/print ?name={username}"),
        api::active::print(&conn.client, &Filter::name(username)),
    )
    .await?;
    for session in &sessions {
        end_session(conn, session, log).await?;
    }
    if sessions.is_empty() {
        log.line(format!("user {username} has no active session"));
    }
    let users = step(
        log,
        &format!("/user/print ?comment={tag}"),
        api::user::print(&conn.client, &Filter::comment(tag)),
    )
    .await?;
    for user in &users {
        step(
            log,
            &format!("/user/remove .id={} (user {})", user.id, user.name),
            api::user::remove(&conn.client, &user.id),
        )
        .await?;
    }
    if users.is_empty() {
        log.line(format!(
            "user {username} is not on the router (already removed)"
        ));
    }
    Ok(())
}

/// Removes every NAT rule tagged `tag`.
pub(crate) async fn remove_nat(conn: &RouterConn, tag: &str, log: &JobLog) -> Result<()> {
    let rules = step(
        log,
        &format!("/ip/firewall/nat/print ?comment={tag}"),
        api::nat::print(&conn.client, &Filter::comment(tag)),
    )
    .await?;
    for rule in &rules {
        step(
            log,
            &format!(
                "/ip/firewall/nat/remove .id={} ({} rule)",
                rule.id,
                rule.action.as_deref().unwrap_or("a")
            ),
            api::nat::remove(&conn.client, &rule.id),
        )
        .await?;
    }
    if rules.is_empty() {
        log.line("no NAT rule of this forward is on the router (already removed)");
    }
    Ok(())
}

/// Removes the grant's scheduler entry.
async fn remove_schedule(conn: &RouterConn, key: GrantKey, log: &JobLog) -> Result<()> {
    let name = schedule_name(key);
    let entries = step(
        log,
        &format!("/system/scheduler/print ?name={name}"),
        api::scheduler::print(&conn.client, &Filter::name(&name)),
    )
    .await?;
    for entry in &entries {
        step(
            log,
            &format!("/system/scheduler/remove .id={} ({name})", entry.id),
            api::scheduler::remove(&conn.client, &entry.id),
        )
        .await?;
    }
    Ok(())
}

/// Ends a grant on the router; its final status is recorded with the job's end.
async fn grant_end(inner: &Arc<Inner>, job: &Job, log: &JobLog, access: bool) -> Result<Done> {
    let reason = job
        .payload
        .get("reason")
        .and_then(|r| r.as_str())
        .and_then(EndReason::parse)
        .unwrap_or(EndReason::Revoked);
    let key = if access {
        let id: AccessId = payload_id(job)?;
        let (grant, conn) = tokio::join!(
            inner.store.get_access(job.org_id, job.router_id, id),
            connections::connect_to(inner, job.router_id, log),
        );
        let (grant, conn) = (grant.map_err(not_found_is_permanent)?, conn?);
        let key = GrantKey::Access(id);
        let tag = key.tag();
        let (user, schedule) = tokio::join!(
            remove_user(&conn, &tag, &grant.username, log),
            remove_schedule(&conn, key, log),
        );
        user?;
        schedule?;
        key
    } else {
        let id: ForwardId = payload_id(job)?;
        let conn = connections::connect_to(inner, job.router_id, log).await?;
        let key = GrantKey::Forward(id);
        let tag = key.tag();
        let (nat, schedule) = tokio::join!(
            remove_nat(&conn, &tag, log),
            remove_schedule(&conn, key, log),
        );
        nat?;
        schedule?;
        key
    };
    match reason {
        EndReason::Expired => Ok(Done::End(key, GrantStatus::Expired)),
        EndReason::Revoked => Ok(Done::End(key, GrantStatus::Revoked)),
        EndReason::Failed => {
            log.line(format!(
                "the router holds nothing of the failed grant ({key})"
            ));
            Ok(Done::Nothing)
        }
    }
}
