//! What the router's commands do: the menus Postern touches, with RouterOS's checks and
//! error messages. Every service (API, SSH console, scheduler scripts) runs commands
//! through [`execute`], so they all see and change the same state the same way.
//!
//! [`surface`] lists every command the sim implements with the parameters it accepts;
//! [`execute`] refuses anything outside it before a command runs (`no such command or
//! directory (x)`, `unknown parameter`), so the list is exactly what the sim accepts and
//! a test can hold it against a real router's command database. Which menus and
//! commands a router has depends on its version ([`available`]).
//!
//! Permissions follow RouterOS: `print` needs the `read` policy; `add`, `set`, `remove`,
//! `enable` and `disable` need `write`, and changing users or groups also needs
//! `policy`. A refusal is `not enough permissions (9)`.

use std::collections::BTreeMap;

use crate::addr::{AddressList, Cidr};
use crate::clock;
use crate::query::Query;
use crate::router::{Caller, Router};
use crate::state::{Access, Item, Policies, Schema, State, TableKind, format_id, parse_id};

/// A command: its path (`/user/add`), its `=key=value` attributes (`.id` and
/// `.proplist` included) and its query words (`?name=x`).
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub path: String,
    pub attrs: Vec<(String, String)>,
    pub queries: Vec<String>,
}

impl Request {
    pub fn new(path: &str) -> Self {
        Request {
            path: path.to_string(),
            ..Request::default()
        }
    }

    pub fn attr(mut self, k: &str, v: &str) -> Self {
        self.attrs.push((k.to_string(), v.to_string()));
        self
    }

    pub fn query(mut self, q: &str) -> Self {
        self.queries.push(q.to_string());
        self
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A `!trap`: its message and, when RouterOS sends one, its category.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trap {
    pub message: String,
    pub category: Option<u8>,
}

impl Trap {
    pub fn new(message: impl Into<String>) -> Trap {
        Trap {
            message: message.into(),
            category: None,
        }
    }

    fn missing(what: &str) -> Trap {
        Trap {
            message: format!("no such command or directory ({what})"),
            category: Some(0),
        }
    }

    pub fn permissions() -> Trap {
        Trap::new("not enough permissions (9)")
    }

    /// RouterOS names no parameter in this message (librouteros' and mikrotik-java's
    /// users quote it as `unknown parameter`).
    fn unknown_parameter() -> Trap {
        Trap::new("unknown parameter")
    }

    fn invalid(name: &str) -> Trap {
        Trap::new(format!("invalid value for argument {name}"))
    }

    fn no_such_item() -> Trap {
        Trap::new("no such item")
    }
}

/// What a command returned: rows for `!re`, and `=ret=` for `!done`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub rows: Vec<Vec<(String, String)>>,
    pub ret: Option<String>,
    /// A `print` (so an empty result is `!empty` on RouterOS 7.18+).
    pub is_print: bool,
}

/// The menus the sim knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Menu {
    Table(TableKind),
    Identity,
    Resource,
    DeviceMode,
    /// `/system/clock`: the router's local date and time (the sim keeps UTC).
    Clock,
    /// `/system/routerboard`: only on a router with a serial number (a CHR has none).
    Routerboard,
    /// `/tool`: `fetch`.
    Tool,
    /// The commands at the root: `/import`.
    Root,
}

const MENUS: &[(&str, Menu)] = &[
    ("user", Menu::Table(TableKind::Users)),
    ("user/group", Menu::Table(TableKind::Groups)),
    ("user/active", Menu::Table(TableKind::Active)),
    ("ip/firewall/nat", Menu::Table(TableKind::Nat)),
    ("system/scheduler", Menu::Table(TableKind::Scheduler)),
    ("system/identity", Menu::Identity),
    ("system/resource", Menu::Resource),
    ("system/device-mode", Menu::DeviceMode),
    ("system/clock", Menu::Clock),
    ("system/routerboard", Menu::Routerboard),
    ("interface/wireguard", Menu::Table(TableKind::Wireguard)),
    (
        "interface/wireguard/peers",
        Menu::Table(TableKind::WireguardPeers),
    ),
    ("ip/address", Menu::Table(TableKind::Addresses)),
    ("ip/firewall/filter", Menu::Table(TableKind::Filter)),
    ("ip/service", Menu::Table(TableKind::Services)),
    ("file", Menu::Table(TableKind::Files)),
    ("tool", Menu::Tool),
    ("", Menu::Root),
];

/// Whether `prefix` (`ip/firewall`, no leading `/`) has menus under it.
pub fn is_directory(prefix: &str) -> bool {
    !prefix.is_empty()
        && MENUS
            .iter()
            .any(|(m, _)| *m == prefix || m.starts_with(&format!("{prefix}/")))
}

/// The menu at `path` (`ip/firewall/filter`; `""` for the root's commands).
pub fn menu_at(path: &str) -> Option<Menu> {
    MENUS
        .iter()
        .find(|(m, _)| *m == path)
        .map(|(_, menu)| *menu)
}

/// The parameters a command of a menu takes.
pub fn params(menu: Menu, verb: &str) -> Vec<&'static str> {
    match menu {
        Menu::Table(kind) => table_params(kind, verb),
        _ => single_params(menu, verb),
    }
}

/// The API path of a command of menu `menu` (`""` for the root's).
fn command_path(menu: &str, verb: &str) -> String {
    if menu.is_empty() {
        format!("/{verb}")
    } else {
        format!("/{menu}/{verb}")
    }
}

/// Splits `/user/group/add` into its menu and verb, with RouterOS's errors for paths it
/// does not have.
pub fn parse_path(path: &str) -> Result<(Menu, String), Trap> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(Trap {
            message: "no such command prefix".into(),
            category: Some(0),
        });
    };
    let segments: Vec<&str> = rest.split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(Trap {
            message: "no such command prefix".into(),
            category: Some(0),
        });
    }
    let Some((verb, dirs)) = segments.split_last() else {
        return Err(Trap::missing(""));
    };
    let mut prefix = String::new();
    for d in dirs {
        let next = if prefix.is_empty() {
            d.to_string()
        } else {
            format!("{prefix}/{d}")
        };
        if !is_directory(&next) {
            return Err(Trap::missing(d));
        }
        prefix = next;
    }
    match MENUS.iter().find(|(m, _)| *m == prefix) {
        Some((_, menu)) => Ok((*menu, verb.to_string())),
        None => Err(Trap::missing(verb)),
    }
}

/// Menus and commands that older RouterOS versions lack: the path, and whether a
/// version `(major, minor, patch)` has it. Sources are in the crate's `# Fidelity`.
type Has = fn((u32, u32, u32)) -> bool;

