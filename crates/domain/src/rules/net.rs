//! Address rules: which sources may be let in (`allow_from`), which LAN devices may be
//! forwarded to (`dst_address`), and the classification of IPv4/IPv6 addresses behind
//! both. CIDRs use `ipnet`; what we accept is always shown in canonical form.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use super::{Policy, ValidationError};

/// What kind of address something is, as far as Postern's rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// Publicly routed (the documentation ranges count as public).
    Public,
    /// RFC 1918 (IPv4) or unique local fc00::/7 (IPv6).
    Private,
    /// 127.0.0.0/8 or ::1.
    Loopback,
    /// 169.254.0.0/16 or fe80::/10.
    LinkLocal,
    /// 224.0.0.0/4 or ff00::/8.
    Multicast,
    /// 0.0.0.0 or ::.
    Unspecified,
    /// 255.255.255.255.
    Broadcast,
    /// Any other special-purpose range, described by the text.
    Reserved(&'static str),
    /// An IPv6 form that carries an IPv4 address which is not publicly routed (6to4
    /// around 127.0.0.1, Teredo through a private server): `form` names the form.
    Embeds { form: &'static str, v4: Ipv4Addr },
}

impl AddressClass {
    /// A phrase for messages: "a private address (RFC 1918)".
    pub fn describe(self) -> &'static str {
        match self {
            AddressClass::Public => "publicly routed",
            AddressClass::Private => "a private address",
            AddressClass::Loopback => "a loopback address",
            AddressClass::LinkLocal => "a link-local address",
            AddressClass::Multicast => "a multicast address",
            AddressClass::Unspecified => "the unspecified address",
            AddressClass::Broadcast => "the broadcast address",
            AddressClass::Reserved(what) => what,
            AddressClass::Embeds { form, .. } => form,
        }
    }

    /// A phrase for messages that also names an embedded IPv4 address and its class:
    /// "a 6to4 address (2002::/16) around 127.0.0.1, a loopback address".
    pub fn explain(self) -> String {
        match self {
            AddressClass::Embeds { form, v4 } => format!(
                "{form} around {v4}, {}",
                classify(IpAddr::V4(v4)).describe()
            ),
            other => other.describe().to_owned(),
        }
    }
}

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> (Ipv4Addr, u8) {
    (Ipv4Addr::new(a, b, c, d), prefix)
}

/// Special-purpose IPv4 ranges, most specific first where they nest.
const V4_RANGES: &[((Ipv4Addr, u8), AddressClass)] = &[
    (v4(255, 255, 255, 255, 32), AddressClass::Broadcast),
    (v4(0, 0, 0, 0, 32), AddressClass::Unspecified),
    (
        v4(0, 0, 0, 0, 8),
        AddressClass::Reserved("in 0.0.0.0/8 (this network)"),
    ),
    (v4(10, 0, 0, 0, 8), AddressClass::Private),
    (v4(172, 16, 0, 0, 12), AddressClass::Private),
    (v4(192, 168, 0, 0, 16), AddressClass::Private),
    (v4(127, 0, 0, 0, 8), AddressClass::Loopback),
    (v4(169, 254, 0, 0, 16), AddressClass::LinkLocal),
    (v4(224, 0, 0, 0, 4), AddressClass::Multicast),
    (
        v4(100, 64, 0, 0, 10),
        AddressClass::Reserved("shared address space (100.64.0.0/10)"),
    ),
    (
        v4(198, 18, 0, 0, 15),
        AddressClass::Reserved("a benchmarking address (198.18.0.0/15)"),
    ),
    (
        v4(192, 0, 0, 0, 24),
        AddressClass::Reserved("reserved for protocol assignments (192.0.0.0/24)"),
    ),
    (
        v4(240, 0, 0, 0, 4),
        AddressClass::Reserved("reserved (240.0.0.0/4)"),
    ),
];

fn in_v4(addr: Ipv4Addr, (net, prefix): (Ipv4Addr, u8)) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    u32::from(addr) & mask == u32::from(net) & mask
}

/// The class of an address. IPv4-mapped IPv6 addresses are classed as their IPv4 address.
pub fn classify(addr: IpAddr) -> AddressClass {
    match addr {
        IpAddr::V4(a) => V4_RANGES
            .iter()
            .find(|(range, _)| in_v4(a, *range))
            .map_or(AddressClass::Public, |(_, class)| *class),
        IpAddr::V6(a) => {
            if let Some(mapped) = a.to_ipv4_mapped() {
                return classify(IpAddr::V4(mapped));
            }
            classify_v6(a)
        }
    }
}

