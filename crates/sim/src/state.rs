//! The router's data: identity, users, groups and their policies, active sessions, NAT
//! and filter rules, scheduler entries, WireGuard interfaces and peers, IP addresses,
//! services, files and device-mode, kept behind one lock in [`State`].
//!
//! [`State::wireguard`] reads the WireGuard tables in a plain form (key bytes, ports,
//! peers, the interface's addresses) for whatever brings the tunnel up.
//!
//! Menus are tables of [`Item`]s: a RouterOS `.id` (`*` and upper-case hex, increasing,
//! never reused within a table) and properties kept as text, exactly as `print` shows
//! them. A property that is not set is absent (so `?-comment` finds items without a
//! comment, as on RouterOS). What a table accepts is its [`Schema`].

use std::collections::{BTreeMap, HashMap};

use tokio_util::sync::CancellationToken;

/// The policies RouterOS 7 knows, in the order it prints them.
pub const POLICY_NAMES: [&str; 17] = [
    "local",
    "telnet",
    "ssh",
    "ftp",
    "reboot",
    "read",
    "write",
    "policy",
    "test",
    "winbox",
    "password",
    "web",
    "sniff",
    "sensitive",
    "api",
    "romon",
    "rest-api",
];

/// A set of group policies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policies(u32);

impl Policies {
    pub const ALL: Policies = Policies((1 << POLICY_NAMES.len()) - 1);

    fn bit(name: &str) -> Option<u32> {
        POLICY_NAMES.iter().position(|p| *p == name).map(|i| 1 << i)
    }

    /// Parses `local,ssh,!write`: names without `!` are granted, names with `!` are
    /// listed as denied (and so not granted). `None` for an unknown name.
    pub fn parse(s: &str) -> Option<Policies> {
        let mut set = 0;
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.strip_prefix('!') {
                Some(denied) => {
                    Self::bit(denied)?;
                }
                None => set |= Self::bit(part)?,
            }
        }
        Some(Policies(set))
    }

    pub fn has(self, name: &str) -> bool {
        Self::bit(name).is_some_and(|b| self.0 & b != 0)
    }

    /// The granted ones alone, comma-separated (as a scheduler entry's `policy`).
    pub fn granted(self) -> String {
        POLICY_NAMES
            .iter()
            .filter(|p| self.has(p))
            .copied()
            .collect::<Vec<_>>()
            .join(",")
    }

    /// As RouterOS prints a group's `policy`: granted ones, then the others with `!`.
    pub fn render(self) -> String {
        let granted = POLICY_NAMES
            .iter()
            .filter(|p| self.has(p))
            .map(|p| p.to_string());
        let denied = POLICY_NAMES
            .iter()
            .filter(|p| !self.has(p))
            .map(|p| format!("!{p}"));
        granted.chain(denied).collect::<Vec<_>>().join(",")
    }

    /// Whether every policy of `self` is also in `other`.
    pub fn within(self, other: Policies) -> bool {
        self.0 & !other.0 == 0
    }

    /// The policies in both.
    pub fn and(self, other: Policies) -> Policies {
        Policies(self.0 & other.0)
    }

    pub fn without(self, names: &[&str]) -> Policies {
        let mask = names
            .iter()
            .filter_map(|n| Self::bit(n))
            .fold(0, |a, b| a | b);
        Policies(self.0 & !mask)
    }
}

/// One row of a menu.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub id: u32,
    pub props: BTreeMap<String, String>,
}

impl Item {
    pub fn id_string(&self) -> String {
        format_id(self.id)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.props.get(key).map(String::as_str)
    }

    pub fn is_disabled(&self) -> bool {
        self.get("disabled") == Some("true")
    }

    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.props.insert(key.to_string(), value.into());
    }
}

pub fn format_id(id: u32) -> String {
    format!("*{id:X}")
}

/// Parses `*1A` into 0x1A.
pub fn parse_id(s: &str) -> Option<u32> {
    let hex = s.strip_prefix('*')?;
    if hex.is_empty() || hex.len() > 8 {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

/// How a property may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Set by `add`/`set`, shown by `print`.
    ReadWrite,
    /// Shown by `print`, kept by the router.
    ReadOnly,
    /// Set by `add`/`set`, never shown (a password).
    Secret,
}

/// The properties of a menu, in `print` order.
#[derive(Debug)]
pub struct Schema {
    pub fields: &'static [(&'static str, Access)],
}