const SINCE: &[(&str, Has)] = &[
    // `/system/device-mode`: 7.13 and later, and 6.49.8 and later in 6.x (its
    // `allowed-versions: 7.13+,6.49.8+`).
    ("system/device-mode", |v| {
        v >= (7, 13, 0) || ((6, 49, 8)..(7, 0, 0)).contains(&v)
    }),
    // `/user/active remove` is RouterOS 7's; 6.x documents only `print` there.
    ("user/active/remove", |v| v >= (7, 0, 0)),
    // WireGuard came with RouterOS 7.
    ("interface/wireguard", |v| v >= (7, 0, 0)),
];

/// Whether a router of `version` has the menu or command at `path` (`system/device-mode`,
/// `user/active/remove`, without the leading `/`).
pub fn available(version: (u32, u32, u32), path: &str) -> bool {
    SINCE
        .iter()
        .filter(|(p, _)| path == *p || path.starts_with(&format!("{p}/")))
        .all(|(_, has)| has(version))
}

/// Splits a command's path as [`parse_path`] does, with the refusals of a router of
/// this version for what it does not have yet.
pub fn resolve(router: &Router, path: &str) -> Result<(Menu, String), Trap> {
    let (menu, verb) = parse_path(path)?;
    let version = router.version_triple();
    let bare = path.trim_start_matches('/');
    if menu == Menu::Routerboard && router.config().serial_number.is_none() {
        // A CHR has no `/system/routerboard` at all (RouterOS 7.21.4's CHR dump).
        return Err(Trap::missing("routerboard"));
    }
    if !available(version, bare) {
        // The first segment the version lacks is the one RouterOS names.
        let mut prefix = String::new();
        for segment in bare.split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(segment);
            if !available(version, &prefix) {
                return Err(Trap::missing(segment));
            }
        }
        return Err(Trap::missing(&verb));
    }
    if !menu_verbs(menu).contains(&verb.as_str()) {
        return Err(Trap::missing(&verb));
    }
    Ok((menu, verb))
}

/// The commands of a menu.
pub fn menu_verbs(menu: Menu) -> &'static [&'static str] {
    match menu {
        Menu::Table(kind) => verbs(kind),
        Menu::Identity => &["print", "set"],
        Menu::Resource | Menu::Clock | Menu::Routerboard => &["print"],
        Menu::DeviceMode => &["print", "update"],
        Menu::Tool => &["fetch"],
        Menu::Root => &["import"],
    }
}

/// What `/tool/fetch` takes.
pub const FETCH_PARAMS: &[&str] = &[
    "url",
    "check-certificate",
    "output",
    "as-value",
    "dst-path",
    "http-method",
    "http-data",
    "http-header-field",
];

/// The parameters of a command that is not a table's.
fn single_params(menu: Menu, verb: &str) -> Vec<&'static str> {
    match (menu, verb) {
        (Menu::Identity, "set") => vec!["name"],
        (Menu::DeviceMode, "update") => std::iter::once("mode")
            .chain(crate::state::DEVICE_MODE_FEATURES.iter().map(|(f, _)| *f))
            .collect(),
        (Menu::Tool, "fetch") => FETCH_PARAMS.to_vec(),
        (Menu::Root, "import") => vec!["file-name"],
        _ => SINGLE_PRINT_FLAGS.to_vec(),
    }
}

/// One command the sim implements, as a test holds it against a real router's command
/// database: its API path, the attributes it accepts (`.id` stands for the item
/// numbers, `.proplist` is the API's), the values it knows for some of them, and, for
/// `print`, the properties its rows may show (what queries and `.proplist` name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    pub path: String,
    pub params: Vec<&'static str>,
    pub values: Vec<(&'static str, Vec<&'static str>)>,
    pub properties: Vec<&'static str>,
}

const BOOLEAN: &[&str] = &["yes", "no", "true", "false"];

fn table_params(kind: TableKind, verb: &str) -> Vec<&'static str> {
    let writable = kind
        .schema()
        .fields
        .iter()
        .filter(|(_, a)| matches!(a, Access::ReadWrite | Access::Secret))
        .map(|(n, _)| *n);
    match verb {
        "print" => PRINT_FLAGS.to_vec(),
        "add" if matches!(kind, TableKind::Nat | TableKind::Filter) => {
            writable.chain(["place-before"]).collect()
        }
        "add" => writable.collect(),
        "set" => writable.chain([".id", "numbers"]).collect(),
        _ => vec![".id", "numbers"],
    }
}

fn spec(router: &Router, path: &str, menu: Menu, verb: &'static str) -> CommandSpec {
    let (params, properties) = match menu {
        Menu::Table(kind) => (
            table_params(kind, verb),
            kind.schema()
                .fields
                .iter()
                .filter(|(_, a)| *a != Access::Secret)
                .map(|(n, _)| *n)
                .collect(),
        ),
        Menu::Identity | Menu::DeviceMode | Menu::Tool | Menu::Root if verb != "print" => {
            (single_params(menu, verb), vec![])
        }
        _ => {
            // A single-item menu's properties are what its `print` shows.
            let out = execute(
                router,
                &Caller::system(),
                &Request::new(&command_path(path, "print")),
            );
            let props = out
                .map(|o| {
                    o.rows
                        .into_iter()
                        .flatten()
                        .filter_map(|(k, _)| property_name(&k))
                        .collect()
                })
                .unwrap_or_default();
            (SINGLE_PRINT_FLAGS.to_vec(), props)
        }
    };
    let mut values: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    if matches!(verb, "add" | "set") {
        for p in &params {
            match *p {
                "disabled" | "log" => values.push((p, BOOLEAN.to_vec())),
                "action" if menu == Menu::Table(TableKind::Filter) => {
                    values.push((p, FILTER_ACTIONS.to_vec()))
                }
                "action" => values.push((p, NAT_ACTIONS.to_vec())),
                "protocol" => values.push((p, PROTOCOLS.to_vec())),
                "policy" => values.push((p, crate::state::POLICY_NAMES.to_vec())),
                "connection-state" => values.push((p, CONNECTION_STATES.to_vec())),
                "reject-with" => values.push((p, REJECT_WITH.to_vec())),
                _ => {}
            }
        }
    }
    if verb == "fetch" {
        values.push(("check-certificate", CHECK_CERTIFICATE.to_vec()));
        values.push(("output", FETCH_OUTPUTS.to_vec()));
        values.push(("http-method", HTTP_METHODS.to_vec()));
    }
    CommandSpec {
        path: command_path(path, verb),
        params,
        values,
        properties,
    }
}

/// The `'static` name of a property a single-item menu prints.
fn property_name(name: &str) -> Option<&'static str> {
    const NAMES: &[&str] = &[
        "name",
        "uptime",
        "version",
        "build-time",
        "factory-software",
        "free-memory",
        "total-memory",
        "cpu",
        "cpu-count",
        "cpu-frequency",
        "cpu-load",
        "free-hdd-space",
        "total-hdd-space",
        "architecture-name",
        "board-name",
        "platform",
        "time",
        "date",
        "time-zone-autodetect",
        "time-zone-name",
        "gmt-offset",
        "dst-active",
        "mode",
        "container",
        "routerboard",
        "model",
        "serial-number",
        "firmware-type",
        "factory-firmware",
        "current-firmware",
        "upgrade-firmware",
    ];
    NAMES
        .iter()
        .chain(crate::state::DEVICE_MODE_FEATURES.iter().map(|(f, _)| f))
        .find(|n| **n == name)
        .copied()
}