/// Where an IPv6 form carries an IPv4 address: the form's prefix, the bit offset of the
/// IPv4 address in the IPv6 one, and the mask it is XORed with (Teredo obscures its
/// client's address). A form may carry two (Teredo's server and client).
struct Embedding {
    prefix: (Ipv6Addr, u8),
    form: &'static str,
    at: &'static [(u32, u32)],
}

/// IPv6 forms that embed an IPv4 address (RFC 3056, RFC 6052, RFC 4380). Routed, they
/// reach whatever the IPv4 address reaches, so they are as public as it is. IPv4-mapped
/// (`::ffff:0:0/96`) is classed as its IPv4 address instead, and the NAT64 and
/// IPv4-compatible forms lie outside 2000::/3, which is refused whatever they carry.
const V6_EMBEDDINGS: &[Embedding] = &[
    Embedding {
        prefix: (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16),
        form: "a 6to4 address (2002::/16)",
        at: &[(16, 0)],
    },
    Embedding {
        prefix: (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32),
        form: "a Teredo address (2001::/32)",
        at: &[(32, 0), (96, u32::MAX)],
    },
];

/// Special-purpose IPv6 ranges refused with words of their own, most specific first.
const V6_RANGES: &[((Ipv6Addr, u8), AddressClass)] = &[(
    (Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 32),
    AddressClass::Reserved(
        "a NAT64 address (64:ff9b::/96 or 64:ff9b:1::/48): name the IPv4 source instead",
    ),
)];

fn in_v6(addr: Ipv6Addr, (net, prefix): (Ipv6Addr, u8)) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    u128::from(addr) & mask == u128::from(net) & mask
}

/// The IPv4 address `a` carries at bit `offset`, un-XORed with `xor`.
fn v4_at(a: Ipv6Addr, offset: u32, xor: u32) -> Ipv4Addr {
    let bits = u128::from(a).checked_shl(offset).unwrap_or(0) >> 96;
    Ipv4Addr::from(u32::try_from(bits).unwrap_or(0) ^ xor)
}

/// The first IPv4 address `a` carries that is not publicly routed, with its form.
fn embedded_non_public(a: Ipv6Addr) -> Option<AddressClass> {
    let e = V6_EMBEDDINGS.iter().find(|e| in_v6(a, e.prefix))?;
    e.at.iter()
        .map(|&(offset, xor)| v4_at(a, offset, xor))
        .find(|v4| classify(IpAddr::V4(*v4)) != AddressClass::Public)
        .map(|v4| AddressClass::Embeds { form: e.form, v4 })
}

fn classify_v6(a: Ipv6Addr) -> AddressClass {
    let first = a.segments()[0];
    if let Some(class) = embedded_non_public(a) {
        return class;
    }
    if let Some((_, class)) = V6_RANGES.iter().find(|(range, _)| in_v6(a, *range)) {
        return *class;
    }
    if a.is_unspecified() {
        AddressClass::Unspecified
    } else if a.is_loopback() {
        AddressClass::Loopback
    } else if first & 0xff00 == 0xff00 {
        AddressClass::Multicast
    } else if first & 0xffc0 == 0xfe80 {
        AddressClass::LinkLocal
    } else if first & 0xfe00 == 0xfc00 {
        AddressClass::Private
    } else if first & 0xe000 == 0x2000 {
        AddressClass::Public
    } else {
        AddressClass::Reserved("not a global unicast address (2000::/3)")
    }
}

/// The sources allowed to use a grant's gateway port: an IPv4 network of /24../32 or an
/// IPv6 network of /48../128, publicly routed (or loopback/private in lab mode).
/// Displays canonically: "198.51.100.0/24", and a bare address as "198.51.100.7/32".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AllowFrom(IpNet);

const ALLOW_FROM: &str = "allow_from";