impl Schema {
    pub fn access(&self, name: &str) -> Option<Access> {
        self.fields
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| *a)
    }

    pub fn has_name(&self) -> bool {
        self.access("name").is_some()
    }
}

use Access::{ReadOnly as Ro, ReadWrite as Rw, Secret};

pub static USER: Schema = Schema {
    fields: &[
        ("name", Rw),
        ("group", Rw),
        ("address", Rw),
        ("last-logged-in", Ro),
        ("disabled", Rw),
        ("comment", Rw),
        ("password", Secret),
    ],
};

pub static GROUP: Schema = Schema {
    fields: &[("name", Rw), ("policy", Rw), ("skin", Rw), ("comment", Rw)],
};

pub static ACTIVE: Schema = Schema {
    fields: &[
        ("when", Ro),
        ("name", Ro),
        ("address", Ro),
        ("via", Ro),
        ("group", Ro),
        ("radius", Ro),
    ],
};

pub static NAT: Schema = Schema {
    fields: &[
        ("chain", Rw),
        ("action", Rw),
        ("protocol", Rw),
        ("src-address", Rw),
        ("dst-address", Rw),
        ("dst-port", Rw),
        ("in-interface", Rw),
        ("out-interface", Rw),
        ("to-addresses", Rw),
        ("to-ports", Rw),
        ("log", Rw),
        ("log-prefix", Rw),
        ("bytes", Ro),
        ("packets", Ro),
        ("invalid", Ro),
        ("dynamic", Ro),
        ("disabled", Rw),
        ("comment", Rw),
    ],
};

pub static SCHEDULER: Schema = Schema {
    fields: &[
        ("name", Rw),
        ("start-date", Rw),
        ("start-time", Rw),
        ("interval", Rw),
        ("on-event", Rw),
        ("owner", Ro),
        ("policy", Rw),
        ("run-count", Ro),
        ("next-run", Ro),
        ("disabled", Rw),
        ("comment", Rw),
    ],
};

pub static WIREGUARD: Schema = Schema {
    fields: &[
        ("name", Rw),
        ("mtu", Rw),
        ("listen-port", Rw),
        ("private-key", Rw),
        ("public-key", Ro),
        ("running", Ro),
        ("disabled", Rw),
        ("comment", Rw),
    ],
};

pub static WIREGUARD_PEERS: Schema = Schema {
    fields: &[
        ("interface", Rw),
        ("public-key", Rw),
        ("preshared-key", Rw),
        ("endpoint-address", Rw),
        ("endpoint-port", Rw),
        ("current-endpoint-address", Ro),
        ("current-endpoint-port", Ro),
        ("allowed-address", Rw),
        ("persistent-keepalive", Rw),
        ("rx", Ro),
        ("tx", Ro),
        ("last-handshake", Ro),
        ("disabled", Rw),
        ("comment", Rw),
    ],
};

pub static ADDRESS: Schema = Schema {
    fields: &[
        ("address", Rw),
        ("network", Rw),
        ("interface", Rw),
        ("actual-interface", Ro),
        ("invalid", Ro),
        ("dynamic", Ro),
        ("disabled", Rw),
        ("comment", Rw),
    ],
};

pub static FILTER: Schema = Schema {
    fields: &[
        ("chain", Rw),
        ("action", Rw),
        ("protocol", Rw),
        ("src-address", Rw),
        ("dst-address", Rw),
        ("dst-port", Rw),
        ("in-interface", Rw),
        ("out-interface", Rw),
        ("connection-state", Rw),
        ("reject-with", Rw),
        ("log", Rw),
        ("log-prefix", Rw),
        ("bytes", Ro),
        ("packets", Ro),
        ("invalid", Ro),
        ("dynamic", Ro),
        ("disabled", Rw),
        ("comment", Rw),
    ],
};

pub static SERVICE: Schema = Schema {
    fields: &[
        ("name", Ro),
        ("port", Rw),
        ("address", Rw),
        ("certificate", Rw),
        ("max-sessions", Rw),
        ("invalid", Ro),
        ("dynamic", Ro),
        ("disabled", Rw),
    ],
};