/// Every command a router of this one's version implements, with what it accepts.
pub fn surface(router: &Router) -> Vec<CommandSpec> {
    let version = router.version_triple();
    let mut out = Vec::new();
    for (path, menu) in MENUS {
        if !available(version, path) {
            continue;
        }
        if *menu == Menu::Routerboard && router.config().serial_number.is_none() {
            continue;
        }
        for verb in menu_verbs(*menu) {
            if available(version, &format!("{path}/{verb}")) {
                out.push(spec(router, path, *menu, verb));
            }
        }
    }
    out
}

/// Refuses a command outside the router's surface: a verb its menu lacks (`no such
/// command or directory (verb)`) or a parameter the command does not take.
fn check_surface(menu: Menu, verb: &str, req: &Request) -> Result<(), Trap> {
    if !menu_verbs(menu).contains(&verb) {
        return Err(Trap::missing(verb));
    }
    let params = match menu {
        Menu::Table(kind) => table_params(kind, verb),
        _ => single_params(menu, verb),
    };
    match req
        .attrs
        .iter()
        .find(|(k, _)| !params.contains(&k.as_str()))
    {
        Some(_) => Err(Trap::unknown_parameter()),
        None => Ok(()),
    }
}

fn need(caller: &Caller, policies: &[&str]) -> Result<(), Trap> {
    if policies.iter().all(|p| caller.policies.has(p)) {
        Ok(())
    } else {
        Err(Trap::permissions())
    }
}

/// Runs one command as `caller`.
pub fn execute(router: &Router, caller: &Caller, req: &Request) -> Result<Outcome, Trap> {
    let (menu, verb) = resolve(router, &req.path)?;
    check_surface(menu, &verb, req)?;
    let out = match menu {
        Menu::Table(kind) => table_command(router, caller, kind, &verb, req)?,
        Menu::Identity => match verb.as_str() {
            "print" => {
                need(caller, &["read"])?;
                let name = router.state().identity.clone();
                print_single(req, vec![("name".into(), name)])?
            }
            "set" => {
                need(caller, &["write"])?;
                only_params(req, &["name"])?;
                let name = req.get("name").ok_or_else(|| Trap::invalid("name"))?;
                if name.is_empty() {
                    return Err(Trap::invalid("name"));
                }
                router.state().identity = name.to_string();
                Outcome::default()
            }
            v => return Err(Trap::missing(v)),
        },
        Menu::Resource => match verb.as_str() {
            "print" => {
                need(caller, &["read"])?;
                print_single(req, resource(router))?
            }
            v => return Err(Trap::missing(v)),
        },
        Menu::Routerboard => match verb.as_str() {
            "print" => {
                need(caller, &["read"])?;
                print_single(req, routerboard(router))?
            }
            v => return Err(Trap::missing(v)),
        },
        // `/tool/fetch` and `/import` do I/O and run scripts: the API and the script
        // interpreter run them through [`crate::script`], never here.
        Menu::Tool | Menu::Root => {
            return Err(Trap::new(
                "failure: this command runs through the script interpreter",
            ));
        }
        Menu::Clock => match verb.as_str() {
            "print" => {
                need(caller, &["read"])?;
                let now = router.clock().unix();
                let date = if router.is_v7() {
                    clock::format_date(now)
                } else {
                    clock::format_date_v6(now)
                };
                print_single(
                    req,
                    vec![
                        ("time".into(), clock::format_time(now)),
                        ("date".into(), date),
                        ("time-zone-autodetect".into(), "false".into()),
                        ("time-zone-name".into(), "UTC".into()),
                        ("gmt-offset".into(), "+00:00".into()),
                        ("dst-active".into(), "false".into()),
                    ],
                )?
            }
            v => return Err(Trap::missing(v)),
        },
        Menu::DeviceMode => match verb.as_str() {
            "print" => {
                need(caller, &["read"])?;
                let mode = router.state().device_mode;
                print_single(req, mode.properties(router.version_triple()))?
            }
            "update" => {
                need(caller, &["write", "policy"])?;
                // RouterOS applies a device-mode change only after a button press or a
                // power cycle at the device; the sim has neither.
                return Err(Trap::new(
                    "failure: update requires physical confirmation at the device (press the button or cold-boot)",
                ));
            }
            v => return Err(Trap::missing(v)),
        },
    };
    Ok(out)
}

