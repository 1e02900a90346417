//! The interpreter's own tests: values, expressions, errors, compiling, find-or-create.

use super::*;
use crate::router::RouterConfig;

fn router() -> Router {
    Router::new(RouterConfig::new("r", "127.0.0.1".parse().unwrap(), "pw"))
}

async fn run_ok(r: &Router, text: &str) -> String {
    let (out, result) = run_text(r, &Caller::system(), text, &mut Vec::new()).await;
    assert_eq!(result, Ok(()), "{text}\n{out}");
    out
}

#[tokio::test]
async fn values_expressions_and_strings() {
    let r = router();
    let out = run_ok(
        &r,
        ":local v [/system resource get version]\n:local a \"x\"; :set a ($a . \"y\" . 1)\n:put \"$a [$[:len $a]] $[:pick $v 0 2] $([:len \"abc\"] + 1)\"\n:if ([:pick $v 0 2] = \"7.\" && 1 < 2) do={ :put yes } else={ :put no }\n:put [:tostr 5]; :put ([:typeof 5] . [:typeof \"5\"])",
    )
    .await;
    assert_eq!(out, "xy1 [3] 7. 4\nyes\n5\nnumstr\n");
}

#[tokio::test]
async fn do_on_error_catches_and_error_stops() {
    let r = router();
    let out = run_ok(
        &r,
        ":do { :error \"boom\"; :put no } on-error={ :put caught }\n:do { /user add name=u group=nosuch } on-error={ :put caught2 }\n:put after",
    )
    .await;
    assert_eq!(out, "caught\ncaught2\nafter\n");
    let (out, result) = run_text(
        &r,
        &Caller::system(),
        ":put a; :error \"stop here\"; :put b",
        &mut vec![],
    )
    .await;
    assert_eq!(out, "a\n");
    assert_eq!(result, Err(ScriptError("stop here".into())));
}

#[tokio::test]
async fn an_unknown_command_anywhere_stops_the_script_before_it_runs() {
    let r = router();
    let (out, result) = run_text(
        &r,
        &Caller::system(),
        "/user add name=a group=read\n:if (false) do={ /ip frobnicate add }",
        &mut vec![],
    )
    .await;
    assert_eq!(out, "");
    assert_eq!(
        result,
        Err(ScriptError(
            "bad command name frobnicate (line 2 column 22)".into()
        ))
    );
    assert!(r.state().users.by_name("a").is_none());
    // An unknown parameter too.
    let (_, result) = run_text(
        &r,
        &Caller::system(),
        "/user add name=a colour=red",
        &mut vec![],
    )
    .await;
    assert_eq!(
        result,
        Err(ScriptError(
            "expected end of command (line 1 column 18)".into()
        ))
    );
    // A CHR has no /system routerboard: naming it stops the script, even under on-error,
    // but `:parse` defers it to when it runs.
    let (_, result) = run_text(
        &r,
        &Caller::system(),
        ":do { :put [/system routerboard get serial-number] } on-error={}",
        &mut vec![],
    )
    .await;
    assert!(
        result
            .unwrap_err()
            .0
            .starts_with("bad command name routerboard")
    );
    let out = run_ok(
        &r,
        ":local s \"none\"; :do { :set s [[:parse \"/system routerboard get serial-number\"]] } on-error={ :put chr }; :put $s",
    )
    .await;
    assert_eq!(out, "chr\nnone\n");
}

#[tokio::test]
async fn find_or_create_by_comment_with_relative_commands() {
    let r = router();
    let script = "/interface wireguard\n:local id [find where comment=\"postern:wg\"]\n:if ([:len $id] = 0) do={ :set id [add name=postern comment=\"postern:wg\"] }\n:put [get $id public-key]\n/ip firewall filter\n:if ([:len [find comment=\"first\"]] = 0) do={ add chain=input action=drop comment=first }\n:if ([:len [find comment=\"postern:fw\"]] = 0) do={ add chain=input action=accept protocol=tcp dst-port=8728,22 in-interface=postern place-before=[:pick [find] 0] comment=\"postern:fw\" }";
    let first = run_ok(&r, script).await;
    let second = run_ok(&r, script).await;
    assert_eq!(first, second);
    let state = r.state();
    assert_eq!(state.wireguard.items.len(), 1);
    let public = state.wireguard.items[0].get("public-key").unwrap();
    assert_eq!(first.trim(), public);
    let comments: Vec<_> = state
        .filter
        .items
        .iter()
        .map(|i| i.get("comment").unwrap())
        .collect();
    assert_eq!(comments, ["postern:fw", "first"]);
}