pub static FILE: Schema = Schema {
    fields: &[
        ("name", Rw),
        ("type", Rw),
        ("size", Ro),
        ("last-modified", Ro),
        ("contents", Rw),
    ],
};

/// A table of items with its id counter.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub items: Vec<Item>,
    next_id: u32,
}

impl Table {
    /// Adds an item with the next id and returns that id.
    pub fn insert(&mut self, props: BTreeMap<String, String>) -> u32 {
        self.insert_at(props, None)
    }

    /// Adds an item at `position` (the end when `None` or past it).
    pub fn insert_at(&mut self, props: BTreeMap<String, String>, position: Option<usize>) -> u32 {
        self.next_id = self.next_id.saturating_add(1);
        let id = self.next_id;
        let at = position.unwrap_or(self.items.len()).min(self.items.len());
        self.items.insert(at, Item { id, props });
        id
    }

    pub fn get(&self, id: u32) -> Option<&Item> {
        self.items.iter().find(|i| i.id == id)
    }

    pub fn get_mut(&mut self, id: u32) -> Option<&mut Item> {
        self.items.iter_mut().find(|i| i.id == id)
    }

    pub fn by_name(&self, name: &str) -> Option<&Item> {
        self.items.iter().find(|i| i.get("name") == Some(name))
    }

    pub fn remove(&mut self, id: u32) -> Option<Item> {
        let pos = self.items.iter().position(|i| i.id == id)?;
        Some(self.items.remove(pos))
    }
}

/// The menus that are tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TableKind {
    Users,
    Groups,
    Active,
    Nat,
    Scheduler,
    /// `/interface/wireguard`.
    Wireguard,
    /// `/interface/wireguard/peers`.
    WireguardPeers,
    /// `/ip/address`.
    Addresses,
    /// `/ip/firewall/filter`.
    Filter,
    /// `/ip/service`: a fixed list, set but never added to.
    Services,
    /// `/file`.
    Files,
}

impl TableKind {
    pub fn schema(self) -> &'static Schema {
        match self {
            TableKind::Users => &USER,
            TableKind::Groups => &GROUP,
            TableKind::Active => &ACTIVE,
            TableKind::Nat => &NAT,
            TableKind::Scheduler => &SCHEDULER,
            TableKind::Wireguard => &WIREGUARD,
            TableKind::WireguardPeers => &WIREGUARD_PEERS,
            TableKind::Addresses => &ADDRESS,
            TableKind::Filter => &FILTER,
            TableKind::Services => &SERVICE,
            TableKind::Files => &FILE,
        }
    }
}

/// The features device-mode controls, in `print` order, and whether mode `home`
/// keeps them.
pub const DEVICE_MODE_FEATURES: [(&str, bool); 15] = [
    ("scheduler", false),
    ("socks", false),
    ("fetch", false),
    ("pptp", true),
    ("l2tp", true),
    ("bandwidth-test", false),
    ("traffic-gen", false),
    ("sniffer", false),
    ("ipsec", true),
    ("romon", false),
    ("proxy", false),
    ("hotspot", false),
    ("smb", true),
    ("email", true),
    ("zerotier", false),
];

/// `/system/device-mode`: what the owner allowed with physical access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceMode {
    /// Everything allowed but containers (RouterOS's default before 7.17 on most devices).
    Advanced,
    /// The 7.17+ default on home devices: no scheduler, fetch, socks, sniffer, …
    Home,
}

impl DeviceMode {
    pub fn name(self) -> &'static str {
        match self {
            DeviceMode::Advanced => "advanced",
            DeviceMode::Home => "home",
        }
    }

    pub fn allows_scheduler(self) -> bool {
        self == DeviceMode::Advanced
    }

    /// The `print` of `/system/device-mode` on a router of `version`: before 7.17 the
    /// mode that allows everything was called `enterprise` (MikroTik's device-mode page:
    /// "Advanced (previously called enterprise)").
    pub fn properties(self, version: (u32, u32, u32)) -> Vec<(String, String)> {
        let home = self == DeviceMode::Home;
        let yn = |allowed: bool| if allowed { "yes" } else { "no" }.to_string();
        let name = match self {
            DeviceMode::Advanced if version < (7, 17, 0) => "enterprise",
            _ => self.name(),
        };
        let mut out = vec![("mode".to_string(), name.to_string())];
        for (feature, in_home) in DEVICE_MODE_FEATURES {
            out.push((feature.to_string(), yn(!home || in_home)));
        }
        out.push(("container".into(), "no".into()));
        out
    }
}

