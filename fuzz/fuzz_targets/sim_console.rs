//! The sim's text parsers: the SSH console's command lines (`ssh::console`), scripts as
//! the scheduler runs them (`script`), `print` queries (`query`), menu paths, and the
//! RouterOS formats of dates, times, intervals, policies, ids and address lists. Where
//! the sim also writes a format, what it writes reads back to the same value.
//!
//! No Tokio runtime runs here, so dst-nat rules bind no real port.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use sim::addr::{AddressList, Cidr};
use sim::clock::{self, Clock};
use sim::query::Query;
use sim::router::{Caller, Router, RouterConfig};
use sim::state::{Policies, format_id, parse_id};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut config = RouterConfig::new("fuzz", IpAddr::V4(Ipv4Addr::LOCALHOST), "pw");
    config.clock = Clock::manual(UNIX_EPOCH + Duration::from_secs(1_795_000_000));
    let router = Router::new(config);
    let read_only = Caller {
        user: "viewer".into(),
        policies: Policies::parse("local,ssh,read,api").unwrap_or(Policies::ALL),
    };

    // The console is async (a script may `:delay` or `/tool fetch`); a runtime whose
    // clock is paused lets delays pass at once.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    for line in text.lines() {
        rt.block_on(async {
            let mut cwd = Vec::new();
            let _ = sim::ssh::console::run_line(&router, &read_only, line, &mut cwd).await;
            let _ = sim::ssh::console::run_line(&router, &Caller::system(), line, &mut cwd).await;
        });
        let _ = sim::menu::parse_path(line.trim());

        let words: Vec<&str> = line.split(' ').collect();
        if let Ok(q) = Query::parse(&words) {
            let _ = q.matches(|k| (k == "name").then_some("admin"));
        }

        if let Some(d) = clock::parse_interval(line) {
            let printed = clock::format_interval(d);
            assert_eq!(
                clock::parse_interval(&printed),
                Some(d),
                "{line:?} -> {printed}"
            );
        }
        if let Some(day) = clock::parse_date(line) {
            assert_eq!(day % 86_400, 0);
            assert_eq!(clock::parse_date(&clock::format_date(day)), Some(day));
            assert_eq!(clock::parse_date(&clock::format_date_v6(day)), Some(day));
        }
        if let Some(t) = clock::parse_time(line) {
            assert_eq!(clock::parse_time(&clock::format_time(t)), Some(t));
        }
        if let Some(p) = Policies::parse(line) {
            assert_eq!(Policies::parse(&p.render()), Some(p), "{line:?}");
        }
        if let Some(id) = parse_id(line) {
            assert_eq!(parse_id(&format_id(id)), Some(id));
        }
        let _ = (Cidr::parse(line), AddressList::parse(line));
    }
    sim::script::run(&router, &Caller::system(), &text);
});
