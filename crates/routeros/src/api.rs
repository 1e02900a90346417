//! Typed helpers for the menus a remote-access tool touches: `/user`, `/user/group`,
//! `/user/active`, `/ip/firewall/nat`, `/system/scheduler`, and the `print`s of
//! `/system/identity`, `/system/resource` and `/system/device-mode`.
//!
//! Each menu is a module of free functions over a [`Client`] (`api::user::add(&client,
//! &new_user)`). Property names are RouterOS's own (`.id`, `to-addresses`, `on-event`…).
//! Typed structs read what they know and keep every property in `properties`, so a
//! newer RouterOS that adds some breaks nothing. Booleans are sent as `yes`/`no`, as the
//! console writes them; replies' `true`/`false` (and `yes`/`no`) are read.

use std::fmt;

use crate::client::Client;
use crate::error::Error;
use crate::item::Item;
use crate::message::Command;

/// The `.id` of an item on a router, such as `*1F`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItemId(String);

impl ItemId {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ItemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for ItemId {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

/// Which items a `print` returns: every one, or those matching all the given properties
/// (`?name=…`, `?comment=…`, ANDed as RouterOS does with consecutive queries).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub equals: Vec<(String, String)>,
}

impl Filter {
    /// No filter: every item.
    pub fn all() -> Self {
        Self::default()
    }

    /// Items whose `key` is `value`.
    pub fn eq(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self::all().and_eq(key, value)
    }

    pub fn name(value: impl Into<String>) -> Self {
        Self::eq("name", value)
    }

    pub fn comment(value: impl Into<String>) -> Self {
        Self::eq("comment", value)
    }

    /// Adds a condition.
    pub fn and_eq(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.equals.push((key.into(), value.into()));
        self
    }

    fn apply(&self, mut command: Command) -> Command {
        for (k, v) in &self.equals {
            command = command.where_eq(k, v);
        }
        command
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn id_of(item: &Item) -> Result<ItemId, Error> {
    item.require_str(".id").map(ItemId::new)
}

/// Runs an `add` and returns the new item's `.id` (the `=ret=` of its `!done`).
async fn add(client: &Client, command: Command) -> Result<ItemId, Error> {
    let response = client.call(command).await?;
    response
        .ret()
        .map(ItemId::new)
        .ok_or_else(|| Error::Protocol("an add gave no =ret= with the new item's .id".into()))
}

async fn print<T>(
    client: &Client,
    menu: &str,
    filter: &Filter,
    parse: fn(Item) -> Result<T, Error>,
) -> Result<Vec<T>, Error> {
    let command = filter.apply(Command::new(format!("{menu}/print")));
    client
        .call(command)
        .await?
        .items
        .into_iter()
        .map(parse)
        .collect()
}

async fn remove(client: &Client, menu: &str, id: &ItemId) -> Result<(), Error> {
    client
        .call(Command::new(format!("{menu}/remove")).attr(".id", id.as_str()))
        .await
        .map(|_| ())
}

/// `/user`: add, print, remove.
pub mod user {
    use super::*;

    const MENU: &str = "/user";

    /// A user to add.
    #[derive(Clone, Default, PartialEq, Eq)]
    pub struct NewUser {
        pub name: String,
        pub group: String,
        pub password: String,
        /// Addresses or networks the user may log in from (`address=`); empty for any.
        pub address: Vec<String>,
        pub comment: Option<String>,
        pub disabled: bool,
    }

    impl fmt::Debug for NewUser {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("NewUser")
                .field("name", &self.name)
                .field("group", &self.group)
                .field("password", &"<redacted>")
                .field("address", &self.address)
                .field("comment", &self.comment)
                .field("disabled", &self.disabled)
                .finish()
        }
    }

    /// A user as `/user/print` shows it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct User {
        pub id: ItemId,
        pub name: String,
        pub group: Option<String>,
        pub address: Vec<String>,
        pub comment: Option<String>,
        pub disabled: bool,
        pub last_logged_in: Option<String>,
        /// Every property as the router sent it.
        pub properties: Item,
    }

    impl User {
        pub fn from_item(item: Item) -> Result<Self, Error> {
            Ok(Self {
                id: id_of(&item)?,
                name: item.require_str("name")?.to_string(),
                group: item.get_string("group"),
                address: item.get_list("address"),
                comment: item.get_string("comment"),
                disabled: item.get_bool("disabled")?.unwrap_or(false),
                last_logged_in: item.get_string("last-logged-in"),
                properties: item,
            })
        }
    }