/// Everything one router keeps.
#[derive(Debug)]
pub struct State {
    pub identity: String,
    pub device_mode: DeviceMode,
    pub users: Table,
    pub groups: Table,
    pub active: Table,
    pub nat: Table,
    pub scheduler: Table,
    pub wireguard: Table,
    pub wireguard_peers: Table,
    pub addresses: Table,
    pub filter: Table,
    pub services: Table,
    pub files: Table,
    /// The token that ends each active session, by its `/user/active` id.
    pub session_tokens: HashMap<u32, CancellationToken>,
}

fn props<const N: usize>(pairs: [(&str, &str); N]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl State {
    /// A freshly configured router: the three built-in groups and the `admin` user.
    pub fn new(identity: &str, admin_password: &str) -> State {
        let mut groups = Table::default();
        let full = Policies::ALL;
        // As RouterOS ships them: `write` lacks policy (and so cannot manage users);
        // `read` lacks write, policy, password and ftp but keeps reboot, sniff and
        // sensitive (which is why Postern makes its own read-only group).
        let write = full.without(&["policy"]);
        let read = full.without(&["ftp", "write", "policy", "password"]);
        for (name, policy) in [("read", read), ("write", write), ("full", full)] {
            groups.insert(props([
                ("name", name),
                ("policy", &policy.render()),
                ("skin", "default"),
            ]));
        }
        let mut users = Table::default();
        users.insert(props([
            ("name", "admin"),
            ("group", "full"),
            ("password", admin_password),
            ("disabled", "false"),
            ("comment", "system default user"),
        ]));
        let mut services = Table::default();
        for (name, port, disabled) in SERVICES {
            services.insert(props([
                ("name", name),
                ("port", &port.to_string()),
                ("address", ""),
                ("max-sessions", "20"),
                ("invalid", "false"),
                ("dynamic", "false"),
                ("disabled", if disabled { "true" } else { "false" }),
            ]));
        }
        for name in ["www-ssl", "api-ssl"] {
            if let Some(s) = services
                .items
                .iter_mut()
                .find(|i| i.get("name") == Some(name))
            {
                s.set("certificate", "none");
            }
        }
        State {
            identity: identity.to_string(),
            device_mode: DeviceMode::Advanced,
            users,
            groups,
            active: Table::default(),
            nat: Table::default(),
            scheduler: Table::default(),
            wireguard: Table::default(),
            wireguard_peers: Table::default(),
            addresses: Table::default(),
            filter: Table::default(),
            services,
            files: Table::default(),
            session_tokens: HashMap::new(),
        }
    }

    pub fn table(&self, kind: TableKind) -> &Table {
        match kind {
            TableKind::Users => &self.users,
            TableKind::Groups => &self.groups,
            TableKind::Active => &self.active,
            TableKind::Nat => &self.nat,
            TableKind::Scheduler => &self.scheduler,
            TableKind::Wireguard => &self.wireguard,
            TableKind::WireguardPeers => &self.wireguard_peers,
            TableKind::Addresses => &self.addresses,
            TableKind::Filter => &self.filter,
            TableKind::Services => &self.services,
            TableKind::Files => &self.files,
        }
    }

    pub fn table_mut(&mut self, kind: TableKind) -> &mut Table {
        match kind {
            TableKind::Users => &mut self.users,
            TableKind::Groups => &mut self.groups,
            TableKind::Active => &mut self.active,
            TableKind::Nat => &mut self.nat,
            TableKind::Scheduler => &mut self.scheduler,
            TableKind::Wireguard => &mut self.wireguard,
            TableKind::WireguardPeers => &mut self.wireguard_peers,
            TableKind::Addresses => &mut self.addresses,
            TableKind::Filter => &mut self.filter,
            TableKind::Services => &mut self.services,
            TableKind::Files => &mut self.files,
        }
    }

    /// The WireGuard interfaces with their peers and IP addresses, in a plain form:
    /// what a tunnel needs to come up. Disabled items are included (with `disabled`).
    pub fn wireguard(&self) -> Vec<WgInterface> {
        let key = |item: &Item, k: &str| item.get(k).and_then(decode_key);
        self.wireguard
            .items
            .iter()
            .filter_map(|i| {
                let name = i.get("name")?.to_string();
                let private_key = key(i, "private-key")?;
                let peers = self
                    .wireguard_peers
                    .items
                    .iter()
                    .filter(|p| p.get("interface") == Some(name.as_str()))
                    .filter_map(|p| {
                        Some(WgPeer {
                            id: p.id,
                            public_key: key(p, "public-key")?,
                            preshared_key: key(p, "preshared-key"),
                            endpoint_address: p
                                .get("endpoint-address")
                                .filter(|a| !a.is_empty())
                                .map(str::to_string),
                            endpoint_port: p
                                .get("endpoint-port")
                                .and_then(|v| v.parse().ok())
                                .filter(|v| *v != 0),
                            allowed_address: p
                                .get("allowed-address")
                                .unwrap_or_default()
                                .split(',')
                                .filter_map(|c| crate::addr::Cidr::parse(c.trim()))
                                .collect(),
                            persistent_keepalive: p
                                .get("persistent-keepalive")
                                .and_then(crate::clock::parse_interval)
                                .filter(|d| !d.is_zero()),
                            disabled: p.is_disabled(),
                            comment: p.get("comment").map(str::to_string),
                        })
                    })
                    .collect();
                let addresses = self
                    .addresses
                    .items
                    .iter()
                    .filter(|a| a.get("interface") == Some(name.as_str()))
                    .filter_map(|a| {
                        let cidr = crate::addr::Cidr::parse(a.get("address")?)?;
                        Some(WgAddress {
                            address: cidr.addr,
                            prefix: cidr.prefix,
                            network: a.get("network").and_then(|n| n.parse().ok()),
                            disabled: a.is_disabled(),
                        })
                    })
                    .collect();
                Some(WgInterface {
                    id: i.id,
                    public_key: public_key(&private_key),
                    private_key,
                    name,
                    listen_port: i
                        .get("listen-port")
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(WIREGUARD_PORT),
                    mtu: i.get("mtu").and_then(|p| p.parse().ok()).unwrap_or(1420),
                    disabled: i.is_disabled(),
                    addresses,
                    peers,
                })
            })
            .collect()
    }

    /// Whether the router has an interface of that name: `ether1` (its one Ethernet
    /// port) or a WireGuard interface.
    pub fn has_interface(&self, name: &str) -> bool {
        crate::nat::INTERFACES.contains(&name) || self.wireguard.by_name(name).is_some()
    }

    /// The policies of the group named `group`, if it exists.
    pub fn group_policies(&self, group: &str) -> Option<Policies> {
        self.groups
            .by_name(group)
            .and_then(|g| Policies::parse(g.get("policy").unwrap_or_default()))
    }
}

/// The services of `/ip/service` as RouterOS 7 ships them: name, port, disabled.
pub const SERVICES: [(&str, u16, bool); 8] = [
    ("telnet", 23, false),
    ("ftp", 21, false),
    ("www", 80, false),
    ("ssh", 22, false),
    ("www-ssl", 443, true),
    ("api", 8728, false),
    ("api-ssl", 8729, false),
    ("winbox", 8291, false),
];

/// The `listen-port` RouterOS gives a new WireGuard interface.
pub const WIREGUARD_PORT: u16 = 13231;

/// A WireGuard interface (`/interface/wireguard`), its peers and its IP addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgInterface {
    pub id: u32,
    pub name: String,
    /// Curve25519, as `private-key` holds it (base64 in `print`).
    pub private_key: [u8; 32],
    pub public_key: [u8; 32],
    pub listen_port: u16,
    pub mtu: u16,
    pub disabled: bool,
    /// `/ip/address` items on this interface.
    pub addresses: Vec<WgAddress>,
    pub peers: Vec<WgPeer>,
}