fn routerboard(router: &Router) -> Vec<(String, String)> {
    let serial = router.config().serial_number.clone().unwrap_or_default();
    [
        ("routerboard", "true".to_string()),
        ("model", router.config().board_name.clone()),
        ("serial-number", serial),
        ("firmware-type", "ipq4000L".to_string()),
        ("factory-firmware", "7.1".to_string()),
        ("current-firmware", router.config().version.clone()),
        ("upgrade-firmware", router.config().version.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn resource(router: &Router) -> Vec<(String, String)> {
    let c = router.config();
    let up = std::time::Duration::from_secs(router.uptime_secs());
    [
        ("uptime", clock::format_interval(up)),
        ("version", format!("{} (stable)", c.version)),
        ("build-time", "2025-03-11 11:59:04".to_string()),
        ("factory-software", "7.1".to_string()),
        ("free-memory", "212324352".to_string()),
        ("total-memory", "268435456".to_string()),
        ("cpu", "QEMU".to_string()),
        ("cpu-count", "1".to_string()),
        ("cpu-frequency", "2400".to_string()),
        ("cpu-load", "1".to_string()),
        ("free-hdd-space", "84492288".to_string()),
        ("total-hdd-space", "100663296".to_string()),
        ("architecture-name", "x86_64".to_string()),
        ("board-name", c.board_name.clone()),
        ("platform", "MikroTik".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// What a table's `print` takes besides queries (every one of the sim's tables has these
/// in RouterOS 7.21.4; `.proplist` is the API's).
const PRINT_FLAGS: &[&str] = &[
    ".proplist",
    "count-only",
    "detail",
    "terse",
    "without-paging",
    "show-ids",
    "value-list",
    "as-value",
];

/// Properties only users with the `sensitive` policy see.
const SENSITIVE: &[&str] = &["private-key", "preshared-key"];

/// What a single item's `print` (`/system/identity`, `/system/clock` …) takes.
const SINGLE_PRINT_FLAGS: &[&str] = &[".proplist", "as-value", "without-paging"];

fn proplist(req: &Request) -> Option<Vec<String>> {
    req.get(".proplist")
        .map(|p| p.split(',').map(|s| s.trim().to_string()).collect())
}

fn apply_proplist(
    row: Vec<(String, String)>,
    props: &Option<Vec<String>>,
) -> Vec<(String, String)> {
    match props {
        None => row,
        Some(p) => row.into_iter().filter(|(k, _)| p.contains(k)).collect(),
    }
}

fn print_single(req: &Request, row: Vec<(String, String)>) -> Result<Outcome, Trap> {
    for (k, _) in &req.attrs {
        if !SINGLE_PRINT_FLAGS.contains(&k.as_str()) {
            return Err(Trap::unknown_parameter());
        }
    }
    Ok(Outcome {
        rows: vec![apply_proplist(row, &proplist(req))],
        ret: None,
        is_print: true,
    })
}

fn only_params(req: &Request, allowed: &[&str]) -> Result<(), Trap> {
    for (k, _) in &req.attrs {
        if !allowed.contains(&k.as_str()) {
            return Err(Trap::unknown_parameter());
        }
    }
    Ok(())
}

/// The `print` row of an item: `.id`, then its properties in schema order.
pub fn row(item: &Item, schema: &Schema) -> Vec<(String, String)> {
    let mut out = vec![(".id".to_string(), item.id_string())];
    for (name, access) in schema.fields {
        if *access == Access::Secret {
            continue;
        }
        if let Some(v) = item.get(name) {
            out.push((name.to_string(), v.to_string()));
        }
    }
    out
}

/// Items of `kind` that pass `queries`, as print rows.
pub fn select(state: &State, kind: TableKind, query: &Query) -> Result<Vec<Item>, Trap> {
    let schema = kind.schema();
    let mut out = Vec::new();
    for item in &state.table(kind).items {
        let r = row(item, schema);
        let ok = query
            .matches(|k| r.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str()))
            .map_err(|e| Trap::new(e.to_string()))?;
        if ok {
            out.push(item.clone());
        }
    }
    Ok(out)
}

fn write_policies(kind: TableKind) -> &'static [&'static str] {
    // `/file` and `/ip/service` are changed with `write` too (and `/file` with `ftp`,
    // which the sim does not ask).
    match kind {
        TableKind::Users | TableKind::Groups => &["write", "policy"],
        _ => &["write"],
    }
}

fn verbs(kind: TableKind) -> &'static [&'static str] {
    match kind {
        TableKind::Users | TableKind::Nat | TableKind::Scheduler => {
            &["print", "add", "set", "remove", "enable", "disable"]
        }
        TableKind::Groups => &["print", "add", "set", "remove"],
        TableKind::Active | TableKind::Files => &["print", "remove"],
        TableKind::Wireguard
        | TableKind::WireguardPeers
        | TableKind::Addresses
        | TableKind::Filter => &["print", "add", "set", "remove", "enable", "disable"],
        TableKind::Services => &["print", "set", "enable", "disable"],
    }
}

fn table_command(
    router: &Router,
    caller: &Caller,
    kind: TableKind,
    verb: &str,
    req: &Request,
) -> Result<Outcome, Trap> {
    if !verbs(kind).contains(&verb) {
        return Err(Trap::missing(verb));
    }
    if verb == "print" {
        need(caller, &["read"])?;
        for (k, _) in &req.attrs {
            if !PRINT_FLAGS.contains(&k.as_str()) {
                return Err(Trap::unknown_parameter());
            }
        }
        let query = Query::parse(&req.queries).map_err(|e| Trap::new(e.to_string()))?;
        let state = router.state();
        let items = select(&state, kind, &query)?;
        drop(state);
        if req.get("count-only").is_some() {
            return Ok(Outcome {
                rows: vec![],
                ret: Some(items.len().to_string()),
                is_print: false,
            });
        }
        let props = proplist(req);
        // Keys are shown only to users with the `sensitive` policy (RouterOS hides
        // sensitive properties from the others).
        let sensitive = caller.policies.has("sensitive");
        return Ok(Outcome {
            rows: items
                .iter()
                .map(|i| {
                    let mut r = row(i, kind.schema());
                    if !sensitive {
                        r.retain(|(k, _)| !SENSITIVE.contains(&k.as_str()));
                    }
                    apply_proplist(r, &props)
                })
                .collect(),
            ret: None,
            is_print: true,
        });
    }
    need(caller, write_policies(kind))?;
    if kind == TableKind::Scheduler
        && let Some(p) = req.get("policy")
    {
        // An entry runs with its policies, so a user who could give one more than its
        // own would have them all (a `write` user would be `full`): refused.
        let asked = Policies::parse(p).ok_or_else(|| Trap::invalid("policy"))?;
        if !asked.within(caller.policies) {
            return Err(Trap::permissions());
        }
    }
    let out = match verb {
        "add" => add(router, caller, kind, req)?,
        "set" => set(router, kind, req)?,
        "remove" if kind == TableKind::Active => end_sessions(router, req)?,
        "remove" => remove(router, kind, req)?,
        "enable" | "disable" => {
            only_params(req, &[".id", "numbers"])?;
            let value = if verb == "disable" { "true" } else { "false" };
            let mut state = router.state();
            let ids = targets(&state, kind, req)?;
            for id in ids {
                if let Some(item) = state.table_mut(kind).get_mut(id) {
                    item.set("disabled", value);
                }
            }
            Outcome::default()
        }
        v => return Err(Trap::missing(v)),
    };
    changed(router, kind);
    Ok(out)
}

/// `/user/active remove`: ends sessions. RouterOS refuses it for API and REST API
/// sessions (`action failed (6)`, measured on 7.23 and 7.24); the sim refuses the whole
/// command then and ends none of them.
fn end_sessions(router: &Router, req: &Request) -> Result<Outcome, Trap> {
    only_params(req, &[".id", "numbers"])?;
    let ids = {
        let state = router.state();
        let ids = targets(&state, TableKind::Active, req)?;
        let refused = ids.iter().any(|id| {
            state
                .active
                .get(*id)
                .and_then(|s| s.get("via"))
                .is_some_and(|via| via == "api" || via == "rest-api")
        });
        if refused {
            return Err(Trap::new("action failed (6)"));
        }
        ids
    };
    for id in ids {
        router.logout(id);
    }
    Ok(Outcome::default())
}

fn changed(router: &Router, kind: TableKind) {
    match kind {
        TableKind::Nat => crate::nat::reconcile(router),
        TableKind::Scheduler => router.wake_scheduler(),
        // The tunnel serves on `/ip/service`'s ports, so it hears of those too.
        TableKind::Wireguard
        | TableKind::WireguardPeers
        | TableKind::Addresses
        | TableKind::Services => router.wireguard_changed(),
        _ => {}
    }
}

/// The ids a command names in `=.id=` or `=numbers=`: `*` ids, or names in menus that
/// have them, comma-separated.
fn targets(state: &State, kind: TableKind, req: &Request) -> Result<Vec<u32>, Trap> {
    let list = req
        .get(".id")
        .or_else(|| req.get("numbers"))
        .ok_or_else(|| Trap::new("missing value(s) of argument(s) numbers"))?;
    let table = state.table(kind);
    let mut ids = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let id = match parse_id(part) {
            Some(id) => table.get(id).map(|i| i.id),
            None if kind.schema().has_name() => table.by_name(part).map(|i| i.id),
            None => None,
        }
        .ok_or_else(Trap::no_such_item)?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    if ids.is_empty() {
        return Err(Trap::no_such_item());
    }
    Ok(ids)
}

/// The writable properties a command sets, with unknown ones refused.
fn writable(kind: TableKind, req: &Request, skip: &[&str]) -> Result<Vec<(String, String)>, Trap> {
    let schema = kind.schema();
    let mut out = Vec::new();
    for (k, v) in &req.attrs {
        if skip.contains(&k.as_str()) {
            continue;
        }
        match schema.access(k) {
            Some(Access::ReadWrite | Access::Secret) => out.push((k.clone(), v.clone())),
            _ => return Err(Trap::unknown_parameter()),
        }
    }
    Ok(out)
}

fn add(router: &Router, caller: &Caller, kind: TableKind, req: &Request) -> Result<Outcome, Trap> {
    // Firewall rules are ordered: `place-before=*N` (or a position) puts the new rule
    // ahead of another instead of at the end.
    let ordered = matches!(kind, TableKind::Nat | TableKind::Filter);
    let skip: &[&str] = if ordered { &["place-before"] } else { &[] };
    let values = writable(kind, req, skip)?;
    let now = router.clock().unix();
    let mut state = router.state();
    if kind == TableKind::Scheduler && !state.device_mode.allows_scheduler() {
        return Err(Trap::new("failure: not allowed by device-mode"));
    }
    let position = match req.get("place-before").filter(|_| ordered) {
        None => None,
        Some(p) => {
            let items = &state.table(kind).items;
            let pos = match parse_id(p) {
                Some(id) => items.iter().position(|i| i.id == id),
                None => p.parse::<usize>().ok().filter(|n| *n <= items.len()),
            };
            Some(pos.ok_or_else(Trap::no_such_item)?)
        }
    };
    let mut props: BTreeMap<String, String> = values.into_iter().collect();
    defaults(router, caller, kind, &mut props, now);
    validate(router, &state, kind, &mut props, None, now)?;
    let id = state.table_mut(kind).insert_at(props, position);
    Ok(Outcome {
        rows: vec![],
        ret: Some(format_id(id)),
        is_print: false,
    })
}

fn set(router: &Router, kind: TableKind, req: &Request) -> Result<Outcome, Trap> {
    let values = writable(kind, req, &[".id", "numbers"])?;
    let now = router.clock().unix();
    let mut state = router.state();
    let ids = targets(&state, kind, req)?;
    // Check every target before changing any, so a failing `set` changes nothing.
    let mut updated = Vec::new();
    for id in &ids {
        let Some(item) = state.table(kind).get(*id) else {
            return Err(Trap::no_such_item());
        };
        let mut props = item.props.clone();
        for (k, v) in &values {
            props.insert(k.clone(), v.clone());
        }
        validate(router, &state, kind, &mut props, Some(*id), now)?;
        updated.push((*id, props));
    }
    for (id, props) in updated {
        if let Some(item) = state.table_mut(kind).get_mut(id) {
            item.props = props;
        }
    }
    Ok(Outcome::default())
}

fn remove(router: &Router, kind: TableKind, req: &Request) -> Result<Outcome, Trap> {
    only_params(req, &[".id", "numbers"])?;
    let mut state = router.state();
    let ids = targets(&state, kind, req)?;
    if kind == TableKind::Groups {
        for id in &ids {
            let Some(group) = state.groups.get(*id) else {
                continue;
            };
            // The built-in groups are the first three.
            if *id <= 3 {
                return Err(Trap::new("failure: can not remove default group"));
            }
            let name = group.get("name").unwrap_or_default().to_string();
            if state
                .users
                .items
                .iter()
                .any(|u| u.get("group") == Some(&name))
            {
                return Err(Trap::new("failure: group is used by some user"));
            }
        }
    }
    for id in ids {
        state.table_mut(kind).remove(id);
    }
    Ok(Outcome::default())
}

fn defaults(
    router: &Router,
    caller: &Caller,
    kind: TableKind,
    props: &mut BTreeMap<String, String>,
    now: u64,
) {
    let mut default = |k: &str, v: String| {
        props.entry(k.to_string()).or_insert(v);
    };
    match kind {
        TableKind::Users => {
            default("disabled", "false".into());
        }
        TableKind::Groups => {
            default("skin", "default".into());
            default("policy", String::new());
        }
        TableKind::Wireguard => {
            default("mtu", "1420".into());
            default("listen-port", crate::state::WIREGUARD_PORT.to_string());
            // The router makes the key pair itself when none is given.
            default(
                "private-key",
                crate::state::encode_key(&crate::state::generate_private_key()),
            );
            default("running", "true".into());
            default("disabled", "false".into());
        }
        TableKind::WireguardPeers => {
            default("endpoint-port", "0".into());
            default("rx", "0".into());
            default("tx", "0".into());
            default("disabled", "false".into());
        }
        TableKind::Addresses => {
            default("invalid", "false".into());
            default("dynamic", "false".into());
            default("disabled", "false".into());
        }
        TableKind::Nat | TableKind::Filter => {
            default("action", "accept".into());
            default("disabled", "false".into());
            default("log", "false".into());
            default("log-prefix", String::new());
            default("bytes", "0".into());
            default("packets", "0".into());
            default("invalid", "false".into());
            default("dynamic", "false".into());
        }
        TableKind::Scheduler => {
            let date = if router.is_v7() {
                clock::format_date(now)
            } else {
                clock::format_date_v6(now)
            };
            default("start-date", date);
            default("start-time", clock::format_time(now));
            default("interval", "0s".into());
            default("on-event", String::new());
            // RouterOS's default; never more than the adding user has.
            let policy =
                Policies::parse("ftp,reboot,read,write,policy,test,password,sniff,sensitive,romon")
                    .unwrap_or_default()
                    .and(caller.policies);
            default("policy", policy.granted());
            default("disabled", "false".into());
            default("run-count", "0".into());
            default("owner", caller.user.clone());
        }
        TableKind::Active | TableKind::Services | TableKind::Files => {}
    }
}

/// The next free `wireguardN` name, as RouterOS names an interface added without one.
fn next_wireguard_name(state: &State) -> String {
    (1u32..)
        .map(|n| format!("wireguard{n}"))
        .find(|n| !state.has_interface(n))
        .unwrap_or_else(|| "wireguard".into())
}

fn drop_empty(props: &mut BTreeMap<String, String>, keys: &[&str]) {
    for key in keys {
        if props.get(*key).is_some_and(|v| v.is_empty()) {
            props.remove(*key);
        }
    }
}

fn validate_wireguard(
    state: &State,
    props: &mut BTreeMap<String, String>,
    me: Option<u32>,
) -> Result<(), Trap> {
    drop_empty(props, &["comment"]);
    if props.get("name").is_none_or(|n| n.is_empty()) {
        props.insert("name".into(), next_wireguard_name(state));
    }
    let name = props.get("name").cloned().unwrap_or_default();
    let own = me
        .and_then(|id| state.wireguard.get(id))
        .and_then(|i| i.get("name"));
    if own != Some(name.as_str()) && state.has_interface(&name) {
        return Err(Trap::new("failure: already have interface with such name"));
    }
    let port = props
        .get("listen-port")
        .map(String::as_str)
        .unwrap_or_default();
    if port.parse::<u16>().is_err() {
        return Err(Trap::invalid("listen-port"));
    }
    let mtu = props.get("mtu").map(String::as_str).unwrap_or_default();
    if mtu != "auto"
        && mtu
            .parse::<u16>()
            .map_or(true, |m| !(68..=65535).contains(&m))
    {
        return Err(Trap::invalid("mtu"));
    }
    let key = props
        .get("private-key")
        .and_then(|k| crate::state::decode_key(k))
        .ok_or_else(|| Trap::invalid("private-key"))?;
    props.insert("private-key".into(), crate::state::encode_key(&key));
    props.insert(
        "public-key".into(),
        crate::state::encode_key(&crate::state::public_key(&key)),
    );
    Ok(())
}

fn validate_peer(
    state: &State,
    props: &mut BTreeMap<String, String>,
    me: Option<u32>,
) -> Result<(), Trap> {
    drop_empty(
        props,
        &[
            "comment",
            "endpoint-address",
            "preshared-key",
            "persistent-keepalive",
        ],
    );
    let interface = required(props, "interface")?;
    if state.wireguard.by_name(interface).is_none() {
        return Err(Trap::new("input does not match any value of interface"));
    }
    let interface = interface.to_string();
    let key = required(props, "public-key")?;
    let key = crate::state::decode_key(key).ok_or_else(|| Trap::invalid("public-key"))?;
    let text = crate::state::encode_key(&key);
    let clash = state.wireguard_peers.items.iter().any(|p| {
        Some(p.id) != me
            && p.get("interface") == Some(interface.as_str())
            && p.get("public-key") == Some(text.as_str())
    });
    if clash {
        return Err(Trap::new(
            "failure: peer with such public key already exists",
        ));
    }
    props.insert("public-key".into(), text);
    if let Some(k) = props.get("preshared-key") {
        let k = crate::state::decode_key(k).ok_or_else(|| Trap::invalid("preshared-key"))?;
        props.insert("preshared-key".into(), crate::state::encode_key(&k));
    }
    let port = props
        .get("endpoint-port")
        .map(String::as_str)
        .unwrap_or("0");
    if port.parse::<u16>().is_err() {
        return Err(Trap::invalid("endpoint-port"));
    }
    if let Some(a) = props.get("endpoint-address") {
        let host = a.parse::<std::net::IpAddr>().is_ok()
            || a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !host || a.len() > 253 {
            return Err(Trap::invalid("endpoint-address"));
        }
    }
    if let Some(list) = props.get("allowed-address") {
        let mut out = Vec::new();
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let c = Cidr::parse(part).ok_or_else(|| Trap::invalid("allowed-address"))?;
            out.push(format!("{}/{}", c.addr, c.prefix));
        }
        props.insert("allowed-address".into(), out.join(","));
    }
    if let Some(k) = props.get("persistent-keepalive") {
        let d = clock::parse_interval(k).ok_or_else(|| Trap::invalid("persistent-keepalive"))?;
        props.insert("persistent-keepalive".into(), clock::format_interval(d));
    }
    Ok(())
}

fn validate_address(
    state: &State,
    props: &mut BTreeMap<String, String>,
    me: Option<u32>,
) -> Result<(), Trap> {
    drop_empty(props, &["comment", "network"]);
    let address = required(props, "address")?;
    let cidr = match Cidr::parse(address) {
        Some(c) if c.addr.is_ipv4() => c,
        _ => return Err(Trap::invalid("address")),
    };
    let interface = required(props, "interface")?.to_string();
    if !state.has_interface(&interface) {
        return Err(Trap::new("input does not match any value of interface"));
    }
    let text = format!("{}/{}", cidr.addr, cidr.prefix);
    let clash = state.addresses.items.iter().any(|a| {
        Some(a.id) != me
            && a.get("address") == Some(text.as_str())
            && a.get("interface") == Some(interface.as_str())
    });
    if clash {
        return Err(Trap::new("failure: already have such address"));
    }
    props.insert("address".into(), text);
    match props.get("network") {
        Some(n) => {
            if n.parse::<std::net::Ipv4Addr>().is_err() {
                return Err(Trap::invalid("network"));
            }
        }
        None => {
            let std::net::IpAddr::V4(ip) = cidr.addr else {
                return Err(Trap::invalid("address"));
            };
            let mask = u32::MAX
                .checked_shl(32 - u32::from(cidr.prefix))
                .unwrap_or(0);
            let net = std::net::Ipv4Addr::from(u32::from(ip) & mask);
            props.insert("network".into(), net.to_string());
        }
    }
    props.insert("actual-interface".into(), interface);
    Ok(())
}

fn boolean(props: &mut BTreeMap<String, String>, key: &str) -> Result<(), Trap> {
    if let Some(v) = props.get_mut(key) {
        *v = match v.as_str() {
            "yes" | "true" => "true".into(),
            "no" | "false" => "false".into(),
            _ => return Err(Trap::invalid(key)),
        };
    }
    Ok(())
}

fn unique_name(
    state: &State,
    kind: TableKind,
    name: &str,
    me: Option<u32>,
    msg: &str,
) -> Result<(), Trap> {
    let clash = state
        .table(kind)
        .items
        .iter()
        .any(|i| Some(i.id) != me && i.get("name") == Some(name));
    if clash { Err(Trap::new(msg)) } else { Ok(()) }
}

fn required<'a>(props: &'a BTreeMap<String, String>, key: &str) -> Result<&'a str, Trap> {
    match props.get(key).map(String::as_str) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(Trap::new(format!("failure: {key} not specified"))),
    }
}