#[test]
fn scheduler_scripts_run_without_a_runtime() {
    let r = router();
    run(
        &r,
        &Caller::system(),
        "/user add name=a group=read; :foreach u in=[/user find name=\"a\"] do={ /user set $u comment=seen }",
    );
    assert_eq!(
        r.state().users.by_name("a").unwrap().get("comment"),
        Some("seen")
    );
}

#[tokio::test]
async fn code_that_calls_itself_ends_with_an_error_not_a_crash() {
    let r = router();
    let (_, result) = run_text(
        &r,
        &Caller::system(),
        ":global f [:parse \":global f; :put x; [\\$f]\"]; [$f]",
        &mut vec![],
    )
    .await;
    assert_eq!(
        result,
        Err(ScriptError("failure: script nested too deeply".into()))
    );
}

#[tokio::test]
async fn a_routerboard_has_a_serial_number() {
    let mut config = RouterConfig::new("r", "127.0.0.1".parse().unwrap(), "pw");
    config.serial_number = Some("HD2087XKQ1".into());
    config.board_name = "RB5009UG+S+".into();
    let r = Router::new(config);
    let out = run_ok(
        &r,
        ":put [/system routerboard get serial-number]; :put [/system resource get board-name]",
    )
    .await;
    assert_eq!(out, "HD2087XKQ1\nRB5009UG+S+\n");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

    /// Whatever is pasted, the console parses, compiles and runs it to an answer: no
    /// panic, no hang (waits are cut short here).
    #[test]
    fn any_text_gets_an_answer_not_a_panic(
        text in "[\\[\\]{}()\"$:;=! a-z/\\\\.\n*0-9&|<>-]{0,160}"
    ) {
        let r = router();
        let _ = parse::parse(&text);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let _ = tokio::time::timeout(
                std::time::Duration::from_millis(200),
                run_text(&r, &Caller::system(), &text, &mut Vec::new()),
            )
            .await;
        });
    }

    /// Scripts made of the constructs the enrolment script uses, in any order.
    #[test]
    fn generated_scripts_get_an_answer_not_a_panic(
        parts in proptest::collection::vec(
            proptest::sample::select(vec![
                ":local a \"x\"",
                ":set a ($a . \"y\")",
                ":put $a",
                ":put [:len $a]",
                ":put [:pick $a 0 1]",
                ":if ([:len $a] > 1) do={ :put big } else={ :put small }",
                ":do { :error \"e\" } on-error={ :put caught }",
                "/ip firewall filter",
                "add chain=input action=accept comment=p place-before=[:pick [find] 0]",
                "/interface wireguard add comment=w",
                ":local id [/interface wireguard find where comment=\"w\"]",
                ":put [/interface wireguard get $id public-key]",
                "/user remove [find name=\"nobody\"]",
                ":put ($x->\"k\")",
                ":error ([:tostr 1] . \"!\")",
            ]),
            0..12,
        )
    ) {
        let r = router();
        let text = parts.join("\n");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (_, result) = rt.block_on(run_text(&r, &Caller::system(), &text, &mut Vec::new()));
        if let Err(e) = result {
            proptest::prop_assert!(!e.0.is_empty());
        }
    }
}

#[tokio::test]
async fn an_imported_file_runs_line_by_line_each_line_a_scope_of_its_own() {
    let r = router();
    crate::fetch::write_file(
        &r,
        "a.rsc",
        b":local a \"one\"; :put \"same line: $a\"\n:put \"next line: $a\"\n{\n  :local b 2\n  :put \"block: $b\"\n}\n/user add name=first group=read\n/user frobnicate\n/user add name=never group=read\n",
    )
    .unwrap();
    let (out, result) = run_text(
        &r,
        &Caller::system(),
        "/import file-name=a.rsc",
        &mut vec![],
    )
    .await;
    assert_eq!(out, "same line: one\nnext line: \nblock: 2\n");
    // The line that does not compile stops the import there; the lines before stay done.
    assert_eq!(
        result,
        Err(ScriptError(
            "bad command name frobnicate (line 8 column 7)".into()
        ))
    );
    assert!(r.state().users.by_name("first").is_some());
    assert!(r.state().users.by_name("never").is_none());
    // `:set` of a name nothing declared is refused.
    let (_, result) = run_text(&r, &Caller::system(), ":set nobody 1", &mut vec![]).await;
    assert!(result.unwrap_err().0.starts_with("syntax error"));
}

#[tokio::test]
async fn print_where_shows_only_the_matching_items() {
    let r = router();
    let out = run_ok(
        &r,
        "/ip firewall filter add chain=input action=drop comment=a; /ip firewall filter add chain=forward action=accept comment=b\n/ip firewall filter print where chain=forward\n:put [/ip firewall filter print count-only where comment=a]",
    )
    .await;
    assert!(out.contains(";;; b") && !out.contains(";;; a"), "{out}");
    assert!(out.ends_with("1\n"), "{out}");
}
