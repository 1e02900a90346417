//! Onboarding, without I/O: the line an operator pastes into a router's terminal, the
//! RouterOS 7 script it fetches (the management tunnel, Postern's management login,
//! the firewall rule that admits the gateway alone), the script that removes all of it,
//! the check of what an enrolling router posts back, and the per-address rate limit of
//! the public enrolment routes.
//!
//! Every object the script makes carries a comment starting `postern:tunnel:` that says
//! what it is; the script finds each by that comment and makes it only when missing
//! (else sets it back), so pasting the line again repairs rather than duplicates. The
//! orchestrator's reconciler leaves `postern:tunnel:` objects alone (they back no grant).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::RngCore as _;
use serde::Deserialize;
use utoipa::ToSchema;

/// Every enrolment token starts with this.
pub const TOKEN_PREFIX: &str = "pet_";
/// The management login Postern makes on an enrolled router.
pub const MANAGEMENT_USER: &str = "postern";
/// Its group, of its own.
pub const MANAGEMENT_GROUP: &str = "postern-manage";
/// The group's policies: every one, because the orchestrator makes users in
/// `postern-full` (all policies) and scheduler entries with `policy`, and RouterOS lets
/// no one give a policy they lack; it also reads, writes NAT rules and ends sessions.
pub const MANAGEMENT_POLICY: &str = "local,telnet,ssh,ftp,reboot,read,write,policy,test,winbox,password,web,sniff,sensitive,api,romon,rest-api";
/// The WireGuard interface's name when the script makes it.
pub const INTERFACE_NAME: &str = "postern";
/// The file the pasted line fetches the script into (and removes after the import).
pub const SCRIPT_FILE: &str = "postern-enroll.rsc";
/// What RouterOS 6 prints instead.
pub const V6_MESSAGE: &str = "Postern: RouterOS 6 has no WireGuard; add this router in direct mode";

/// The comments of what the script makes, each `postern:tunnel:<kind>` and its words.
pub mod comment {
    pub const INTERFACE: &str =
        "postern:tunnel:interface WireGuard interface of Postern's management tunnel";
    pub const GROUP: &str = "postern:tunnel:group group of Postern's management login";
    pub const USER: &str =
        "postern:tunnel:user Postern's management login, from its gateway's tunnel address only";
    pub const FIREWALL: &str = "postern:tunnel:firewall accept API, SSH and WinBox from Postern's gateway through the tunnel only";
    pub const ADDRESS: &str =
        "postern:tunnel:address this router's address in Postern's management tunnel";
    pub const PEER: &str = "postern:tunnel:peer Postern's gateway (management tunnel)";
}