fn port_spec(s: &str) -> bool {
    // `80`, `8000-8080`, `22,80,443`.
    !s.is_empty()
        && s.split(',').all(|part| {
            let mut it = part.splitn(2, '-');
            let ok =
                |p: Option<&str>| p.is_some_and(|p| p.trim().parse::<u16>().is_ok_and(|n| n > 0));
            let a = it.next();
            match it.next() {
                Some(b) => ok(a) && ok(Some(b)),
                None => ok(a),
            }
        })
}

fn address_spec(s: &str) -> bool {
    let s = s.strip_prefix('!').unwrap_or(s);
    match s.split_once('-') {
        Some((a, b)) => {
            a.parse::<std::net::IpAddr>().is_ok() && b.parse::<std::net::IpAddr>().is_ok()
        }
        None => Cidr::parse(s).is_some(),
    }
}

const NAT_ACTIONS: &[&str] = &[
    "accept",
    "add-dst-to-address-list",
    "add-src-to-address-list",
    "dst-nat",
    "endpoint-independent-nat",
    "jump",
    "log",
    "masquerade",
    "netmap",
    "passthrough",
    "redirect",
    "return",
    "same",
    "src-nat",
];

const FILTER_ACTIONS: &[&str] = &[
    "accept",
    "add-dst-to-address-list",
    "add-src-to-address-list",
    "drop",
    "fasttrack-connection",
    "jump",
    "log",
    "passthrough",
    "reject",
    "return",
    "tarpit",
];

