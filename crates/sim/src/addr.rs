//! Address lists as RouterOS writes them: `10.0.0.0/8,192.168.88.1`, IPv4 or IPv6,
//! checked against a client's source address (a user's `address=`, a NAT rule's
//! `src-address=`).

use std::net::IpAddr;

/// One network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d`, `a.b.c.d/n`, `x::y` or `x::y/n`.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client seen through an IPv6 socket still matches IPv4 networks.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// A comma-separated list of networks; an empty list allows every address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressList(pub Vec<Cidr>);

impl AddressList {
    /// `None` when any element is not an address or network.
    pub fn parse(s: &str) -> Option<AddressList> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            out.push(Cidr::parse(part)?);
        }
        Some(AddressList(out))
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        self.0.is_empty() || self.0.iter().any(|c| c.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(list: &str, ip: &str, expected: bool) {
        let l = AddressList::parse(list).unwrap();
        assert_eq!(l.allows(ip.parse().unwrap()), expected, "{list} vs {ip}");
    }

    #[test]
    fn lists() {
        check("", "1.2.3.4", true);
        check("10.0.0.0/8", "10.200.0.1", true);
        check("10.0.0.0/8", "11.0.0.1", false);
        check("192.168.88.1", "192.168.88.1", true);
        check("192.168.88.1", "192.168.88.2", false);
        check("10.0.0.0/8, 172.16.0.0/12", "172.20.1.1", true);
        check("0.0.0.0/0", "8.8.8.8", true);
        check("::/0", "8.8.8.8", false);
        check("fd00::/8", "fd00::1", true);
        check("127.0.0.1", "::ffff:127.0.0.1", true);
        assert!(AddressList::parse("10.0.0.0/33").is_none());
        assert!(AddressList::parse("bogus").is_none());
    }
}