impl AllowFrom {
    /// Validates operator input: an address or CIDR, within the prefix limits, without
    /// host bits, publicly routed unless `policy.lab_mode` lets loopback/private in.
    pub fn parse(s: &str, policy: &Policy) -> Result<Self, ValidationError> {
        let net = parse_net(s)?;
        let (min, max) = match net {
            IpNet::V4(_) => (24, 32),
            IpNet::V6(_) => (48, 128),
        };
        if net.prefix_len() < min {
            return Err(ValidationError::new(
                ALLOW_FROM,
                format!(
                    "prefix /{} is too wide; it must be between /{min} and /{max}",
                    net.prefix_len()
                ),
            ));
        }
        if net.network() != net.addr() {
            return Err(ValidationError::new(
                ALLOW_FROM,
                format!("host bits set; did you mean {}", net.trunc()),
            ));
        }
        Self::check_class(net, policy)?;
        Ok(Self(net))
    }

    /// Validates a single address (the caller's own, when `allow_from` is omitted).
    pub fn from_addr(addr: IpAddr, policy: &Policy) -> Result<Self, ValidationError> {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            IpAddr::V4(_) => addr,
        };
        let net = IpNet::from(addr);
        Self::check_class(net, policy)?;
        Ok(Self(net))
    }

    fn check_class(net: IpNet, policy: &Policy) -> Result<(), ValidationError> {
        // Every refused range is at least as wide as the narrowest prefix we accept, so
        // the class of the network address is the class of the whole network; but for
        // the IPv6 forms that embed IPv4 addresses, so is the last address (a Teredo
        // client's address sits in the low bits a /48 leaves open).
        let refused = |class: AddressClass| {
            ValidationError::new(
                ALLOW_FROM,
                format!(
                    "{net} is {}; only publicly routed sources are allowed",
                    class.explain()
                ),
            )
        };
        if let IpNet::V6(v6) = net {
            let teredo = V6_EMBEDDINGS.iter().find(|e| e.at.len() > 1);
            if v6.prefix_len() < 128 && teredo.is_some_and(|e| in_v6(v6.network(), e.prefix)) {
                return Err(ValidationError::new(
                    ALLOW_FROM,
                    format!(
                        "{net} is a range of Teredo addresses (2001::/32), each around an \
                         IPv4 address of its own; name one address (/128)"
                    ),
                ));
            }
        }
        for addr in [net.network(), net.broadcast()] {
            match classify(addr) {
                AddressClass::Public => {}
                AddressClass::Private | AddressClass::Loopback if policy.lab_mode => {}
                class => return Err(refused(class)),
            }
        }
        Ok(())
    }

    /// Refuses an IPv6 network for an entry point that takes IPv4 only (`entry_point`
    /// names it in the message): such a grant could never be used.
    pub fn require_ipv4(self, entry_point: &str) -> Result<Self, ValidationError> {
        match self.0 {
            IpNet::V4(_) => Ok(self),
            IpNet::V6(_) => Err(ValidationError::new(
                ALLOW_FROM,
                format!(
                    "{} is IPv6, but the entry point {entry_point} takes IPv4 connections only",
                    self.0
                ),
            )),
        }
    }

    /// Whether `addr` may use the grant (IPv4-mapped IPv6 peers match IPv4 networks).
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.0, addr) {
            (IpNet::V4(net), IpAddr::V6(v6)) => {
                v6.to_ipv4_mapped().is_some_and(|a| net.contains(&a))
            }
            (net, addr) => net.contains(&addr),
        }
    }

    /// The network.
    pub fn net(&self) -> IpNet {
        self.0
    }
}

/// Reads text already validated (from the database): syntax only, no policy checks, so a
/// lab-mode grant reads back after the policy changed. serde's `Deserialize` is the same:
/// for operator input use [`AllowFrom::parse`], never these.
impl FromStr for AllowFrom {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, ValidationError> {
        Ok(Self(parse_net(s)?.trunc()))
    }
}

impl TryFrom<String> for AllowFrom {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, ValidationError> {
        s.parse()
    }
}

impl From<AllowFrom> for String {
    fn from(a: AllowFrom) -> String {
        a.to_string()
    }
}

impl fmt::Display for AllowFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

fn parse_net(s: &str) -> Result<IpNet, ValidationError> {
    let bad = || ValidationError::new(ALLOW_FROM, "not an IP address or CIDR");
    if s.len() > 64 {
        return Err(bad());
    }
    match s.split_once('/') {
        None => s.parse::<IpAddr>().map(IpNet::from).map_err(|_| bad()),
        Some((addr, prefix)) => {
            // Digits only: ipnet would accept "+24".
            if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(bad());
            }
            let prefix: u8 = prefix.parse().map_err(|_| bad())?;
            match addr.parse::<IpAddr>().map_err(|_| bad())? {
                IpAddr::V4(a) => Ipv4Net::new(a, prefix).map(IpNet::V4).map_err(|_| bad()),
                IpAddr::V6(a) => Ipv6Net::new(a, prefix).map(IpNet::V6).map_err(|_| bad()),
            }
        }
    }
    .map(unmap)
}