/// An `/ip/address` on a WireGuard interface: `address=100.64.0.7/32 network=100.64.0.1`
/// is a point-to-point address whose other end is `network`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgAddress {
    pub address: std::net::IpAddr,
    pub prefix: u8,
    pub network: Option<std::net::IpAddr>,
    pub disabled: bool,
}

/// A peer of a WireGuard interface (`/interface/wireguard/peers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgPeer {
    /// Its `.id`, for [`crate::Router::set_peer_status`].
    pub id: u32,
    pub public_key: [u8; 32],
    pub preshared_key: Option<[u8; 32]>,
    /// An address or a host name, as given.
    pub endpoint_address: Option<String>,
    pub endpoint_port: Option<u16>,
    pub allowed_address: Vec<crate::addr::Cidr>,
    pub persistent_keepalive: Option<std::time::Duration>,
    pub disabled: bool,
    pub comment: Option<String>,
}

/// What the tunnel saw of a peer, shown by `print` (`last-handshake`, `rx`, `tx`,
/// `current-endpoint-*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStatus {
    pub current_endpoint: Option<std::net::SocketAddr>,
    /// Time since the last handshake.
    pub last_handshake: Option<std::time::Duration>,
    pub rx: u64,
    pub tx: u64,
}

/// A key as RouterOS prints it: standard base64 of 32 bytes.
pub fn encode_key(key: &[u8; 32]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// A base64 key of 32 bytes; `None` for anything else.
pub fn decode_key(s: &str) -> Option<[u8; 32]> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()?;
    bytes.try_into().ok()
}