    /// `/user/add`; returns the new user's `.id`.
    pub async fn add(client: &Client, user: &NewUser) -> Result<ItemId, Error> {
        let mut command = Command::new("/user/add")
            .attr("name", &user.name)
            .attr("group", &user.group)
            .attr("password", &user.password);
        if !user.address.is_empty() {
            command = command.attr("address", user.address.join(","));
        }
        if let Some(comment) = &user.comment {
            command = command.attr("comment", comment);
        }
        command = command.attr("disabled", yes_no(user.disabled));
        super::add(client, command).await
    }

    /// `/user/print`, optionally filtered (`Filter::name`, `Filter::comment`).
    pub async fn print(client: &Client, filter: &Filter) -> Result<Vec<User>, Error> {
        super::print(client, MENU, filter, User::from_item).await
    }

    /// `/user/remove =.id=…`.
    pub async fn remove(client: &Client, id: &ItemId) -> Result<(), Error> {
        super::remove(client, MENU, id).await
    }
}

/// `/user/group`: add, print.
pub mod group {
    use super::*;

    const MENU: &str = "/user/group";

    /// A group to add.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct NewGroup {
        pub name: String,
        /// Policies such as `read`, `winbox`, `!reboot`.
        pub policy: Vec<String>,
        pub comment: Option<String>,
    }

    /// A group as `/user/group/print` shows it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Group {
        pub id: ItemId,
        pub name: String,
        pub policy: Vec<String>,
        pub comment: Option<String>,
        pub properties: Item,
    }

    impl Group {
        pub fn from_item(item: Item) -> Result<Self, Error> {
            Ok(Self {
                id: id_of(&item)?,
                name: item.require_str("name")?.to_string(),
                policy: item.get_list("policy"),
                comment: item.get_string("comment"),
                properties: item,
            })
        }

        /// Whether the group grants `policy` (listed, and not as `!policy`).
        pub fn has_policy(&self, policy: &str) -> bool {
            self.policy.iter().any(|p| p == policy)
        }
    }

    /// `/user/group/add`; returns the new group's `.id`.
    pub async fn add(client: &Client, group: &NewGroup) -> Result<ItemId, Error> {
        let mut command = Command::new("/user/group/add")
            .attr("name", &group.name)
            .attr("policy", group.policy.join(","));
        if let Some(comment) = &group.comment {
            command = command.attr("comment", comment);
        }
        super::add(client, command).await
    }

    /// `/user/group/print`, optionally filtered.
    pub async fn print(client: &Client, filter: &Filter) -> Result<Vec<Group>, Error> {
        super::print(client, MENU, filter, Group::from_item).await
    }

    /// `/user/group/set =.id=… =policy=…`: the group's policies become exactly these.
    pub async fn set_policy(client: &Client, id: &ItemId, policy: &[String]) -> Result<(), Error> {
        client
            .call(
                Command::new("/user/group/set")
                    .attr(".id", id.as_str())
                    .attr("policy", policy.join(",")),
            )
            .await
            .map(|_| ())
    }
}

/// `/user/active`: print and remove (RouterOS 7 has no `request-logout`).
pub mod active {
    use super::*;

    const MENU: &str = "/user/active";

    /// A live session.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ActiveUser {
        pub id: ItemId,
        pub name: String,
        pub address: Option<String>,
        /// How the user came in: `api`, `ssh`, `winbox`, `web`, `telnet`, `console`…
        pub via: Option<String>,
        /// When the session began, as the router prints it.
        pub when: Option<String>,
        pub properties: Item,
    }

    impl ActiveUser {
        pub fn from_item(item: Item) -> Result<Self, Error> {
            Ok(Self {
                id: id_of(&item)?,
                name: item.require_str("name")?.to_string(),
                address: item.get_string("address"),
                via: item.get_string("via"),
                when: item.get_string("when"),
                properties: item,
            })
        }
    }

    /// `/user/active/print`, optionally filtered (`Filter::name(user)`).
    pub async fn print(client: &Client, filter: &Filter) -> Result<Vec<ActiveUser>, Error> {
        super::print(client, MENU, filter, ActiveUser::from_item).await
    }

    /// `/user/active/remove =.id=…`: ends that session. RouterOS refuses it for some
    /// sessions (`action failed (6)`, seen for API and REST API ones); RouterOS 6 has
    /// no such command.
    pub async fn remove(client: &Client, id: &ItemId) -> Result<(), Error> {
        super::remove(client, MENU, id).await
    }
}