/// An IPv4-mapped IPv6 network (::ffff:a.b.c.d/120..128) as the IPv4 network it means,
/// so it is shown, checked and matched as IPv4.
fn unmap(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(a) => Ipv4Net::new(a, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        _ => net,
    }
}

/// A LAN device a port forward may target: RFC 1918 / ULA or publicly routed.
/// `FromStr` and serde validate like [`DstAddress::parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DstAddress(IpAddr);

impl FromStr for DstAddress {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, ValidationError> {
        Self::parse(s)
    }
}

impl TryFrom<String> for DstAddress {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, ValidationError> {
        Self::parse(&s)
    }
}

impl From<DstAddress> for String {
    fn from(a: DstAddress) -> String {
        a.to_string()
    }
}

impl DstAddress {
    /// Validates operator input (field `dst_address`).
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let addr: IpAddr = s
            .parse()
            .map_err(|_| ValidationError::new("dst_address", "not an IP address"))?;
        Self::check(addr)
    }

    /// Validates operator input under a deployment policy: lab mode also accepts a
    /// loopback device (a service on the router's own machine, as the demo and the
    /// end-to-end tests run them behind a sim router).
    pub fn parse_with(s: &str, policy: &Policy) -> Result<Self, ValidationError> {
        let addr: IpAddr = s
            .parse()
            .map_err(|_| ValidationError::new("dst_address", "not an IP address"))?;
        if policy.lab_mode && addr.is_loopback() {
            return Ok(Self(addr));
        }
        Self::check(addr)
    }

    /// Validates an address already parsed.
    pub fn check(addr: IpAddr) -> Result<Self, ValidationError> {
        match classify(addr) {
            AddressClass::Public | AddressClass::Private => Ok(Self(addr)),
            class => Err(ValidationError::new(
                "dst_address",
                format!(
                    "{addr} is {}; it must be a private (RFC 1918) or publicly routed address",
                    class.describe()
                ),
            )),
        }
    }

    /// The address.
    pub fn addr(&self) -> IpAddr {
        self.0
    }
}