/// A new random enrolment token: `pet_` + 32 CSPRNG bytes in base64url (43 characters).
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Whether text has the shape of an enrolment token (checked before any lookup).
pub fn well_formed(token: &str) -> bool {
    token.strip_prefix(TOKEN_PREFIX).is_some_and(|rest| {
        rest.len() == 43
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// Where routers fetch from: `https://host[:port]`, or `http://…` in lab mode alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl {
    /// Scheme, host and port, no trailing slash.
    pub origin: String,
    pub https: bool,
}

impl PublicUrl {
    /// Checks a configured `public_url`: `https://` (or `http://` when `lab`), a host
    /// (name, IPv4 or bracketed IPv6) and an optional port, nothing else.
    pub fn parse(text: &str, lab: bool) -> Result<Self, String> {
        let text = text.trim().trim_end_matches('/');
        let (https, rest) = if let Some(r) = text.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = text.strip_prefix("http://") {
            if !lab {
                return Err("plain http:// is only accepted in lab mode: routers must check the server's certificate".into());
            }
            (false, r)
        } else {
            return Err("must start with https://".into());
        };
        let plain = rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
        if rest.is_empty() || rest.len() > 253 || !plain || rest.starts_with(':') {
            return Err("must be a scheme and a host name or address with an optional port, like https://postern.example.com".into());
        }
        Ok(Self {
            origin: format!("{}://{rest}", if https { "https" } else { "http" }),
            https,
        })
    }

    /// The URL of the script for `token`.
    pub fn enroll_url(&self, token: &str) -> String {
        format!("{}/enroll/{token}", self.origin)
    }
}

/// The line to paste into the router's terminal: on RouterOS 7 it fetches the script,
/// imports it and removes the file; on RouterOS 6 it only says why it stops. Over plain
/// HTTP (lab mode) it is preceded by a comment line saying so.
pub fn paste_line(url: &PublicUrl, token: &str) -> String {
    let fetch = if url.https {
        format!(
            "/tool fetch url=\"{}\" check-certificate=yes-without-crl dst-path={SCRIPT_FILE}",
            url.enroll_url(token)
        )
    } else {
        format!(
            "/tool fetch url=\"{}\" dst-path={SCRIPT_FILE}",
            url.enroll_url(token)
        )
    };
    let line = format!(
        ":if ([:pick [/system resource get version] 0 2] = \"7.\") do={{{fetch}; /import file-name={SCRIPT_FILE}; /file remove [find name=\"{SCRIPT_FILE}\"]}} else={{:put \"{V6_MESSAGE}\"}}"
    );
    if url.https {
        line
    } else {
        format!(
            "# Lab mode: plain HTTP, the server's certificate is not checked (never on a real network)\n{line}"
        )
    }
}

/// What the script is made for: one router, its tunnel and its login.
#[derive(Debug, Clone)]
pub struct ScriptParams<'a> {
    /// The router's name in Postern (only in a comment line, made printable).
    pub router_name: &'a str,
    /// Where the script posts the router's key and facts (the same URL it came from).
    pub url: &'a PublicUrl,
    pub token: &'a str,
    /// The router's address in the tunnel.
    pub router_address: IpAddr,
    /// The gateway's address in the tunnel.
    pub gateway_address: IpAddr,
    /// The gateway's WireGuard public key, base64.
    pub gateway_public_key: &'a str,
    /// Where the router reaches the gateway (host name or address) and its UDP port.
    pub endpoint_host: &'a str,
    pub endpoint_port: u16,
    /// The management login's password (letters and digits).
    pub password: &'a str,
}

/// A RouterOS string literal's inside: `\`, `"` and `$` escaped, control characters
/// dropped.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' | '"' | '$' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Text for a `#` comment line: printable ASCII only.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

fn host_address(a: IpAddr) -> String {
    match a {
        IpAddr::V4(v) => format!("{v}/32"),
        IpAddr::V6(v) => format!("{v}/128"),
    }
}

/// The enrolment script (RouterOS 7). Its order: the interface (the router makes its
/// key) → the group and the management login → the services' ports (API enabled, for
/// the gateway alone, only if it was disabled) → the firewall rule, before every other
/// rule → the tunnel address → the post of the key and facts, which the server answers
/// after admitting the peer → the gateway peer, last, so its first handshake succeeds.
pub fn enroll_script(p: &ScriptParams<'_>) -> String {
    let gw = p.gateway_address;
    let gw_host = host_address(gw);
    let me = host_address(p.router_address);
    let key = quoted(p.gateway_public_key);
    let endpoint = quoted(p.endpoint_host);
    let port = p.endpoint_port;
    let password = quoted(p.password);
    let url = quoted(&p.url.enroll_url(p.token));
    let check = if p.url.https {
        " check-certificate=yes-without-crl"
    } else {
        ""
    };
    let name = printable(p.router_name);
    let (c_if, c_group, c_user, c_fw, c_addr, c_peer) = (
        comment::INTERFACE,
        comment::GROUP,
        comment::USER,
        comment::FIREWALL,
        comment::ADDRESS,
        comment::PEER,
    );
    let (user, group, policy, ifname) = (
        MANAGEMENT_USER,
        MANAGEMENT_GROUP,
        MANAGEMENT_POLICY,
        INTERFACE_NAME,
    );
    format!(
        r#"# Postern: enrolment of router "{name}" into its management tunnel (RouterOS 7).
# Each object below is found by its comment (postern:tunnel:...) and made only when it
# is missing, else set back to what Postern needs: running this again repairs.
# Nothing else on the router is changed or opened.
:do {{
:if ([:pick [/system resource get version] 0 2] != "7.") do={{:error "{V6_MESSAGE}"}}
:put "Postern: 1/6 the WireGuard interface (this router makes its own key)"
:local wg [/interface wireguard find where comment="{c_if}"]
:if ([:len $wg] = 0) do={{/interface wireguard add name={ifname} comment="{c_if}"; :set wg [/interface wireguard find where comment="{c_if}"]}}
:local wgname [/interface wireguard get $wg name]
:local publickey [/interface wireguard get $wg public-key]
:put "Postern: 2/6 the management login, in a group of its own, from the gateway only"
:local grp [/user group find where comment="{c_group}"]
:if ([:len $grp] = 0) do={{/user group add name={group} policy={policy} comment="{c_group}"; :set grp [/user group find where comment="{c_group}"]}} else={{/user group set $grp policy={policy}}}
:local grpname [/user group get $grp name]
:local usr [/user find where comment="{c_user}"]
:if ([:len $usr] = 0) do={{/user add name={user} group=$grpname password="{password}" address={gw_host} comment="{c_user}"}} else={{/user set $usr group=$grpname password="{password}" address={gw_host}}}
:put "Postern: 3/6 the services Postern uses"
:if ([:tostr [/ip service get api disabled]] = "true") do={{/ip service set api disabled=no address={gw_host}}} else={{:if ([:len [/ip service get api address]] > 0) do={{:put "Postern: note: the API service accepts only the addresses in its list; it must include {gw}"}}}}
:local apiport [/ip service get api port]
:local apisslport [/ip service get api-ssl port]
:local sshport [/ip service get ssh port]
:local winboxport [/ip service get winbox port]
:put "Postern: 4/6 the firewall rule admitting the gateway, before every other rule"
:local fw [/ip firewall filter find where comment="{c_fw}"]
:if ([:len $fw] > 0) do={{/ip firewall filter remove $fw}}
:local ports "$apiport,$apisslport,$sshport,$winboxport"
:local rules [/ip firewall filter find where dynamic=no]
:if ([:len $rules] = 0) do={{/ip firewall filter add chain=input action=accept protocol=tcp src-address={gw} in-interface=$wgname dst-port=$ports comment="{c_fw}"}} else={{:local first [:pick $rules 0]; /ip firewall filter add chain=input action=accept protocol=tcp src-address={gw} in-interface=$wgname dst-port=$ports place-before=$first comment="{c_fw}"}}
:put "Postern: 5/6 the tunnel address and the enrolment"
:local ad [/ip address find where comment="{c_addr}"]
:if ([:len $ad] = 0) do={{/ip address add address={me} network={gw} interface=$wgname comment="{c_addr}"}} else={{/ip address set $ad address={me} network={gw} interface=$wgname}}
:local identity [/system identity get name]
:local version [/system resource get version]
:local board [/system resource get board-name]
:local serial ""
# A CHR has no /system routerboard: parsed only when run, so the script still compiles.
:do {{:set serial [[:parse "/system routerboard get serial-number"]]}} on-error={{:set serial ""}}
:local json ("{{\"public_key\":\"" . $publickey . "\",\"identity\":\"" . $identity . "\",\"version\":\"" . $version . "\",\"board\":\"" . $board . "\",\"serial\":\"" . $serial . "\",\"api_port\":" . $apiport . ",\"ssh_port\":" . $sshport . ",\"winbox_port\":" . $winboxport . "}}")
:local answer [/tool fetch url="{url}" http-method=post http-header-field="Content-Type: application/json" http-data=$json output=user as-value{check}]
:put "Postern: 6/6 the gateway peer"
:local peer [/interface wireguard peers find where comment="{c_peer}"]
:if ([:len $peer] = 0) do={{/interface wireguard peers add interface=$wgname public-key="{key}" endpoint-address="{endpoint}" endpoint-port={port} allowed-address={gw_host} persistent-keepalive=25s comment="{c_peer}"}} else={{/interface wireguard peers set $peer interface=$wgname public-key="{key}" endpoint-address="{endpoint}" endpoint-port={port} allowed-address={gw_host} persistent-keepalive=25s}}
:put "Postern: enrolled; the router shows online in Postern within seconds"
}} on-error={{:error "Postern: enrolment stopped at the step printed last (what was made stays; pasting the line again repairs). A line that was used, re-issued or has expired needs a new one from Postern."}}
"#
    )
}

/// The script that removes everything Postern put on a router: the tunnel's objects by
/// their comments, then whatever grants left (users, NAT rules, scheduler entries and
/// groups tagged `postern:`). The services are left as they are.
pub fn removal_script(router_name: &str) -> String {
    let name = printable(router_name);
    let (c_if, c_group, c_user, c_fw, c_addr, c_peer) = (
        comment::INTERFACE,
        comment::GROUP,
        comment::USER,
        comment::FIREWALL,
        comment::ADDRESS,
        comment::PEER,
    );
    format!(
        r#"# Postern: removes from router "{name}" everything Postern put on it: the management
# tunnel, its firewall rule and address, the management login and its group, and what
# grants left (users, NAT rules, scheduler entries, groups tagged postern:). The IP
# services (API, SSH, WinBox) are left as they are.
:do {{
/system scheduler remove [find where comment~"^postern:"]
/ip firewall nat remove [find where comment~"^postern:"]
/user remove [find where comment~"^postern:"]
/user group remove [find where comment~"^postern:"]
/interface wireguard peers remove [find where comment="{c_peer}"]
/ip address remove [find where comment="{c_addr}"]
/ip firewall filter remove [find where comment="{c_fw}"]
/user remove [find where comment="{c_user}"]
/user group remove [find where comment="{c_group}"]
/interface wireguard remove [find where comment="{c_if}"]
:put "Postern: removed everything Postern had put on this router"
}} on-error={{:error "Postern: removal stopped before the end; paste it again"}}
"#
    )
}

/// What an enrolling router posts (the script's JSON).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollReport {
    /// The router's WireGuard public key: base64 of 32 bytes (44 characters).
    #[schema(example = "hT3p0Rk4VxgZf5H0Uq7m1c3lQWqz8dJv6yY2bN0aE1s=")]
    pub public_key: String,
    /// `/system identity`: 1 to 255 printable characters.
    #[schema(max_length = 255)]
    pub identity: String,
    /// `/system resource version`, like `7.21.4 (stable)`: 1 to 64 printable characters,
    /// 7.x.
    #[schema(max_length = 64)]
    pub version: String,
    /// `/system resource board-name`: 1 to 64 printable characters.
    #[schema(max_length = 64)]
    pub board: String,
    /// `/system routerboard serial-number`: empty when the router has none (a CHR),
    /// else 1 to 64 letters, digits or `-`.
    #[schema(max_length = 64)]
    pub serial: String,
    /// The API service's port, 1–65535.
    pub api_port: u32,
    /// The SSH service's port, 1–65535.
    pub ssh_port: u32,
    /// The WinBox service's port, 1–65535.
    pub winbox_port: u32,
}