/// `/ip/firewall/nat`: add, print, remove.
pub mod nat {
    use super::*;

    const MENU: &str = "/ip/firewall/nat";

    /// A NAT rule to add. `None` leaves a property out.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct NewNatRule {
        /// `dstnat` or `srcnat`.
        pub chain: String,
        /// `dst-nat`, `masquerade`, `src-nat`…
        pub action: String,
        pub protocol: Option<String>,
        pub src_address: Option<String>,
        /// The interface the packet came in by (`in-interface=`).
        pub in_interface: Option<String>,
        pub dst_address: Option<String>,
        pub dst_port: Option<String>,
        pub to_addresses: Option<String>,
        pub to_ports: Option<String>,
        pub comment: Option<String>,
        pub disabled: bool,
    }

    /// A NAT rule as `/ip/firewall/nat/print` shows it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct NatRule {
        pub id: ItemId,
        pub chain: String,
        pub action: Option<String>,
        pub protocol: Option<String>,
        pub src_address: Option<String>,
        pub dst_address: Option<String>,
        pub dst_port: Option<String>,
        pub to_addresses: Option<String>,
        pub to_ports: Option<String>,
        pub comment: Option<String>,
        pub disabled: bool,
        pub properties: Item,
    }

    impl NatRule {
        pub fn from_item(item: Item) -> Result<Self, Error> {
            Ok(Self {
                id: id_of(&item)?,
                chain: item.require_str("chain")?.to_string(),
                action: item.get_string("action"),
                protocol: item.get_string("protocol"),
                src_address: item.get_string("src-address"),
                dst_address: item.get_string("dst-address"),
                dst_port: item.get_string("dst-port"),
                to_addresses: item.get_string("to-addresses"),
                to_ports: item.get_string("to-ports"),
                comment: item.get_string("comment"),
                disabled: item.get_bool("disabled")?.unwrap_or(false),
                properties: item,
            })
        }
    }

    /// `/ip/firewall/nat/add`; returns the new rule's `.id`.
    pub async fn add(client: &Client, rule: &NewNatRule) -> Result<ItemId, Error> {
        let mut command = Command::new("/ip/firewall/nat/add")
            .attr("chain", &rule.chain)
            .attr("action", &rule.action);
        for (key, value) in [
            ("protocol", &rule.protocol),
            ("src-address", &rule.src_address),
            ("in-interface", &rule.in_interface),
            ("dst-address", &rule.dst_address),
            ("dst-port", &rule.dst_port),
            ("to-addresses", &rule.to_addresses),
            ("to-ports", &rule.to_ports),
            ("comment", &rule.comment),
        ] {
            if let Some(value) = value {
                command = command.attr(key, value);
            }
        }
        command = command.attr("disabled", yes_no(rule.disabled));
        super::add(client, command).await
    }

    /// `/ip/firewall/nat/print`, optionally filtered (`Filter::comment`).
    pub async fn print(client: &Client, filter: &Filter) -> Result<Vec<NatRule>, Error> {
        super::print(client, MENU, filter, NatRule::from_item).await
    }

    /// `/ip/firewall/nat/remove =.id=…`.
    pub async fn remove(client: &Client, id: &ItemId) -> Result<(), Error> {
        super::remove(client, MENU, id).await
    }
}

/// `/system/scheduler`: add, print, remove.
pub mod scheduler {
    use super::*;

    const MENU: &str = "/system/scheduler";

    /// A scheduler entry to add: a one-off run (`start_date` and `start_time`, no
    /// `interval`) or a repeating one (`interval`).
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct NewSchedule {
        pub name: String,
        /// `2026-11-22` (RouterOS 7) or `nov/22/2026` (6).
        pub start_date: Option<String>,
        /// `14:30:00`, or `startup`.
        pub start_time: Option<String>,
        /// `1h`, `00:05:00`…
        pub interval: Option<String>,
        /// The script to run.
        pub on_event: String,
        pub comment: Option<String>,
        /// Policies the script runs with (`read`, `write`, `policy`…); empty for the default.
        pub policy: Vec<String>,
    }

