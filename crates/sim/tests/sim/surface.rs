//! The sim's command surface is a real router's: every command it implements, every
//! parameter and listed value it accepts and every property its `print` shows exists
//! in RouterOS 7.21.4's command database (`postern-surface`); what is outside it gets
//! RouterOS's own `!trap` words; and each version has the commands it should.

use postern_sim::menu::{self, CommandSpec};
use postern_sim::{Router, RouterConfig};
use surface::Database;

use crate::common::*;

fn router_of(version: &str) -> Router {
    let mut config = RouterConfig::new("r", "127.0.0.1".parse().unwrap(), "pw");
    config.version = version.into();
    Router::new(config)
}

fn paths(specs: &[CommandSpec]) -> Vec<&str> {
    specs.iter().map(|s| s.path.as_str()).collect()
}

/// Everything the sim accepts, in words, that RouterOS 7.21.4 does not have.
fn not_in_routeros(specs: &[CommandSpec]) -> Vec<String> {
    let db = Database::routeros_7().unwrap();
    let mut wrong = Vec::new();
    for spec in specs {
        let command = match db.api_command(&spec.path) {
            Ok(c) => c,
            Err(f) => {
                wrong.push(f.to_string());
                continue;
            }
        };
        for param in &spec.params {
            let known = match *param {
                ".id" => command.has_arg("numbers") || command.has_arg("number"),
                ".proplist" => spec.path.ends_with("/print"),
                p => command.has_arg(p),
            };
            if !known {
                wrong.push(format!("{} {param}=", spec.path));
            }
        }
        for (param, values) in &spec.values {
            // Every value the sim accepts is one the database lists (booleans also as
            // true/false, which RouterOS takes and prints).
            let listed = command.listed_values(param);
            for v in values {
                let boolean = listed == ["no", "yes"] && matches!(*v, "true" | "false");
                if !listed.contains(v) && !boolean {
                    wrong.push(format!("{} {param}={v} is not a listed value", spec.path));
                }
            }
        }
        for property in &spec.properties {
            if let Err(e) = command.check_property(property) {
                wrong.push(format!("{}: {e}", spec.path));
            }
        }
    }
    wrong
}

#[test]
fn every_command_parameter_value_and_property_of_the_sim_is_routeros_7s() {
    let specs = menu::surface(&router_of("7.21.4"));
    assert!(
        paths(&specs).contains(&"/user/active/remove") && specs.len() > 20,
        "the walk must see the sim's commands: {:?}",
        paths(&specs)
    );
    assert_eq!(not_in_routeros(&specs), Vec::<String>::new());
    // The walk fails for what a real router lacks.
    let mut bad = specs.clone();
    bad.push(CommandSpec {
        path: "/user/active/request-logout".into(),
        params: vec![".id"],
        values: vec![],
        properties: vec![],
    });
    if let Some(add) = bad.iter_mut().find(|s| s.path == "/user/add") {
        add.params.push("colour");
    }
    if let Some(add) = bad.iter_mut().find(|s| s.path == "/ip/firewall/nat/add") {
        add.values.push(("action", vec!["teleport"]));
    }
    let wrong = not_in_routeros(&bad);
    assert_eq!(wrong.len(), 3, "{wrong:?}");
}

#[test]
fn each_version_has_its_own_commands() {
    let v7 = menu::surface(&router_of("7.21.4"));
    let v6 = menu::surface(&router_of("6.49.10"));
    let old = menu::surface(&router_of("6.49.7"));
    let early7 = menu::surface(&router_of("7.12.1"));
    // `/user active remove` is RouterOS 7's.
    assert!(paths(&v7).contains(&"/user/active/remove"));
    assert!(!paths(&v6).contains(&"/user/active/remove"));
    // device-mode: 7.13+ and 6.49.8+.
    assert!(paths(&v7).contains(&"/system/device-mode/print"));
    assert!(paths(&v6).contains(&"/system/device-mode/print"));
    assert!(!paths(&old).contains(&"/system/device-mode/print"));
    assert!(!paths(&early7).contains(&"/system/device-mode/print"));
}

#[tokio::test]
async fn what_is_outside_the_surface_gets_routeros_words() {
    let r = router().await;
    let mut api = Raw::admin(r.api_addr).await;
    for spec in menu::surface(r.router()) {
        // An unknown parameter, on every command.
        assert_eq!(
            api.trap(&[spec.path.as_str(), "=frobnicate=1"]).await,
            ("unknown parameter".to_string(), None),
            "{}",
            spec.path
        );
        // An unknown command in every menu.
        let menu = spec.path.rsplit_once('/').unwrap().0;
        assert_eq!(
            api.trap(&[&format!("{menu}/frobnicate")]).await,
            (
                "no such command or directory (frobnicate)".to_string(),
                Some(0)
            ),
        );
    }
    // `request-logout` is gone in RouterOS 7.
    assert_eq!(
        api.trap(&["/user/active/request-logout", "=.id=*1"]).await,
        (
            "no such command or directory (request-logout)".to_string(),
            Some(0)
        ),
    );
    // Bad values, with RouterOS's words.
    assert_eq!(
        api.trap(&["/ip/firewall/nat/add", "=chain=dstnat", "=action=teleport"])
            .await
            .0,
        "input does not match any value of action"
    );
    assert_eq!(
        api.trap(&["/user/add", "=name=a", "=group=nosuch", "=password=x"])
            .await
            .0,
        "input does not match any value of group"
    );
    assert_eq!(
        api.trap(&["/user/add", "=name=a", "=group=read", "=address=nope"])
            .await
            .0,
        "invalid value for argument address"
    );
    r.shutdown().await;
}

#[tokio::test]
async fn a_routeros_6_router_lacks_session_removal() {
    let r = router_with(|o| o.version = "6.49.10".into()).await;
    let mut api = Raw::admin(r.api_addr).await;
    assert_eq!(
        api.trap(&["/user/active/remove", "=.id=*1"]).await,
        ("no such command or directory (remove)".to_string(), Some(0)),
    );
    r.shutdown().await;
}
