//! The router's data: identity, users, groups and their policies, active sessions, NAT
//! rules, scheduler entries and device-mode, kept behind one lock in [`State`].
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
}

impl TableKind {
    pub fn schema(self) -> &'static Schema {
        match self {
            TableKind::Users => &USER,
            TableKind::Groups => &GROUP,
            TableKind::Active => &ACTIVE,
            TableKind::Nat => &NAT,
            TableKind::Scheduler => &SCHEDULER,
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
        State {
            identity: identity.to_string(),
            device_mode: DeviceMode::Advanced,
            users,
            groups,
            active: Table::default(),
            nat: Table::default(),
            scheduler: Table::default(),
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
        }
    }

    pub fn table_mut(&mut self, kind: TableKind) -> &mut Table {
        match kind {
            TableKind::Users => &mut self.users,
            TableKind::Groups => &mut self.groups,
            TableKind::Active => &mut self.active,
            TableKind::Nat => &mut self.nat,
            TableKind::Scheduler => &mut self.scheduler,
        }
    }

    /// The policies of the group named `group`, if it exists.
    pub fn group_policies(&self, group: &str) -> Option<Policies> {
        self.groups
            .by_name(group)
            .and_then(|g| Policies::parse(g.get("policy").unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