impl fmt::Display for DstAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A destination port on the LAN device: 1..=65535 (field `dst_port`).
pub fn dst_port(port: i64) -> Result<u16, ValidationError> {
    super::fields::port("dst_port", port)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUBLIC: Policy = Policy { lab_mode: false };
    const LAB: Policy = Policy { lab_mode: true };

    /// `Ok(canonical)` or `Err(substring of the message)`.
    fn check(policy: Policy, input: &str, expected: Result<&str, &str>) {
        match (AllowFrom::parse(input, &policy), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got.to_string(), want, "{input}"),
            (Err(e), Err(want)) => {
                assert_eq!(e.field, "allow_from", "{input}");
                assert!(
                    e.message.contains(want),
                    "{input}: {:?} lacks {want:?}",
                    e.message
                );
            }
            (got, want) => panic!("{input} ({policy:?}): got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn allow_from_rules() {
        let rows: &[(Policy, &str, Result<&str, &str>)] = &[
            // The reference's own sample and the other documentation ranges.
            (PUBLIC, "198.51.100.0/24", Ok("198.51.100.0/24")),
            (PUBLIC, "192.0.2.0/24", Ok("192.0.2.0/24")),
            (PUBLIC, "203.0.113.9", Ok("203.0.113.9/32")),
            // Prefix boundaries.
            (PUBLIC, "198.51.100.0/23", Err("between /24 and /32")),
            (PUBLIC, "198.51.100.0/0", Err("between /24 and /32")),
            (PUBLIC, "198.51.100.128/25", Ok("198.51.100.128/25")),
            (PUBLIC, "198.51.100.7/32", Ok("198.51.100.7/32")),
            (PUBLIC, "198.51.100.7", Ok("198.51.100.7/32")),
            (PUBLIC, "198.51.100.7/33", Err("not an IP address or CIDR")),
            // Host bits.
            (
                PUBLIC,
                "198.51.100.7/24",
                Err("host bits set; did you mean 198.51.100.0/24"),
            ),
            (
                PUBLIC,
                "198.51.100.7/31",
                Err("did you mean 198.51.100.6/31"),
            ),
            // Syntax.
            (PUBLIC, "", Err("not an IP address or CIDR")),
            (PUBLIC, "198.51.100", Err("not an IP address or CIDR")),
            (PUBLIC, "198.51.100.0/", Err("not an IP address or CIDR")),
            (PUBLIC, "198.51.100.0/+24", Err("not an IP address or CIDR")),
            (PUBLIC, "198.051.100.0/24", Err("not an IP address or CIDR")),
            (PUBLIC, " 198.51.100.0/24", Err("not an IP address or CIDR")),
            (PUBLIC, "example.com", Err("not an IP address or CIDR")),
            // Every refused IPv4 range, at its first and last /24 where it matters.
            (
                PUBLIC,
                "10.0.0.0/24",
                Err("10.0.0.0/24 is a private address"),
            ),
            (PUBLIC, "10.255.255.0/24", Err("private")),
            (PUBLIC, "172.16.0.1", Err("private")),
            (PUBLIC, "172.31.255.255", Err("private")),
            (PUBLIC, "172.15.255.255", Ok("172.15.255.255/32")),
            (PUBLIC, "172.32.0.0/24", Ok("172.32.0.0/24")),
            (PUBLIC, "192.168.1.0/24", Err("private")),
            (PUBLIC, "127.0.0.1", Err("loopback")),
            (PUBLIC, "169.254.1.0/24", Err("link-local")),
            (PUBLIC, "224.0.0.1", Err("multicast")),
            (PUBLIC, "239.255.255.0/24", Err("multicast")),
            (PUBLIC, "0.0.0.0", Err("unspecified")),
            (PUBLIC, "0.1.2.0/24", Err("0.0.0.0/8")),
            (PUBLIC, "100.64.0.0/24", Err("shared address space")),
            (PUBLIC, "100.127.255.255", Err("shared address space")),
            (PUBLIC, "100.63.255.255", Ok("100.63.255.255/32")),
            (PUBLIC, "100.128.0.0/24", Ok("100.128.0.0/24")),
            (PUBLIC, "240.0.0.0/24", Err("reserved (240.0.0.0/4)")),
            (PUBLIC, "255.255.255.255", Err("broadcast")),
            (PUBLIC, "198.18.0.0/24", Err("benchmarking")),
            (PUBLIC, "198.19.255.0/24", Err("benchmarking")),
            (PUBLIC, "198.17.255.0/24", Ok("198.17.255.0/24")),
            (PUBLIC, "198.20.0.0/24", Ok("198.20.0.0/24")),
            (PUBLIC, "8.8.8.8", Ok("8.8.8.8/32")),
            // IPv6.
            (PUBLIC, "2001:db8::/48", Ok("2001:db8::/48")),
            (PUBLIC, "2001:db8::/47", Err("between /48 and /128")),
            (PUBLIC, "2001:db8::1", Ok("2001:db8::1/128")),
            (PUBLIC, "2001:db8::1/64", Err("did you mean 2001:db8::/64")),
            (PUBLIC, "::1", Err("loopback")),
            (PUBLIC, "fe80::/64", Err("link-local")),
            (PUBLIC, "fd00::/64", Err("private")),
            (PUBLIC, "ff02::1", Err("multicast")),
            (PUBLIC, "::", Err("unspecified")),
            (PUBLIC, "::ffff:10.0.0.1", Err("private")),
            (PUBLIC, "::ffff:198.51.100.7", Ok("198.51.100.7/32")),
            (PUBLIC, "::ffff:198.51.100.0/120", Ok("198.51.100.0/24")),
            (
                PUBLIC,
                "::ffff:198.51.100.0/119",
                Err("between /24 and /32"),
            ),
            // Lab mode lets loopback and private in, nothing else.
            (LAB, "127.0.0.1", Ok("127.0.0.1/32")),
            (LAB, "10.1.2.0/24", Ok("10.1.2.0/24")),
            (LAB, "192.168.88.0/24", Ok("192.168.88.0/24")),
            (LAB, "::1", Ok("::1/128")),
            (LAB, "169.254.1.1", Err("link-local")),
            (LAB, "224.0.0.1", Err("multicast")),
            (LAB, "100.64.0.1", Err("shared address space")),
            (LAB, "10.0.0.0/23", Err("between /24 and /32")),
            // IPv6 forms that carry a non-public IPv4 address: 6to4 (its IPv4 address
            // in bits 16-47), Teredo (server in bits 32-63, client XORed in the last 32),
            // NAT64 (refused whatever it carries), IPv4-compatible, IPv4-mapped.
            (
                PUBLIC,
                "2002:7f00:1::1",
                Err("a 6to4 address (2002::/16) around 127.0.0.1, a loopback address"),
            ),
            (
                PUBLIC,
                "2002:7f00:1::/48",
                Err("6to4 address (2002::/16) around 127.0.0.1"),
            ),
            (
                PUBLIC,
                "2002:c0a8:101::/48",
                Err("around 192.168.1.1, a private address"),
            ),
            (
                PUBLIC,
                "2002:a00:1::1",
                Err("around 10.0.0.1, a private address"),
            ),
            (
                PUBLIC,
                "2002:a9fe:1::1",
                Err("around 169.254.0.1, a link-local"),
            ),
            (
                PUBLIC,
                "2002:6440:1::1",
                Err("around 100.64.0.1, shared address space"),
            ),
            (
                PUBLIC,
                "2002::1",
                Err("around 0.0.0.0, the unspecified address"),
            ),
            (PUBLIC, "2002:c633:6407::/48", Ok("2002:c633:6407::/48")),
            (PUBLIC, "2002:808:808::1", Ok("2002:808:808::1/128")),
            (
                LAB,
                "2002:7f00:1::1",
                Err("6to4 address (2002::/16) around 127.0.0.1"),
            ),
            (
                PUBLIC,
                "2001:0:a00:1::3fff:fffe",
                Err("a Teredo address (2001::/32) around 10.0.0.1, a private address"),
            ),
            (
                PUBLIC,
                "2001:0:c633:6401::80ff:fffe",
                Err("Teredo address (2001::/32) around 127.0.0.1"),
            ),
            (
                PUBLIC,
                "2001:0:c633:6401::3ccc:9bf8",
                Ok("2001:0:c633:6401::3ccc:9bf8/128"),
            ),
            (
                PUBLIC,
                "2001:0:c633:6401::/64",
                Err("name one address (/128)"),
            ),
            (PUBLIC, "2001:db8:1::/48", Ok("2001:db8:1::/48")),
            (
                PUBLIC,
                "64:ff9b::a00:1",
                Err("a NAT64 address (64:ff9b::/96"),
            ),
            (PUBLIC, "64:ff9b::808:808", Err("NAT64 address")),
            (PUBLIC, "64:ff9b:1::a00:1", Err("NAT64 address")),
            (LAB, "64:ff9b::7f00:1", Err("NAT64 address")),
            (PUBLIC, "::127.0.0.1", Err("not a global unicast address")),
            (
                PUBLIC,
                "::ffff:127.0.0.1",
                Err("127.0.0.1/32 is a loopback address"),
            ),
            (
                PUBLIC,
                "::ffff:0:a00:1",
                Err("not a global unicast address"),
            ),
        ];
        for &(policy, input, expected) in rows {
            check(policy, input, expected);
        }
    }

    #[test]
    fn allow_from_contains_and_reads_back() {
        let a = AllowFrom::parse("198.51.100.0/24", &PUBLIC).unwrap();
        assert!(a.contains("198.51.100.255".parse().unwrap()));
        assert!(a.contains("::ffff:198.51.100.1".parse().unwrap()));
        assert!(!a.contains("198.51.101.0".parse().unwrap()));
        assert_eq!(
            "127.0.0.1/32".parse::<AllowFrom>().unwrap().to_string(),
            "127.0.0.1/32"
        );
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, "\"198.51.100.0/24\"");
        assert_eq!(serde_json::from_str::<AllowFrom>(&json).unwrap(), a);
        let own = AllowFrom::from_addr("::ffff:203.0.113.5".parse().unwrap(), &PUBLIC).unwrap();
        assert_eq!(own.to_string(), "203.0.113.5/32");
        assert!(AllowFrom::from_addr("127.0.0.1".parse().unwrap(), &PUBLIC).is_err());
    }

    #[test]
    fn allow_from_for_an_ipv4_only_entry_point() {
        let rows: &[(&str, Result<&str, &str>)] = &[
            ("198.51.100.7", Ok("198.51.100.7/32")),
            ("::ffff:198.51.100.7", Ok("198.51.100.7/32")),
            (
                "2001:db8::1",
                Err("2001:db8::1/128 is IPv6, but the entry point 192.0.2.1 takes IPv4"),
            ),
            ("2001:db8::/48", Err("is IPv6")),
        ];
        for &(input, expected) in rows {
            let got = AllowFrom::parse(input, &PUBLIC)
                .and_then(|a| a.require_ipv4("192.0.2.1"))
                .map(|a| a.to_string());
            match (got, expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{input}"),
                (Err(e), Err(want)) => {
                    assert_eq!(e.field, "allow_from");
                    assert!(e.message.contains(want), "{input}: {}", e.message);
                }
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
        let lab = AllowFrom::parse("::1", &LAB).unwrap();
        assert!(lab.require_ipv4("127.0.0.1").is_err());
    }

    fn check_dst(input: &str, expected: Result<&str, &str>) {
        match (DstAddress::parse(input), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got.to_string(), want, "{input}"),
            (Err(e), Err(want)) => {
                assert_eq!(e.field, "dst_address");
                assert!(
                    e.message.contains(want),
                    "{input}: {:?} lacks {want:?}",
                    e.message
                );
            }
            (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn dst_address_rules() {
        let rows: &[(&str, Result<&str, &str>)] = &[
            ("192.168.88.43", Ok("192.168.88.43")),
            ("10.0.0.1", Ok("10.0.0.1")),
            ("172.16.5.4", Ok("172.16.5.4")),
            ("8.8.4.4", Ok("8.8.4.4")),
            ("198.51.100.10", Ok("198.51.100.10")),
            ("fd12::1", Ok("fd12::1")),
            ("2001:db8::10", Ok("2001:db8::10")),
            ("127.0.0.1", Err("loopback")),
            ("::1", Err("loopback")),
            ("169.254.0.1", Err("link-local")),
            ("fe80::1", Err("link-local")),
            ("224.0.0.5", Err("multicast")),
            ("ff02::1", Err("multicast")),
            ("0.0.0.0", Err("unspecified")),
            ("::", Err("unspecified")),
            ("255.255.255.255", Err("broadcast")),
            ("240.0.0.1", Err("reserved")),
            ("0.0.0.1", Err("0.0.0.0/8")),
            ("100.64.0.1", Err("shared address space")),
            ("198.18.0.1", Err("benchmarking")),
            ("192.168.88.0/24", Err("not an IP address")),
            ("printer", Err("not an IP address")),
        ];
        for &(input, expected) in rows {
            check_dst(input, expected);
        }
        // Lab mode lets loopback devices in, and nothing else it refuses.
        let lab = Policy { lab_mode: true };
        for (input, ok) in [
            ("127.0.31.50", true),
            ("::1", true),
            ("192.168.88.43", true),
            ("169.254.0.1", false),
            ("0.0.0.0", false),
            ("224.0.0.5", false),
            ("printer", false),
        ] {
            assert_eq!(DstAddress::parse_with(input, &lab).is_ok(), ok, "{input}");
            assert_eq!(
                DstAddress::parse_with(input, &PUBLIC).ok(),
                DstAddress::parse(input).ok(),
                "{input}"
            );
        }
    }

    #[test]
    fn dst_address_serde_validates() {
        let ok: DstAddress = serde_json::from_str("\"192.168.88.43\"").unwrap();
        assert_eq!(serde_json::to_string(&ok).unwrap(), "\"192.168.88.43\"");
        assert!(serde_json::from_str::<DstAddress>("\"127.0.0.1\"").is_err());
        assert!("169.254.0.1".parse::<DstAddress>().is_err());
    }

    #[test]
    fn dst_port_boundaries() {
        for (input, ok) in [
            (0, false),
            (1, true),
            (22, true),
            (65535, true),
            (65536, false),
            (-1, false),
        ] {
            let got = dst_port(input);
            assert_eq!(got.is_ok(), ok, "{input}");
            match got {
                Ok(p) => assert_eq!(i64::from(p), input),
                Err(e) => {
                    assert_eq!(e.field, "dst_port");
                    assert_eq!(e.message, "must be between 1 and 65535");
                }
            }
        }
    }
}
