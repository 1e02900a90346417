//! The server's configuration (`server::config`): a TOML file, then `POSTERN_*`
//! variables. The input is the file's text, a NUL byte, then `NAME=value` lines for the
//! environment. A configuration that loads keeps the rules `load` promises (a region,
//! port ranges in order, grant limits in order, nothing zero that must not be); a
//! refusal is an error naming what is wrong, never a panic; loading is deterministic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use server::config::{Overrides, ServerConfig, parse_duration};

fuzz_target!(|data: &[u8]| {
    let (file, env) = match data.iter().position(|&b| b == 0) {
        Some(i) => data.split_at(i),
        None => (data, &[][..]),
    };
    let Ok(file) = std::str::from_utf8(file) else {
        return;
    };
    let env: Vec<(String, String)> = String::from_utf8_lossy(env)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            (
                format!("POSTERN_{}", k.trim_start_matches('\0')),
                v.to_string(),
            )
        })
        .collect();
    let path = Path::new("postern.toml");
    let flags = Overrides::default();

    let loaded = ServerConfig::from_text(Some((path, file)), env.clone(), &flags);
    let again = ServerConfig::from_text(Some((path, file)), env, &flags);
    match (&loaded, &again) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("loading twice gave different answers"),
    }
    match loaded {
        Ok(c) => {
            assert!(!c.regions.is_empty());
            for r in &c.regions {
                assert!(r.port_min >= 1 && r.port_min <= r.port_max, "{r:?}");
            }
            let l = c.grant_limits;
            assert!(!l.min.is_zero() && l.min <= l.default && l.default <= l.max);
            assert!(c.forward_port_min >= 1 && c.forward_port_min <= c.forward_port_max);
            assert!(!c.idle_timeout.is_zero() && !c.reconcile_interval.is_zero());
            assert!(!c.gateway_heartbeat.is_zero() && c.max_connections >= 1);
            let _ = (c.database_url(), c.secret_key_path());
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }

    // Durations: what parses is a whole number of seconds that prints back the same.
    if let Ok(d) = parse_duration("fuzz", file) {
        let back = parse_duration("fuzz", &format!("{}s", d.as_secs())).ok();
        assert_eq!(back, Some(d));
    }
});