/// A new Curve25519 private key from the operating system's generator, clamped as
/// WireGuard keys are.
pub fn generate_private_key() -> [u8; 32] {
    use rand::RngCore;
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    x25519_dalek::StaticSecret::from(seed).to_bytes()
}

/// The public key of a private one.
pub fn public_key(private: &[u8; 32]) -> [u8; 32] {
    let secret = x25519_dalek::StaticSecret::from(*private);
    x25519_dalek::PublicKey::from(&secret).to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wireguard_keys() {
        let k = generate_private_key();
        assert_ne!(k, generate_private_key());
        let text = encode_key(&k);
        assert_eq!(text.len(), 44);
        assert_eq!(decode_key(&text), Some(k));
        assert_eq!(decode_key("short"), None);
        // RFC 7748's test vector (Alice).
        let alice: [u8; 32] =
            hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
                .unwrap()
                .try_into()
                .unwrap();
        assert_eq!(
            hex::encode(public_key(&alice)),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }

    #[test]
    fn built_in_groups_match_routeros() {
        let s = State::new("r", "pw");
        let read = s.group_policies("read").unwrap();
        for p in [
            "read",
            "reboot",
            "sniff",
            "sensitive",
            "api",
            "ssh",
            "winbox",
        ] {
            assert!(read.has(p), "{p}");
        }
        for p in ["write", "policy", "password", "ftp"] {
            assert!(!read.has(p), "{p}");
        }
        assert!(!s.group_policies("write").unwrap().has("policy"));
        assert!(s.group_policies("write").unwrap().has("write"));
        assert_eq!(s.group_policies("full"), Some(Policies::ALL));
        assert_eq!(s.groups.by_name("full").unwrap().id_string(), "*3");
    }

    #[test]
    fn policies_parse_and_render() {
        let p = Policies::parse("ssh,read,!write").unwrap();
        assert!(p.has("ssh") && p.has("read") && !p.has("write"));
        assert_eq!(Policies::parse(&p.render()), Some(p));
        assert!(Policies::parse("read,bogus").is_none());
        assert!(p.render().starts_with("ssh,read,!local"));
    }

    #[test]
    fn ids_increase_and_are_never_reused() {
        let mut t = Table::default();
        let a = t.insert(BTreeMap::new());
        let b = t.insert(BTreeMap::new());
        t.remove(b);
        let c = t.insert(BTreeMap::new());
        assert_eq!((a, b, c), (1, 2, 3));
        assert_eq!(format_id(0x1A), "*1A");
        assert_eq!(parse_id("*1A"), Some(0x1A));
        assert_eq!(parse_id("1A"), None);
        assert_eq!(parse_id("*"), None);
    }
}