const CONNECTION_STATES: &[&str] = &["invalid", "established", "related", "new", "untracked"];

const REJECT_WITH: &[&str] = &[
    "icmp-admin-prohibited",
    "icmp-host-prohibited",
    "icmp-host-unreachable",
    "icmp-net-prohibited",
    "icmp-network-unreachable",
    "icmp-port-unreachable",
    "icmp-protocol-unreachable",
    "tcp-reset",
];

const CHECK_CERTIFICATE: &[&str] = &["no", "yes", "yes-without-crl"];
const FETCH_OUTPUTS: &[&str] = &["file", "user", "none"];
const HTTP_METHODS: &[&str] = &["get", "post", "put", "delete"];

const PROTOCOLS: &[&str] = &[
    "tcp",
    "udp",
    "icmp",
    "icmpv6",
    "gre",
    "ipsec-esp",
    "ipsec-ah",
    "ipip",
    "ipv6-encap",
    "sctp",
    "udp-lite",
    "dccp",
    "igmp",
    "ospf",
];

/// Checks and normalises an item's properties after `add` or `set`.
fn validate(
    router: &Router,
    state: &State,
    kind: TableKind,
    props: &mut BTreeMap<String, String>,
    me: Option<u32>,
    now: u64,
) -> Result<(), Trap> {
    boolean(props, "disabled")?;
    match kind {
        TableKind::Users => {
            let name = required(props, "name")?.to_string();
            unique_name(
                state,
                kind,
                &name,
                me,
                "failure: user with the same name already exists",
            )?;
            let group = required(props, "group")?;
            if state.groups.by_name(group).is_none() {
                return Err(Trap::new("input does not match any value of group"));
            }
            if let Some(a) = props.get("address") {
                if AddressList::parse(a).is_none() {
                    return Err(Trap::invalid("address"));
                }
                if a.is_empty() {
                    props.remove("address");
                }
            }
            if props.get("comment").is_some_and(|c| c.is_empty()) {
                props.remove("comment");
            }
        }
        TableKind::Groups => {
            let name = required(props, "name")?.to_string();
            unique_name(
                state,
                kind,
                &name,
                me,
                "failure: group with the same name already exists",
            )?;
            let policy =
                Policies::parse(props.get("policy").map(String::as_str).unwrap_or_default())
                    .ok_or_else(|| Trap::invalid("policy"))?;
            props.insert("policy".into(), policy.render());
        }
        TableKind::Nat | TableKind::Filter => {
            required(props, "chain")?;
            boolean(props, "log")?;
            let actions = if kind == TableKind::Nat {
                NAT_ACTIONS
            } else {
                FILTER_ACTIONS
            };
            if let Some(a) = props.get("action")
                && !actions.contains(&a.as_str())
            {
                return Err(Trap::new("input does not match any value of action"));
            }
            if let Some(p) = props.get("protocol")
                && !PROTOCOLS.contains(&p.as_str())
                && p.parse::<u8>().is_err()
            {
                return Err(Trap::invalid("protocol"));
            }
            for key in ["dst-port", "to-ports"] {
                if let Some(p) = props.get(key)
                    && !port_spec(p)
                {
                    return Err(Trap::invalid(key));
                }
            }
            if props.contains_key("dst-port")
                && !matches!(
                    props.get("protocol").map(String::as_str),
                    Some("tcp" | "udp" | "sctp" | "udp-lite" | "dccp")
                )
            {
                return Err(Trap::new(
                    "failure: dst-port can be set only when protocol is tcp, udp, sctp, udp-lite or dccp",
                ));
            }
            for key in ["dst-address", "src-address", "to-addresses"] {
                if let Some(a) = props.get(key)
                    && !address_spec(a)
                {
                    return Err(Trap::invalid(key));
                }
            }
            // Interfaces are named, and a name the router does not have is refused.
            for key in ["in-interface", "out-interface"] {
                if let Some(i) = props.get(key)
                    && !i.is_empty()
                    && !state.has_interface(i.strip_prefix('!').unwrap_or(i))
                {
                    return Err(Trap::new("input does not match any value of interface"));
                }
            }
            if let Some(states) = props.get("connection-state")
                && !states
                    .trim_start_matches('!')
                    .split(',')
                    .all(|c| CONNECTION_STATES.contains(&c.trim()))
            {
                return Err(Trap::invalid("connection-state"));
            }
            if let Some(r) = props.get("reject-with")
                && !REJECT_WITH.contains(&r.as_str())
            {
                return Err(Trap::new("input does not match any value of reject-with"));
            }
            for key in [
                "comment",
                "to-addresses",
                "to-ports",
                "in-interface",
                "out-interface",
                "src-address",
                "dst-address",
                "dst-port",
                "protocol",
                "connection-state",
                "reject-with",
            ] {
                if props.get(key).is_some_and(|v| v.is_empty()) {
                    props.remove(key);
                }
            }
        }
        TableKind::Wireguard => validate_wireguard(state, props, me)?,
        TableKind::WireguardPeers => validate_peer(state, props, me)?,
        TableKind::Addresses => validate_address(state, props, me)?,
        TableKind::Services => {
            let port = props.get("port").map(String::as_str).unwrap_or_default();
            if port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(Trap::invalid("port"));
            }
            if let Some(a) = props.get("address")
                && AddressList::parse(a).is_none()
            {
                return Err(Trap::invalid("address"));
            }
            if let Some(m) = props.get("max-sessions")
                && m.parse::<u16>().map_or(true, |m| !(1..=1000).contains(&m))
            {
                return Err(Trap::invalid("max-sessions"));
            }
        }
        TableKind::Files => {}
        TableKind::Scheduler => {
            let name = required(props, "name")?.to_string();
            unique_name(
                state,
                kind,
                &name,
                me,
                "failure: item with such name already exists",
            )?;
            let date = props.get("start-date").cloned().unwrap_or_default();
            let day = clock::parse_date(&date).ok_or_else(|| Trap::invalid("start-date"))?;
            let date = if router.is_v7() {
                clock::format_date(day)
            } else {
                clock::format_date_v6(day)
            };
            props.insert("start-date".into(), date);
            let time = props.get("start-time").cloned().unwrap_or_default();
            let start = if time == "startup" {
                None
            } else {
                let secs = clock::parse_time(&time).ok_or_else(|| Trap::invalid("start-time"))?;
                props.insert("start-time".into(), clock::format_time(secs));
                Some(day + secs)
            };
            let interval =
                clock::parse_interval(props.get("interval").map(String::as_str).unwrap_or("0s"))
                    .ok_or_else(|| Trap::invalid("interval"))?;
            props.insert("interval".into(), clock::format_interval(interval));
            if Policies::parse(props.get("policy").map(String::as_str).unwrap_or_default())
                .is_none()
            {
                return Err(Trap::invalid("policy"));
            }
            if props.get("comment").is_some_and(|c| c.is_empty()) {
                props.remove("comment");
            }
            let due = start.and_then(|s| crate::scheduler::next_due(s, interval.as_secs(), now));
            match due {
                Some(d) => {
                    props.insert("next-run".into(), clock::format_datetime(d));
                    props.insert(crate::scheduler::DUE.into(), d.to_string());
                }
                None => {
                    props.remove("next-run");
                    props.remove(crate::scheduler::DUE);
                }
            }
        }
        TableKind::Active => {}
    }
    Ok(())
}