/// A checked report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedReport {
    pub public_key: String,
    pub identity: String,
    pub version: String,
    pub board: String,
    pub serial: Option<String>,
    pub api_port: u16,
    pub ssh_port: u16,
    pub winbox_port: u16,
}

fn printable_field(
    errors: &mut Vec<(&'static str, String)>,
    field: &'static str,
    value: &str,
    max: usize,
) {
    if value.is_empty() || value.chars().count() > max {
        errors.push((field, format!("must be 1 to {max} characters")));
    } else if value.chars().any(char::is_control) {
        errors.push((field, "must be printable (no control characters)".into()));
    }
}

fn port_field(errors: &mut Vec<(&'static str, String)>, field: &'static str, value: u32) -> u16 {
    match u16::try_from(value) {
        Ok(p) if p > 0 => p,
        _ => {
            errors.push((field, "must be a port between 1 and 65535".into()));
            0
        }
    }
}

/// Checks every field of a report; the errors name each field that is wrong.
pub fn check_report(r: &EnrollReport) -> Result<CheckedReport, Vec<(&'static str, String)>> {
    let mut errors = Vec::new();
    let key_ok = r.public_key.len() == 44
        && STANDARD
            .decode(&r.public_key)
            .is_ok_and(|k| k.len() == 32 && k.iter().any(|b| *b != 0));
    if !key_ok {
        errors.push((
            "public_key",
            "must be a WireGuard public key: base64 of 32 bytes (44 characters)".into(),
        ));
    }
    printable_field(&mut errors, "identity", &r.identity, 255);
    printable_field(&mut errors, "version", &r.version, 64);
    if !r.version.starts_with("7.") && !errors.iter().any(|(f, _)| *f == "version") {
        errors.push(("version", "must be RouterOS 7 (7.x)".into()));
    }
    printable_field(&mut errors, "board", &r.board, 64);
    let serial = r.serial.trim();
    if serial.len() > 64
        || !serial
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        errors.push((
            "serial",
            "must be empty or 1 to 64 letters, digits or -".into(),
        ));
    }
    let api_port = port_field(&mut errors, "api_port", r.api_port);
    let ssh_port = port_field(&mut errors, "ssh_port", r.ssh_port);
    let winbox_port = port_field(&mut errors, "winbox_port", r.winbox_port);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(CheckedReport {
        public_key: r.public_key.clone(),
        identity: r.identity.clone(),
        version: r.version.clone(),
        board: r.board.clone(),
        serial: Some(serial.to_owned()).filter(|s| !s.is_empty()),
        api_port,
        ssh_port,
        winbox_port,
    })
}

/// Requests to the public enrolment routes allowed per client address per window:
/// enough for a few routers behind one NAT enrolling at once, not for guessing tokens.
#[derive(Clone)]
pub struct RateLimit {
    inner: Arc<Mutex<HashMap<IpAddr, (Instant, u32)>>>,
    per_window: u32,
    window: Duration,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new(30, Duration::from_secs(60))
    }
}

