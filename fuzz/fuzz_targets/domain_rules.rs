//! The rules for what operators type (`domain::rules`), as the API and the portal apply
//! them to request fields: `allow_from`, `dst_address`, names, usernames, entry points,
//! tunnel addresses, and the closed vocabularies. A refusal names its field; a value
//! accepted is accepted again, unchanged, when given back in the form Postern shows it.
#![no_main]

use std::str::FromStr;

use domain::rules::{self, AllowFrom, DstAddress, Policy};
use domain::{AccessLevel, AccessType, GrantStatus, Role, RouterId};
use libfuzzer_sys::fuzz_target;

fn names_field<T>(r: &Result<T, domain::ValidationError>, field: &str) {
    if let Err(e) = r {
        assert_eq!(e.field, field, "{e}");
        assert!(!e.message.is_empty());
    }
}

/// A normalised name is its own normal form.
fn stable(rule: fn(&str) -> Result<String, domain::ValidationError>, s: &str) {
    if let Ok(v) = rule(s) {
        assert_eq!(rule(&v).as_deref(), Ok(v.as_str()), "{s:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    for lab_mode in [false, true] {
        let policy = Policy { lab_mode };
        let allow = AllowFrom::parse(s, &policy);
        names_field(&allow, "allow_from");
        if let Ok(a) = allow {
            let net = a.net();
            assert!(
                a.contains(net.network()),
                "{s:?}: {net} lacks its own network"
            );
            assert_eq!(
                AllowFrom::parse(&net.to_string(), &policy).map(|b| b.net()),
                Ok(net)
            );
            if lab_mode {
                continue;
            }
            // What is public is accepted in lab mode too.
            assert!(AllowFrom::parse(s, &Policy { lab_mode: true }).is_ok());
        }
        let dst = DstAddress::parse_with(s, &policy);
        names_field(&dst, "dst_address");
        if let Ok(d) = dst {
            assert_eq!(
                DstAddress::parse_with(&d.addr().to_string(), &policy),
                Ok(d)
            );
        }
    }
    for rule in [
        rules::router_name,
        rules::site_name,
        rules::org_name,
        rules::token_name,
        rules::routeros_username,
        rules::username,
        rules::entry_point,
    ] {
        stable(rule, s);
    }
    if let Ok(a) = rules::tunnel_address(s) {
        assert_eq!(rules::tunnel_address(&a.to_string()), Ok(a));
    }
    if let Ok(id) = RouterId::from_str(s) {
        assert_eq!(RouterId::from_str(&id.to_string()).ok(), Some(id));
    }
    if let Ok(v) = GrantStatus::from_str(s) {
        assert_eq!(v.as_str(), s);
    }
    if let Ok(v) = AccessType::from_str(s) {
        assert_eq!(v.as_str(), s);
    }
    if let Ok(v) = AccessLevel::from_str(s) {
        assert_eq!(v.as_str(), s);
    }
    if let Ok(v) = Role::from_str(s) {
        assert_eq!(v.as_str(), s);
    }
});