    /// A scheduler entry as `/system/scheduler/print` shows it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Schedule {
        pub id: ItemId,
        pub name: String,
        pub start_date: Option<String>,
        pub start_time: Option<String>,
        pub interval: Option<String>,
        pub on_event: Option<String>,
        pub next_run: Option<String>,
        pub run_count: Option<u64>,
        pub policy: Vec<String>,
        pub comment: Option<String>,
        pub disabled: bool,
        pub properties: Item,
    }

    impl Schedule {
        pub fn from_item(item: Item) -> Result<Self, Error> {
            Ok(Self {
                id: id_of(&item)?,
                name: item.require_str("name")?.to_string(),
                start_date: item.get_string("start-date"),
                start_time: item.get_string("start-time"),
                interval: item.get_string("interval"),
                on_event: item.get_string("on-event"),
                next_run: item.get_string("next-run"),
                run_count: item.get_u64("run-count")?,
                policy: item.get_list("policy"),
                comment: item.get_string("comment"),
                disabled: item.get_bool("disabled")?.unwrap_or(false),
                properties: item,
            })
        }
    }

    /// `/system/scheduler/add`; returns the new entry's `.id`.
    pub async fn add(client: &Client, entry: &NewSchedule) -> Result<ItemId, Error> {
        let mut command = Command::new("/system/scheduler/add").attr("name", &entry.name);
        for (key, value) in [
            ("start-date", &entry.start_date),
            ("start-time", &entry.start_time),
            ("interval", &entry.interval),
        ] {
            if let Some(value) = value {
                command = command.attr(key, value);
            }
        }
        command = command.attr("on-event", &entry.on_event);
        if !entry.policy.is_empty() {
            command = command.attr("policy", entry.policy.join(","));
        }
        if let Some(comment) = &entry.comment {
            command = command.attr("comment", comment);
        }
        super::add(client, command).await
    }

    /// `/system/scheduler/print`, optionally filtered (`Filter::name`, `Filter::comment`).
    pub async fn print(client: &Client, filter: &Filter) -> Result<Vec<Schedule>, Error> {
        super::print(client, MENU, filter, Schedule::from_item).await
    }

    /// `/system/scheduler/remove =.id=…`.
    pub async fn remove(client: &Client, id: &ItemId) -> Result<(), Error> {
        super::remove(client, MENU, id).await
    }
}

/// `/system/identity`, `/system/resource` and `/system/device-mode` prints.
pub mod system {
    use std::collections::BTreeMap;

    use super::*;