impl RateLimit {
    /// The most addresses remembered at once (older windows are forgotten first).
    const MAX_ADDRESSES: usize = 100_000;

    pub fn new(per_window: u32, window: Duration) -> Self {
        Self {
            inner: Arc::default(),
            per_window,
            window,
        }
    }

    /// Counts a request from `address` at `now`; false when over the limit. IPv6
    /// addresses count by their /64.
    pub fn allow(&self, address: IpAddr, now: Instant) -> bool {
        let key = match address {
            IpAddr::V6(v) => {
                let s = v.segments();
                IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
            }
            v4 => v4,
        };
        let Ok(mut map) = self.inner.lock() else {
            return false;
        };
        if map.len() >= Self::MAX_ADDRESSES {
            let window = self.window;
            map.retain(|_, (start, _)| now.duration_since(*start) < window);
            if map.len() >= Self::MAX_ADDRESSES {
                return false;
            }
        }
        let entry = map.entry(key).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 <= self.per_window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(https: bool) -> PublicUrl {
        if https {
            PublicUrl::parse("https://postern.example.com", false).unwrap()
        } else {
            PublicUrl::parse("http://127.0.0.1:8080", true).unwrap()
        }
    }

    fn params<'a>(u: &'a PublicUrl, token: &'a str) -> ScriptParams<'a> {
        ScriptParams {
            router_name: "core-1 \"quoted\"\n$x",
            url: u,
            token,
            router_address: "100.64.0.7".parse().unwrap(),
            gateway_address: "100.64.0.1".parse().unwrap(),
            gateway_public_key: "hT3p0Rk4VxgZf5H0Uq7m1c3lQWqz8dJv6yY2bN0aE1s=",
            endpoint_host: "gw.example.net",
            endpoint_port: 51820,
            password: "Abc123xyz",
        }
    }

    /// Every script and line Postern hands a router, for the checks below.
    fn every_script() -> Vec<(&'static str, String)> {
        let token = format!("{TOKEN_PREFIX}{}", "A".repeat(43));
        let (https, http) = (url(true), url(false));
        vec![
            ("line", paste_line(&https, &token)),
            ("lab line", paste_line(&http, &token)),
            ("enrolment", enroll_script(&params(&https, &token))),
            ("lab enrolment", enroll_script(&params(&http, &token))),
            ("removal", removal_script("core-1")),
        ]
    }

    /// Every script is held against RouterOS 7.21.4's command database, and written to
    /// `$POSTERN_ROUTEROS_SCRIPTS` when set, for `routeros-lsp check --strict`
    /// (`.ci/run`).
    #[test]
    fn every_script_passes_the_routeros_7_command_database() {
        let db = surface::Database::routeros_7().unwrap();
        let mut wrong = Vec::new();
        for (what, script) in every_script() {
            wrong.extend(
                db.check_script(&script)
                    .iter()
                    .map(|f| format!("{what}: {f}")),
            );
            if let Some(dir) = std::env::var_os("POSTERN_ROUTEROS_SCRIPTS") {
                let dir = std::path::PathBuf::from(dir);
                std::fs::create_dir_all(&dir).unwrap();
                let file = format!("onboarding-{}.rsc", what.replace(' ', "-"));
                std::fs::write(dir.join(file), &script).unwrap();
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn the_line_is_the_one_of_the_plan() {
        let token = format!("{TOKEN_PREFIX}{}", "A".repeat(43));
        assert_eq!(
            paste_line(&url(true), &token),
            format!(
                ":if ([:pick [/system resource get version] 0 2] = \"7.\") do={{/tool fetch url=\"https://postern.example.com/enroll/{token}\" check-certificate=yes-without-crl dst-path=postern-enroll.rsc; /import file-name=postern-enroll.rsc; /file remove [find name=\"postern-enroll.rsc\"]}} else={{:put \"Postern: RouterOS 6 has no WireGuard; add this router in direct mode\"}}"
            )
        );
        let lab = paste_line(&url(false), &token);
        let (comment, line) = lab.split_once('\n').unwrap();
        assert!(comment.starts_with("# Lab mode: plain HTTP"), "{comment}");
        assert!(
            line.contains("url=\"http://127.0.0.1:8080/enroll/"),
            "{line}"
        );
        assert!(!line.contains("check-certificate"), "{line}");
    }

    #[test]
    fn the_script_says_what_each_object_is_and_finds_it_by_that() {
        let token = format!("{TOKEN_PREFIX}{}", "A".repeat(43));
        let u = url(true);
        let script = enroll_script(&params(&u, &token));
        for c in [
            comment::INTERFACE,
            comment::GROUP,
            comment::USER,
            comment::FIREWALL,
            comment::ADDRESS,
            comment::PEER,
        ] {
            assert!(c.starts_with("postern:tunnel:"), "{c}");
            assert!(
                script.contains(&format!("find where comment=\"{c}\"]")),
                "{c} is not looked up"
            );
            assert!(
                script.matches(&format!("comment=\"{c}\"")).count() >= 2,
                "{c} is not made"
            );
        }
        // The order of the plan: interface, login, firewall, address, post, peer.
        let at = |s: &str| script.find(s).unwrap_or_else(|| panic!("{s} missing"));
        assert!(at("/interface wireguard add") < at("/user add"));
        assert!(at("/user add") < at("/ip firewall filter add"));
        assert!(at("/ip firewall filter add") < at("/ip address add"));
        assert!(at("/ip address add") < at("http-method=post"));
        assert!(at("http-method=post") < at("/interface wireguard peers add"));
        // The login and the rule admit the gateway's tunnel address alone; the rule goes
        // before every other one.
        assert!(script.contains("address=100.64.0.1/32 comment=\"postern:tunnel:user"));
        assert!(script.contains("src-address=100.64.0.1 in-interface=$wgname"));
        assert!(script.contains("place-before=$first"));
        assert!(script.contains("/ip service set api disabled=no address=100.64.0.1/32"));
        assert!(script.contains("persistent-keepalive=25s"));
        assert!(script.contains("allowed-address=100.64.0.1/32"));
        assert!(script.contains("address=100.64.0.7/32 network=100.64.0.1"));
        assert!(script.contains("check-certificate=yes-without-crl"));
        // The router's name only in a comment line, and harmless there.
        assert!(script.starts_with("# Postern: enrolment of router \"core-1 \"quoted\"?$x\""));
        assert_eq!(script.matches("core-1").count(), 1);
        let lab = url(false);
        assert!(!enroll_script(&params(&lab, &token)).contains("check-certificate"));
    }

    #[test]
    fn quoting_escapes_what_routeros_would_read() {
        assert_eq!(quoted("a\"b\\c$d\ne"), "a\\\"b\\\\c\\$de");
    }

    #[test]
    fn public_urls() {
        for (text, lab, ok) in [
            ("https://postern.example.com", false, true),
            ("https://postern.example.com:8443/", false, true),
            ("https://[2001:db8::1]:8443", false, true),
            ("http://127.0.0.1:8080", true, true),
            ("http://127.0.0.1:8080", false, false),
            ("ftp://x", true, false),
            ("https://", false, false),
            ("https://a/b", false, false),
            ("https://a b", false, false),
            ("https://a\"b", false, false),
        ] {
            assert_eq!(PublicUrl::parse(text, lab).is_ok(), ok, "{text}");
        }
        assert_eq!(
            PublicUrl::parse("https://h:8443/", false).unwrap().origin,
            "https://h:8443"
        );
    }

    fn report() -> EnrollReport {
        EnrollReport {
            public_key: "hT3p0Rk4VxgZf5H0Uq7m1c3lQWqz8dJv6yY2bN0aE1s=".into(),
            identity: "MikroTik".into(),
            version: "7.21.4 (stable)".into(),
            board: "CHR".into(),
            serial: "".into(),
            api_port: 8728,
            ssh_port: 22,
            winbox_port: 8291,
        }
    }

    fn fields(r: EnrollReport) -> Vec<&'static str> {
        check_report(&r)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|(f, _)| f)
            .collect()
    }

    #[test]
    fn reports_are_checked_field_by_field() {
        let ok = check_report(&report()).unwrap();
        assert_eq!(ok.serial, None);
        assert_eq!(ok.api_port, 8728);
        let mut r = report();
        r.serial = "HE60812345".into();
        assert_eq!(
            check_report(&r).unwrap().serial.as_deref(),
            Some("HE60812345")
        );
        type Edit = fn(&mut EnrollReport);
        let rows: &[(Edit, &str)] = &[
            (|r| r.public_key = "short".into(), "public_key"),
            (|r| r.public_key = "!".repeat(44), "public_key"),
            (|r| r.public_key = "A".repeat(43) + "=", "public_key"),
            (|r| r.public_key = "A".repeat(42) + "B=", "public_key"),
            (|r| r.identity = String::new(), "identity"),
            (|r| r.identity = "x".repeat(256), "identity"),
            (|r| r.identity = "a\u{7}b".into(), "identity"),
            (|r| r.version = "6.49.8 (long-term)".into(), "version"),
            (|r| r.version = "7.".to_owned() + &"1".repeat(63), "version"),
            (|r| r.board = "\n".into(), "board"),
            (|r| r.serial = "a b".into(), "serial"),
            (|r| r.serial = "A".repeat(65), "serial"),
            (|r| r.api_port = 0, "api_port"),
            (|r| r.ssh_port = 65536, "ssh_port"),
            (|r| r.winbox_port = u32::MAX, "winbox_port"),
        ];
        for (edit, field) in rows {
            let mut r = report();
            edit(&mut r);
            assert_eq!(fields(r), vec![*field]);
        }
        let mut r = report();
        r.identity = "x".repeat(255);
        r.serial = "A".repeat(64);
        r.api_port = 65535;
        assert!(check_report(&r).is_ok());
    }

    #[test]
    fn tokens_have_their_shape() {
        let t = generate_token();
        assert!(well_formed(&t), "{t}");
        assert_ne!(t, generate_token());
        assert!(!well_formed(&format!("{TOKEN_PREFIX}{}", "a".repeat(42))));
        assert!(!well_formed(&format!("pst_{}", "a".repeat(43))));
        assert!(!well_formed(&format!("{TOKEN_PREFIX}{}/", "a".repeat(42))));
    }

    #[test]
    fn the_rate_limit_counts_per_address_and_window() {
        let limit = RateLimit::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        let a: IpAddr = "203.0.113.5".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2::5".parse().unwrap();
        let b2: IpAddr = "2001:db8:1:2::6".parse().unwrap();
        assert!((0..3).all(|_| limit.allow(a, t0)));
        assert!(!limit.allow(a, t0));
        assert!(limit.allow(b, t0) && limit.allow(b2, t0) && limit.allow(b, t0));
        assert!(!limit.allow(b2, t0), "a /64 counts as one");
        assert!(limit.allow(a, t0 + Duration::from_secs(61)));
    }
}
