//! dst-nat for real: each enabled `chain=dstnat action=dst-nat protocol=tcp
//! dst-port=P to-addresses=A [to-ports=Q]` rule whose `dst-address` is empty or the
//! router's address makes the sim listen on the router's address, port P, and forward
//! each TCP connection to A:Q (Q defaults to P). `src-address` restricts who may connect
//! (others are closed at once, as if dropped). `in-interface` names one of the sim's
//! [`INTERFACES`]: every connection arrives on `ether1` (the sim has one address), so a
//! rule for another interface (or `!ether1`) matches nothing. Only the first matching
//! rule for a port counts, as in RouterOS's rule order.
//!
//! Connections through the router's WireGuard tunnel arrive on the WireGuard interface
//! at the router's tunnel address: [`crate::wg`] serves the rules that match those
//! ([`forward_on`]) from its own stack. A router behind NAT opens no listener here.
//!
//! Removing or disabling a rule closes its listener **and** the connections it
//! forwarded. A real router keeps established connections alive through conntrack
//! after the rule goes; closing them is what tests of revocation need, and it is what
//! Postern's gateway does on its side anyway. Only TCP is forwarded; single ports only
//! (port ranges in `dst-port` are accepted in the table but not forwarded).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::addr::AddressList;
use crate::router::Router;
use crate::state::Item;

/// The sim's interfaces, as a CHR's: `ether1`, where every connection to its address
/// arrives.
pub const INTERFACES: &[&str] = &["ether1"];

/// The one interface connections to the sim arrive on.
const ARRIVAL: &str = "ether1";

/// What one rule forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub port: u16,
    pub to: SocketAddr,
    pub sources: AddressList,
    pub negate_sources: bool,
}

/// The listeners that are running, by port.
#[derive(Debug, Default)]
pub struct Forwarder {
    running: HashMap<u16, (Forward, CancellationToken)>,
}

impl Forwarder {
    pub fn stop_all(&mut self) {
        for (_, (_, token)) in self.running.drain() {
            token.cancel();
        }
    }

    /// The ports being forwarded now.
    pub fn ports(&self) -> Vec<u16> {
        let mut p: Vec<u16> = self.running.keys().copied().collect();
        p.sort_unstable();
        p
    }
}

fn first_port(spec: &str) -> Option<u16> {
    spec.split([',', '-']).next()?.trim().parse().ok()
}

/// The forward a rule asks for, if it is one the sim applies to connections arriving on
/// `ether1` at the router's address.
pub fn forward_of(item: &Item, router_addr: IpAddr) -> Option<Forward> {
    forward_on(item, ARRIVAL, router_addr)
}

/// The forward a rule asks for connections arriving on interface `arrival` at
/// `local` (the WireGuard interface and the router's tunnel address, for [`crate::wg`]).
pub fn forward_on(item: &Item, arrival: &str, local: IpAddr) -> Option<Forward> {
    if item.is_disabled()
        || item.get("chain") != Some("dstnat")
        || item.get("action") != Some("dst-nat")
        || item.get("protocol") != Some("tcp")
    {
        return None;
    }
    let dst_port = item.get("dst-port")?;
    if dst_port.contains([',', '-']) {
        return None;
    }
    let port: u16 = dst_port.parse().ok()?;
    if let Some(i) = item.get("in-interface") {
        let matches = match i.strip_prefix('!') {
            Some(name) => name != arrival,
            None => i == arrival,
        };
        if !matches {
            return None;
        }
    }
    if let Some(dst) = item.get("dst-address") {
        let host = dst.strip_suffix("/32").unwrap_or(dst);
        if host.parse::<IpAddr>().ok()? != local {
            return None;
        }
    }
    let to_addr: IpAddr = item.get("to-addresses")?.split('-').next()?.parse().ok()?;
    let to_port = match item.get("to-ports") {
        Some(p) => first_port(p)?,
        None => port,
    };
    let (negate_sources, sources) = match item.get("src-address") {
        Some(s) => {
            let (neg, s) = match s.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, s),
            };
            (neg, AddressList::parse(s)?)
        }
        None => (false, AddressList::default()),
    };
    Some(Forward {
        port,
        to: SocketAddr::new(to_addr, to_port),
        sources,
        negate_sources,
    })
}

/// Brings the running listeners in line with the NAT table: starts new ones, stops
/// those whose rule went or changed. Outside a Tokio runtime it does nothing.
pub fn reconcile(router: &Router) {
    if tokio::runtime::Handle::try_current().is_err() {
        tracing::warn!("dst-nat rules changed outside a Tokio runtime; forwards not updated");
        return;
    }
    crate::wg::nat_changed(router);
    let addr = router.address();
    let mut desired: HashMap<u16, Forward> = HashMap::new();
    // Behind NAT nothing listens on the router's address: dst-nat works only through
    // the tunnel.
    if !router.behind_nat() {
        let state = router.state();
        for item in &state.nat.items {
            if let Some(f) = forward_of(item, addr) {
                desired.entry(f.port).or_insert(f);
            }
        }
    }
    let mut fw = router.inner.nat.lock().unwrap_or_else(|e| e.into_inner());
    fw.running.retain(|port, (f, token)| {
        let keep = desired.get(port) == Some(f);
        if !keep {
            token.cancel();
        }
        keep
    });
    if router.shutdown_token().is_cancelled() {
        return;
    }
    for (port, f) in desired {
        if fw.running.contains_key(&port) {
            continue;
        }
        let listener = match bind(SocketAddr::new(addr, port)) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(%addr, port, error = %e, "cannot listen for a dst-nat rule");
                continue;
            }
        };
        let token = router.shutdown_token().child_token();
        tokio::spawn(serve(router.clone(), listener, f.clone(), token.clone()));
        fw.running.insert(port, (f, token));
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let std = std::net::TcpListener::bind(addr)?;
    std.set_nonblocking(true)?;
    TcpListener::from_std(std)
}

async fn serve(router: Router, listener: TcpListener, f: Forward, token: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = token.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "dst-nat accept failed");
                    continue;
                }
            },
        };
        if router.faults().is_offline() {
            crate::net::reset(stream);
            continue;
        }
        // `src-address=!net` matches everyone outside `net`.
        let allowed = f.sources.allows(peer.ip()) != f.negate_sources;
        if !allowed {
            drop(stream);
            continue;
        }
        let conn = router.faults().connection_token();
        let token = token.clone();
        let to = f.to;
        tokio::spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = conn.cancelled() => {}
                r = forward(stream, to) => if let Err(e) = r {
                    tracing::debug!(error = %e, %to, "dst-nat forward ended");
                },
            }
        });
    }
}

async fn forward(mut client: TcpStream, to: SocketAddr) -> std::io::Result<()> {
    let mut upstream = TcpStream::connect(to).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}