/// Checks a command against the router's surface without running it: its menu and
/// verb exist on this router and it takes every parameter given.
pub fn check(router: &Router, req: &Request) -> Result<(Menu, String), Trap> {
    let (menu, verb) = resolve(router, &req.path)?;
    check_surface(menu, &verb, req)?;
    Ok((menu, verb))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_prints_the_routers_utc_date_and_time() {
        use std::time::{Duration, UNIX_EPOCH};
        let mut config = crate::router::RouterConfig::new("r", "127.0.0.1".parse().unwrap(), "pw");
        config.clock = crate::Clock::manual(UNIX_EPOCH + Duration::from_secs(1_795_000_000));
        let r = Router::new(config);
        let out = execute(&r, &Caller::system(), &Request::new("/system/clock/print")).unwrap();
        let row: std::collections::HashMap<_, _> = out.rows[0].iter().cloned().collect();
        assert_eq!(row["date"], "2026-11-18");
        assert_eq!(row["time"], "11:06:40");
        assert_eq!(row["gmt-offset"], "+00:00");
    }

    #[test]
    fn paths() {
        assert_eq!(
            parse_path("/user/group/add").unwrap(),
            (Menu::Table(TableKind::Groups), "add".to_string())
        );
        assert_eq!(
            parse_path("/ip/firewall/nat/print").unwrap().0,
            Menu::Table(TableKind::Nat)
        );
        let e = parse_path("/ip/route/print").unwrap_err();
        assert_eq!(e.message, "no such command or directory (route)");
        assert_eq!(e.category, Some(0));
        let r = Router::new(crate::router::RouterConfig::new(
            "r",
            "127.0.0.1".parse().unwrap(),
            "pw",
        ));
        let e = execute(&r, &Caller::system(), &Request::new("/user/frobnicate")).unwrap_err();
        assert_eq!(e.message, "no such command or directory (frobnicate)");
        assert_eq!(e.category, Some(0));
        assert_eq!(
            parse_path("user/print").unwrap_err().message,
            "no such command prefix"
        );
        assert_eq!(
            parse_path("/user//print").unwrap_err().message,
            "no such command prefix"
        );
    }

    #[test]
    fn a_write_user_cannot_give_a_scheduler_entry_more_than_it_has() {
        let r = Router::new(crate::router::RouterConfig::new(
            "r",
            "127.0.0.1".parse().unwrap(),
            "pw",
        ));
        let writer = Caller {
            user: "w".into(),
            policies: Policies::parse("local,ssh,read,write,test,api").unwrap(),
        };
        let add = |policy: Option<&str>, name: &str| {
            let mut req = Request::new("/system/scheduler/add")
                .attr("name", name)
                .attr("on-event", "/user add name=evil group=full");
            if let Some(p) = policy {
                req = req.attr("policy", p);
            }
            execute(&r, &writer, &req)
        };
        assert_eq!(
            add(Some("read,write,policy"), "a").unwrap_err().message,
            "not enough permissions (9)"
        );
        add(Some("read,write"), "b").unwrap();
        // With no policy given, the entry gets RouterOS's default within the user's own.
        add(None, "c").unwrap();
        let state = r.state();
        let c = state.scheduler.by_name("c").unwrap();
        assert_eq!(c.props["policy"], "read,write,test");
        let b = state.scheduler.by_name("b").unwrap().id_string();
        drop(state);
        let raise = Request::new("/system/scheduler/set")
            .attr(".id", &b)
            .attr("policy", "read,write,policy,sensitive");
        assert_eq!(
            execute(&r, &writer, &raise).unwrap_err().message,
            "not enough permissions (9)"
        );
    }

    #[test]
    fn nat_interfaces_are_named_and_only_ether1_sees_traffic() {
        let r = Router::new(crate::router::RouterConfig::new(
            "r",
            "127.0.0.1".parse().unwrap(),
            "pw",
        ));
        let rule = |iface: &str| {
            Request::new("/ip/firewall/nat/add")
                .attr("chain", "dstnat")
                .attr("action", "dst-nat")
                .attr("protocol", "tcp")
                .attr("dst-port", "30000")
                .attr("to-addresses", "192.168.88.10")
                .attr("in-interface", iface)
        };
        let e = execute(&r, &Caller::system(), &rule("wg-nowhere")).unwrap_err();
        assert_eq!(e.message, "input does not match any value of interface");
        for (iface, forwards) in [("ether1", true), ("!ether1", false)] {
            execute(&r, &Caller::system(), &rule(iface)).unwrap();
            let state = r.state();
            let item = state.nat.items.last().unwrap();
            assert_eq!(
                crate::nat::forward_of(item, "127.0.0.1".parse().unwrap()).is_some(),
                forwards,
                "{iface}"
            );
        }
    }

    #[test]
    fn port_and_address_specs() {
        assert!(port_spec("80"));
        assert!(port_spec("8000-8080"));
        assert!(port_spec("22,80"));
        assert!(!port_spec("0"));
        assert!(!port_spec("70000"));
        assert!(!port_spec("x"));
        assert!(address_spec("10.0.0.0/8"));
        assert!(address_spec("!10.0.0.1"));
        assert!(address_spec("10.0.0.1-10.0.0.9"));
        assert!(!address_spec("nope"));
    }
}