    /// `/system/resource/print`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Resource {
        /// As the router prints it, such as `1w2d3h4m5s`.
        pub uptime: Option<String>,
        pub version: Option<String>,
        pub board_name: Option<String>,
        pub architecture_name: Option<String>,
        /// Percent.
        pub cpu_load: Option<u64>,
        /// Bytes.
        pub free_memory: Option<u64>,
        /// Bytes.
        pub total_memory: Option<u64>,
        pub properties: Item,
    }

    impl Resource {
        pub fn from_item(item: Item) -> Result<Self, Error> {
            Ok(Self {
                uptime: item.get_string("uptime"),
                version: item.get_string("version"),
                board_name: item.get_string("board-name"),
                architecture_name: item.get_string("architecture-name"),
                cpu_load: item.get_u64("cpu-load")?,
                free_memory: item.get_u64("free-memory")?,
                total_memory: item.get_u64("total-memory")?,
                properties: item,
            })
        }
    }

    /// `/system/device-mode/print` (RouterOS 7.17 and later), read leniently: every
    /// property in `properties`, the ones that matter typed.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct DeviceMode {
        /// `enterprise`, `home`, `advanced`, `basic`, `rose`…
        pub mode: Option<String>,
        /// Whether the scheduler may run, if the router says.
        pub scheduler: Option<bool>,
        pub properties: BTreeMap<String, String>,
    }

    impl DeviceMode {
        pub fn from_item(item: &Item) -> Self {
            Self {
                mode: item.get_string("mode"),
                // A value other than true/false/yes/no is kept in `properties` only.
                scheduler: item.get_bool("scheduler").ok().flatten(),
                properties: item.to_map(),
            }
        }

        /// A boolean feature flag (`fetch`, `socks`, `bandwidth-test`…), if present.
        pub fn flag(&self, name: &str) -> Option<bool> {
            match self.properties.get(name).map(String::as_str) {
                Some("true" | "yes") => Some(true),
                Some("false" | "no") => Some(false),
                _ => None,
            }
        }
    }

    async fn print_one(client: &Client, path: &str) -> Result<Item, Error> {
        client
            .call(Command::new(path))
            .await?
            .items
            .into_iter()
            .next()
            .ok_or_else(|| Error::Protocol(format!("{path} returned no item")))
    }

    /// `/system/identity/print`: the router's name.
    pub async fn identity(client: &Client) -> Result<String, Error> {
        let item = print_one(client, "/system/identity/print").await?;
        Ok(item.require_str("name")?.to_string())
    }

    /// `/system/resource/print`.
    pub async fn resource(client: &Client) -> Result<Resource, Error> {
        Resource::from_item(print_one(client, "/system/resource/print").await?)
    }

    /// `/system/device-mode/print`. A router too old to have the menu answers with a
    /// `!trap`, returned as is.
    pub async fn device_mode(client: &Client) -> Result<DeviceMode, Error> {
        Ok(DeviceMode::from_item(
            &print_one(client, "/system/device-mode/print").await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Attributes;

    fn item(pairs: &[(&str, &str)]) -> Item {
        let mut a = Attributes::default();
        for (k, v) in pairs {
            a.push(k.to_string(), v.to_string());
        }
        Item::new(a)
    }

    #[test]
    fn user_parses_and_tolerates_unknown_properties() {
        let u = user::User::from_item(item(&[
            (".id", "*2"),
            ("name", "postern-x"),
            ("group", "full"),
            ("address", "100.64.0.1/32,10.0.0.0/8"),
            ("disabled", "false"),
            ("some-future-property", "42"),
        ]))
        .unwrap();
        assert_eq!(u.id, ItemId::new("*2"));
        assert_eq!(u.address, vec!["100.64.0.1/32", "10.0.0.0/8"]);
        assert!(!u.disabled);
        assert_eq!(u.comment, None);
        assert_eq!(u.properties.get_str("some-future-property"), Some("42"));
        assert!(matches!(
            user::User::from_item(item(&[("name", "x")])),
            Err(Error::MissingProperty(k)) if k == ".id"
        ));
    }

    #[test]
    fn new_user_debug_hides_the_password() {
        let u = user::NewUser {
            name: "n".into(),
            group: "g".into(),
            password: "s3cret-value".into(),
            ..Default::default()
        };
        assert!(!format!("{u:?}").contains("s3cret"));
    }

    #[test]
    fn device_mode_is_lenient() {
        let d = system::DeviceMode::from_item(&item(&[
            ("mode", "home"),
            ("scheduler", "false"),
            ("socks", "true"),
            ("flagged", "no"),
            ("new-thing", "maybe"),
        ]));
        assert_eq!(d.mode.as_deref(), Some("home"));
        assert_eq!(d.scheduler, Some(false));
        assert_eq!(d.flag("socks"), Some(true));
        assert_eq!(d.flag("new-thing"), None);
        assert_eq!(
            d.properties.get("new-thing").map(String::as_str),
            Some("maybe")
        );
        let odd = system::DeviceMode::from_item(&item(&[("scheduler", "sometimes")]));
        assert_eq!(odd.scheduler, None);
        assert_eq!(odd.mode, None);
    }

    #[test]
    fn group_policy_check() {
        let g = group::Group::from_item(item(&[
            (".id", "*3"),
            ("name", "postern-read"),
            ("policy", "read,winbox,!reboot,!write"),
        ]))
        .unwrap();
        assert!(g.has_policy("read"));
        assert!(!g.has_policy("reboot"));
        assert!(!g.has_policy("write"));
    }

    #[test]
    fn filter_adds_queries_in_order() {
        let cmd = Filter::name("a")
            .and_eq("comment", "c")
            .apply(Command::new("/user/print"));
        let words: Vec<&[u8]> = cmd.words().iter().map(|w| w.as_ref()).collect();
        assert_eq!(words, vec![&b"/user/print"[..], b"?name=a", b"?comment=c"]);
    }
}
