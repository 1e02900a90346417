//! Onboarding from the router's side: the enrolment line pasted into the SSH console
//! fetches a script from a small HTTP server, `/import`s it, and the script makes the
//! WireGuard interface, the management group and user, the firewall rule (before the
//! router's own), the tunnel address, posts the public key as JSON, then adds the peer;
//! pasted twice it duplicates nothing. Also `/tool fetch` over https against the
//! router's trust store, and its refusals.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use russh::ChannelMsg;
use russh::client;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::common::*;
use crate::ssh::{Client, ssh_connect};

/// A request the test server received: method, path, headers (lower-case names), body.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

type Route = Arc<dyn Fn(&Seen) -> (u16, String) + Send + Sync>;

/// A tiny HTTP/1.1 server: one request per connection, answered by `route`.
async fn http_server(route: Route) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (route, log) = (route.clone(), log.clone());
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                serve_one(BufReader::new(read), &mut write, &route, &log).await;
            });
        }
    });
    (addr, seen)
}

async fn serve_one<R: tokio::io::AsyncBufRead + Unpin>(
    mut read: R,
    write: &mut (impl AsyncWrite + Unpin),
    route: &Route,
    log: &Mutex<Vec<Seen>>,
) {
    let mut line = String::new();
    read.read_line(&mut line).await.unwrap();
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        read.read_line(&mut h).await.unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap();
        headers.push((k.trim().to_lowercase(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0; len];
    read.read_exact(&mut body).await.unwrap();
    let seen = Seen {
        method,
        path,
        headers,
        body: String::from_utf8(body).unwrap(),
    };
    let (status, text) = route(&seen);
    log.lock().unwrap().push(seen);
    let reason = if status == 200 { "OK" } else { "Not Found" };
    let answer = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    write.write_all(answer.as_bytes()).await.unwrap();
    write.shutdown().await.ok();
}

/// The enrolment script, of the shape the plan gives (interface, group and user,
/// firewall before the router's rules, address, POST of the public key, peer last).
fn enrol_script(server: SocketAddr, token: &str, gateway_key: &str) -> String {
    r#"# Postern enrolment for this router (RouterOS 7). Safe to run again: it finds
# what it made by comment and repairs it. One { } block: each line of an imported
# file is a scope of its own, so the variables would not reach the next line.
{
:local gw "100.64.0.1"
:local me "100.64.0.7"
:local version [/system resource get version]
:if ([:pick $version 0 2] != "7.") do={ :error "Postern: RouterOS 6 has no WireGuard" }
:local wg [/interface wireguard find where comment="postern:interface"]
:if ([:len $wg] = 0) do={ :set wg [/interface wireguard add name=postern comment="postern:interface"] }
:local pub [/interface wireguard get $wg public-key]
:if ([:len [/user group find where comment="postern:group"]] = 0) do={
    /user group add name=postern policy=read,write,policy,test,api,ssh,winbox,sensitive comment="postern:group"
}
:local u [/user find where comment="postern:user"]
:if ([:len $u] = 0) do={
    /user add name=postern group=postern password="s3cret-from-the-server" address=$gw comment="postern:user"
} else={
    /user set $u group=postern password="s3cret-from-the-server" address=$gw
}
:if ([:len [/ip firewall filter find where comment="postern:management"]] = 0) do={
    :local first [/ip firewall filter find]
    :if ([:len $first] > 0) do={
        /ip firewall filter add chain=input action=accept protocol=tcp src-address=$gw in-interface=postern dst-port=8728,8729,22,8291 comment="postern:management" place-before=[:pick $first 0]
    } else={
        /ip firewall filter add chain=input action=accept protocol=tcp src-address=$gw in-interface=postern dst-port=8728,8729,22,8291 comment="postern:management"
    }
}
:if ([:len [/ip address find where comment="postern:address"]] = 0) do={
    /ip address add address=($me . "/32") network=$gw interface=postern comment="postern:address"
}
:local serial ""
:do { :set serial [[:parse "/system routerboard get serial-number"]] } on-error={ :set serial "" }
:local json ("{\"public_key\":\"" . $pub . "\",\"identity\":\"" . [/system identity get name] . "\",\"version\":\"" . $version . "\",\"board\":\"" . [/system resource get board-name] . "\",\"serial\":\"" . $serial . "\",\"api_port\":" . [/ip service get api port] . ",\"ssh_port\":" . [/ip service get ssh port] . ",\"winbox_port\":" . [/ip service get winbox port] . "}")
:local result [/tool fetch url="http://SERVER/enroll/TOKEN" http-method=post http-header-field="Content-Type: application/json" http-data=$json output=user as-value]
:if (($result->"status") != "finished") do={ :error "Postern: the server did not take the enrolment" }
:if ([:len [/interface wireguard peers find where comment="postern:peer"]] = 0) do={
    /interface wireguard peers add interface=postern public-key="GATEWAY" endpoint-address=127.0.0.1 endpoint-port=51820 allowed-address=($gw . "/32") persistent-keepalive=25s comment="postern:peer"
}
:put "Postern: enrolled"
}
"#
    .replace("SERVER", &server.to_string())
    .replace("TOKEN", token)
    .replace("GATEWAY", gateway_key)
}

/// The line an operator pastes (lab mode: plain http, said in a comment line first).
fn enrol_line(server: SocketAddr, token: &str) -> String {
    format!(
        "# Postern lab mode: plain HTTP, the script is not protected in transit\r:if ([:pick [/system resource get version] 0 2] = \"7.\") do={{/tool fetch url=\"http://{server}/enroll/{token}\" dst-path=postern-enroll.rsc; /import file-name=postern-enroll.rsc; /file remove [find name=\"postern-enroll.rsc\"]}} else={{:put \"Postern: RouterOS 6 has no WireGuard; add this router in direct mode\"}}\r"
    )
}

/// Pastes `text` into an interactive console and returns the screen once `prompts`
/// more prompts have appeared.
async fn paste(ch: &mut russh::Channel<client::Msg>, text: &str, prompts: usize) -> String {
    ch.data(text.as_bytes()).await.unwrap();
    let mut screen = String::new();
    tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while screen.matches("] > ").count() < prompts {
            match ch.wait().await {
                Some(ChannelMsg::Data { data }) => screen.push_str(&String::from_utf8_lossy(&data)),
                Some(_) => {}
                None => break,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no prompt after the paste: {screen:?}"));
    screen
}

async fn console(
    r: &postern_sim::RouterHandle,
) -> (client::Handle<Client>, russh::Channel<client::Msg>) {
    let h = ssh_connect(r, "admin", "pw").await.unwrap();
    let mut ch = h.channel_open_session().await.unwrap();
    ch.request_pty(true, "xterm", 200, 50, 0, 0, &[])
        .await
        .unwrap();
    ch.request_shell(true).await.unwrap();
    paste(&mut ch, "", 1).await;
    (h, ch)
}

fn comments(items: &[postern_sim::state::Item]) -> Vec<String> {
    items
        .iter()
        .map(|i| i.get("comment").unwrap_or("-").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pasted_line_enrols_the_router_and_a_second_paste_duplicates_nothing() {
    let gateway_key = postern_sim::state::encode_key(&postern_sim::state::public_key(
        &postern_sim::state::generate_private_key(),
    ));
    let script = Arc::new(Mutex::new(String::new()));
    let served = script.clone();
    let route: Route = Arc::new(
        move |req: &Seen| match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/enroll/t0k3n") => (200, served.lock().unwrap().clone()),
            ("POST", "/enroll/t0k3n") => (200, "{\"ok\":true}".into()),
            _ => (404, "not found".into()),
        },
    );
    let (server, seen) = http_server(route).await;
    let text = enrol_script(server, "t0k3n", &gateway_key);
    *script.lock().unwrap() = text.clone();

    // Every command of the script exists, with those parameters, on RouterOS 7.21.4;
    // `.ci/run` also checks it with `routeros-lsp check --strict`.
    let db = surface::Database::routeros_7().unwrap();
    assert_eq!(db.check_script(&text), Vec::new());
    if let Some(dir) = std::env::var_os("POSTERN_ROUTEROS_SCRIPTS") {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            std::path::Path::new(&dir).join("sim-enrolment-example.rsc"),
            &text,
        )
        .unwrap();
    }

    let r = router().await;
    // The router's own firewall, which Postern's rule must come before.
    r.router()
        .run(
            &postern_sim::Caller::system(),
            &postern_sim::menu::Request::new("/ip/firewall/filter/add")
                .attr("chain", "input")
                .attr("action", "drop")
                .attr("comment", "defconf: drop all"),
        )
        .unwrap();
    let changes = r.router().subscribe_wireguard();
    let (_h, mut ch) = console(&r).await;

    let line = enrol_line(server, "t0k3n");
    let first = paste(&mut ch, &line, 2).await;
    assert!(first.contains("status: finished"), "{first}");
    assert!(first.contains("Postern: enrolled"), "{first}");
    assert!(
        first.contains("Script file loaded and executed successfully"),
        "{first}"
    );
    assert!(changes.has_changed().unwrap());

    let check = |r: &postern_sim::RouterHandle| {
        let s = r.router().state();
        assert_eq!(comments(&s.wireguard.items), ["postern:interface"]);
        assert_eq!(comments(&s.wireguard_peers.items), ["postern:peer"]);
        assert_eq!(comments(&s.addresses.items), ["postern:address"]);
        assert_eq!(
            comments(&s.filter.items),
            ["postern:management", "defconf: drop all"]
        );
        assert_eq!(comments(&s.groups.items), ["-", "-", "-", "postern:group"]);
        assert_eq!(
            comments(&s.users.items),
            ["system default user", "postern:user"]
        );
        assert!(s.files.items.is_empty(), "the script file stays behind");
        let user = s.users.by_name("postern").unwrap();
        assert_eq!(user.get("address"), Some("100.64.0.1"));
        let rule = &s.filter.items[0];
        assert_eq!(rule.get("src-address"), Some("100.64.0.1"));
        assert_eq!(rule.get("dst-port"), Some("8728,8729,22,8291"));
        s.wireguard_peers.items[0].clone()
    };
    check(&r);

    // What the tunnel's driver reads: the router's own key pair, the peer and address.
    let wg = r.router().wireguard();
    assert_eq!(wg.len(), 1);
    let iface = &wg[0];
    assert_eq!(iface.name, "postern");
    assert_eq!(iface.listen_port, 13231);
    assert_eq!(
        iface.public_key,
        postern_sim::state::public_key(&iface.private_key)
    );
    assert_eq!(iface.addresses.len(), 1);
    assert_eq!(iface.addresses[0].address.to_string(), "100.64.0.7");
    assert_eq!(iface.addresses[0].prefix, 32);
    assert_eq!(
        iface.addresses[0].network.map(|n| n.to_string()),
        Some("100.64.0.1".into())
    );
    let peer = &iface.peers[0];
    assert_eq!(
        postern_sim::state::encode_key(&peer.public_key),
        gateway_key
    );
    assert_eq!(peer.endpoint_address.as_deref(), Some("127.0.0.1"));
    assert_eq!(peer.endpoint_port, Some(51820));
    assert_eq!(
        peer.persistent_keepalive,
        Some(std::time::Duration::from_secs(25))
    );
    assert_eq!(peer.allowed_address[0].to_string_lossy(), "100.64.0.1/32");

    // The server got the script's GET and one POST of JSON with the router's key.
    let posts: Vec<Seen> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.method == "POST")
        .cloned()
        .collect();
    assert_eq!(posts.len(), 1);
    let post = &posts[0];
    assert!(
        post.headers
            .iter()
            .any(|(k, v)| k == "content-type" && v == "application/json")
    );
    let json: serde_json::Value = serde_json::from_str(&post.body).unwrap();
    let public = postern_sim::state::encode_key(&iface.public_key);
    assert_eq!(json["public_key"], public.as_str());
    assert_eq!(json["identity"], "sim-1");
    assert_eq!(json["version"], "7.18.2 (stable)");
    assert_eq!(json["board"], "CHR");
    assert_eq!(json["serial"], "");
    assert_eq!(json["api_port"], r.api_addr.port());
    assert_eq!(json["ssh_port"], r.ssh_addr.port());
    assert_eq!(json["winbox_port"], r.winbox_addr.port());

    // Pasted again: nothing new, the same key sent again.
    let second = paste(&mut ch, &line, 2).await;
    assert!(second.contains("Postern: enrolled"), "{second}");
    check(&r);
    let posts: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.method == "POST")
        .map(|s| s.body.clone())
        .collect();
    assert_eq!(posts.len(), 2);
    assert_eq!(posts[0], posts[1]);

    // The line that removes everything Postern put on the router (peer, address,
    // firewall, user before its group, interface), itself safe to paste twice.
    let removal = ":do { /interface wireguard peers remove [find where comment=\"postern:peer\"]; /ip address remove [find where comment=\"postern:address\"]; /ip firewall filter remove [find where comment=\"postern:management\"]; /user remove [find where comment=\"postern:user\"]; /user group remove [find where comment=\"postern:group\"]; /interface wireguard remove [find where comment=\"postern:interface\"]; :put \"Postern: removed\" } on-error={ :put \"Postern: removal failed\" }\r";
    assert!(
        surface::Database::routeros_7()
            .unwrap()
            .check_script(removal)
            .is_empty()
    );
    for _ in 0..2 {
        let screen = paste(&mut ch, removal, 1).await;
        assert!(screen.contains("\r\nPostern: removed\r\n"), "{screen}");
    }
    {
        let s = r.router().state();
        assert!(s.wireguard.items.is_empty() && s.wireguard_peers.items.is_empty());
        assert!(s.addresses.items.is_empty());
        assert_eq!(comments(&s.filter.items), ["defconf: drop all"]);
        assert_eq!(comments(&s.users.items), ["system default user"]);
        assert_eq!(s.groups.items.len(), 3);
    }
    assert!(r.router().wireguard().is_empty());
    r.shutdown().await;
}

trait CidrText {
    fn to_string_lossy(&self) -> String;
}

impl CidrText for postern_sim::addr::Cidr {
    fn to_string_lossy(&self) -> String {
        format!("{}/{}", self.addr, self.prefix)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routeros_6_router_says_why_it_stops_and_fetches_nothing() {
    let route: Route = Arc::new(|_| (200, ":put fetched".into()));
    let (server, seen) = http_server(route).await;
    let r = router_with(|o| o.version = "6.49.10".into()).await;
    let (_h, mut ch) = console(&r).await;
    let screen = paste(&mut ch, &enrol_line(server, "x"), 2).await;
    assert!(
        screen.contains("Postern: RouterOS 6 has no WireGuard; add this router in direct mode"),
        "{screen}"
    );
    assert!(seen.lock().unwrap().is_empty());
    // And it has no WireGuard menu at all.
    let screen = paste(&mut ch, "/interface wireguard print\r", 1).await;
    assert!(screen.contains("bad command name wireguard"), "{screen}");
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_errors_are_shown_and_stop_the_paste() {
    let route: Route = Arc::new(|_| (404, "nope".into()));
    let (server, _) = http_server(route).await;
    let r = router().await;
    let (_h, mut ch) = console(&r).await;
    // A non-2xx answer fails the fetch as RouterOS words it; what follows does not run.
    let screen = paste(
        &mut ch,
        &format!("/tool fetch url=\"http://{server}/x\" output=user; :put after\r"),
        1,
    )
    .await;
    assert!(
        screen.contains(&format!(
            "failure: closing connection: <404 Not Found> {} (4)",
            server
        )),
        "{screen}"
    );
    assert!(!screen.contains("\r\nafter\r\n"), "{screen}");
    // A command the router lacks stops the whole line before anything runs.
    let screen = paste(&mut ch, "/user add name=z group=read; /ip route print\r", 1).await;
    assert!(
        screen.contains("bad command name route (line 1 column 34)"),
        "{screen}"
    );
    assert!(r.router().state().users.by_name("z").is_none());
    // RouterOS's refusals of the new menus.
    for (line, message) in [
        (
            "/interface wireguard peers add interface=nowhere public-key=\"x\"",
            "input does not match any value of interface",
        ),
        (
            "/ip address add address=10.9.9.9/24 interface=wg9",
            "input does not match any value of interface",
        ),
        (
            "/ip address add address=nope interface=ether1",
            "invalid value for argument address",
        ),
        (
            "/ip firewall filter add chain=input action=dst-nat",
            "input does not match any value of action",
        ),
        (
            "/ip firewall filter add chain=input place-before=*99",
            "no such item",
        ),
        (
            "/ip service set api port=0",
            "invalid value for argument port",
        ),
        (
            "/system routerboard print",
            "bad command name routerboard (line 1 column 9)",
        ),
        (
            ":put [/system resource get nosuch]",
            "input does not match any value of value-name",
        ),
        ("/import file-name=nosuch.rsc", "failure: no such file"),
    ] {
        let screen = paste(&mut ch, &format!("{line}\r"), 1).await;
        assert!(screen.contains(message), "{line}: {screen}");
    }
    r.shutdown().await;
}

#[tokio::test]
async fn wireguard_interfaces_make_their_own_keys_and_refuse_bad_ones() {
    let r = router().await;
    let sys = postern_sim::Caller::system();
    let run = |line: &str| {
        let r = r.router().clone();
        let sys = sys.clone();
        let line = line.to_string();
        async move { postern_sim::script::run_text(&r, &sys, &line, &mut Vec::new()).await }
    };
    let (out, result) = run(":local id [/interface wireguard add name=wg1]; :put [/interface wireguard get $id public-key]; :put [/interface wireguard get $id listen-port]").await;
    assert_eq!(result, Ok(()));
    let mut lines = out.lines();
    let public = lines.next().unwrap();
    assert_eq!(lines.next(), Some("13231"));
    let item = r.router().state().wireguard.by_name("wg1").unwrap().clone();
    let private = postern_sim::state::decode_key(item.get("private-key").unwrap()).unwrap();
    assert_eq!(
        postern_sim::state::encode_key(&postern_sim::state::public_key(&private)),
        public
    );
    // A given key is kept; its public key follows.
    let key = postern_sim::state::encode_key(&[7u8; 32]);
    let (_, result) = run(&format!("/interface wireguard add name=wg2 private-key=\"{key}\" listen-port=51821 mtu=1400 comment=two")).await;
    assert_eq!(result, Ok(()));
    let wg = r.router().wireguard();
    assert_eq!(wg[1].private_key, [7u8; 32]);
    assert_eq!((wg[1].listen_port, wg[1].mtu), (51821, 1400));
    for (line, message) in [
        (
            "/interface wireguard add name=wg1",
            "failure: already have interface with such name",
        ),
        (
            "/interface wireguard add name=wg3 private-key=\"short\"",
            "invalid value for argument private-key",
        ),
        (
            "/interface wireguard add name=wg3 listen-port=70000",
            "invalid value for argument listen-port",
        ),
        (
            &format!(
                "/interface wireguard peers add interface=wg1 public-key=\"{key}\" allowed-address=10.0.0.0/33"
            ),
            "invalid value for argument allowed-address",
        ),
        (
            "/interface wireguard peers add interface=wg1 public-key=\"bad\"",
            "invalid value for argument public-key",
        ),
    ] {
        let (_, result) = run(line).await;
        assert_eq!(
            result,
            Err(postern_sim::script::ScriptError(message.into())),
            "{line}"
        );
    }
    let (_, result) = run(&format!(
        "/interface wireguard peers add interface=wg1 public-key=\"{key}\""
    ))
    .await;
    assert_eq!(result, Ok(()));
    let (_, result) = run(&format!(
        "/interface wireguard peers add interface=wg1 public-key=\"{key}\""
    ))
    .await;
    assert_eq!(
        result,
        Err(postern_sim::script::ScriptError(
            "failure: peer with such public key already exists".into()
        ))
    );
    // Keys are shown only with the `sensitive` policy.
    let plain = postern_sim::Caller {
        user: "viewer".into(),
        policies: postern_sim::state::Policies::parse("read,api,test").unwrap(),
    };
    let (out, result) = postern_sim::script::run_text(
        r.router(),
        &plain,
        ":put ([/interface wireguard get wg1 private-key] . \"|\" . [/interface wireguard get wg1 public-key])",
        &mut Vec::new(),
    )
    .await;
    assert_eq!((out, result), (format!("|{public}\n"), Ok(())));
    // Over the API the new menus print with RouterOS's property names.
    let mut api = Raw::admin(r.api_addr).await;
    let rows = api.rows(&["/interface/wireguard/print", "?name=wg1"]).await;
    assert_eq!(get(&rows[0], "public-key"), Some(public));
    let rows = api.rows(&["/ip/service/print", "?name=api"]).await;
    assert_eq!(
        get(&rows[0], "port"),
        Some(r.api_addr.port().to_string().as_str())
    );
    r.shutdown().await;
}

/// A CA, and a server certificate it signed for 127.0.0.1.
fn ca_and_server() -> (String, rustls::ServerConfig) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    (ca_cert.pem(), config)
}

async fn https_server(config: rustls::ServerConfig) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let route: Route = Arc::new(|s: &Seen| (200, format!("hello {}", s.path)));
    let log = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, route, log) = (acceptor.clone(), route.clone(), log.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let (read, mut write) = tokio::io::split(tls);
                serve_one(BufReader::new(read), &mut write, &route, &log).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_over_https_checks_the_certificate_against_the_routers_trust_store() {
    let (ca_pem, config) = ca_and_server();
    let server = https_server(config).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca_pem).unwrap();
    let trusting = router_with(|o| o.trust_pem = Some(ca_path.clone())).await;
    let bare = router().await;
    let sys = postern_sim::Caller::system();
    let fetch = |check: &str| {
        format!(
            ":local r [/tool fetch url=\"https://{server}/enroll/abc\" check-certificate={check} output=user as-value]; :put ($r->\"data\")"
        )
    };
    for check in ["yes-without-crl", "yes", "no"] {
        let (out, result) =
            postern_sim::script::run_text(trusting.router(), &sys, &fetch(check), &mut vec![])
                .await;
        assert_eq!(
            (out.as_str(), result),
            ("hello /enroll/abc\n", Ok(())),
            "{check}"
        );
    }
    // Without the CA the certificate is refused, unless checking is off.
    for check in ["yes-without-crl", "yes"] {
        let (_, result) =
            postern_sim::script::run_text(bare.router(), &sys, &fetch(check), &mut vec![]).await;
        assert_eq!(
            result,
            Err(postern_sim::script::ScriptError(
                "failure: SSL: ssl: no trusted CA certificate found (6)".into()
            ))
        );
    }
    let (out, result) =
        postern_sim::script::run_text(bare.router(), &sys, &fetch("no"), &mut vec![]).await;
    assert_eq!((out.as_str(), result), ("hello /enroll/abc\n", Ok(())));
    // To a file, then read back through /file.
    let (out, result) = postern_sim::script::run_text(
        trusting.router(),
        &sys,
        &format!("/tool fetch url=\"https://{server}/f.rsc\" check-certificate=yes dst-path=f.rsc as-value; :put [/file get [/file find name=\"f.rsc\"] contents]"),
        &mut vec![],
    )
    .await;
    assert_eq!((out.as_str(), result), ("hello /f.rsc\n", Ok(())));
    trusting.shutdown().await;
    bare.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_methods_headers_and_limits() {
    let big = "x".repeat(70 * 1024);
    let route: Route = Arc::new(move |s: &Seen| match s.path.as_str() {
        "/big" => (200, big.clone()),
        _ => (200, format!("{} {}", s.method, s.body)),
    });
    let (server, seen) = http_server(route).await;
    let r = router().await;
    let sys = postern_sim::Caller::system();
    for method in ["get", "post", "put", "delete"] {
        let (out, result) = postern_sim::script::run_text(
            r.router(),
            &sys,
            &format!(":put ([/tool fetch url=\"http://{server}/m\" http-method={method} http-data=\"d\" http-header-field=\"X-One: 1,X-Two: 2\" output=user as-value]->\"data\")"),
            &mut vec![],
        )
        .await;
        assert_eq!(result, Ok(()));
        assert_eq!(out, format!("{} d\n", method.to_uppercase()));
    }
    let last = seen.lock().unwrap().last().cloned().unwrap();
    assert!(
        last.headers.contains(&("x-two".into(), "2".into())),
        "{last:?}"
    );
    // Over the API: one row with the values.
    let mut api = Raw::admin(r.api_addr).await;
    let url = format!("=url=http://{server}/api");
    let rows = api
        .rows(&[
            "/tool/fetch",
            &url,
            "=http-method=post",
            "=http-data=z",
            "=output=user",
        ])
        .await;
    assert_eq!(get(&rows[0], "status"), Some("finished"));
    assert_eq!(get(&rows[0], "data"), Some("POST z"));
    let url = format!("=url=http://{server}/big");
    assert_eq!(
        api.trap(&["/tool/fetch", &url, "=output=user"]).await.0,
        "failure: max data size reached"
    );
    // output=user keeps at most 64 KiB.
    let (_, result) = postern_sim::script::run_text(
        r.router(),
        &sys,
        &format!("/tool fetch url=\"http://{server}/big\" output=user as-value"),
        &mut vec![],
    )
    .await;
    assert_eq!(
        result,
        Err(postern_sim::script::ScriptError(
            "failure: max data size reached".into()
        ))
    );
    // Nothing listening.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let (_, result) = postern_sim::script::run_text(
        r.router(),
        &sys,
        &format!("/tool fetch url=\"http://{closed}/\" output=none"),
        &mut vec![],
    )
    .await;
    assert_eq!(
        result,
        Err(postern_sim::script::ScriptError(
            "failure: connection refused".into()
        ))
    );
    r.shutdown().await;
}

#[tokio::test]
async fn a_multi_line_paste_runs_once_its_brackets_close() {
    let r = router().await;
    let (_h, mut ch) = console(&r).await;
    // Three lines, one statement: the console waits for the closing brace, then runs
    // it once (one prompt for the whole paste).
    let screen = paste(
        &mut ch,
        "# a comment with a { in it\r:if ([:len \"ab\"] = 2) do={\r  :put \"multi $[:len \"abc\"]\"\r}\r",
        2,
    )
    .await;
    assert!(screen.contains("multi 3\r\n"), "{screen:?}");
    assert_eq!(screen.matches("multi 3").count(), 1, "{screen:?}");
    // A path line moves the console; the prompt says where.
    ch.data(&b"/ip firewall filter\r"[..]).await.unwrap();
    let mut screen = String::new();
    tokio::time::timeout(TIMEOUT, async {
        while !screen.contains("/ip firewall filter> ") {
            match ch.wait().await {
                Some(ChannelMsg::Data { data }) => screen.push_str(&String::from_utf8_lossy(&data)),
                Some(_) => {}
                None => break,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{screen:?}"));
    ch.data(&b"add chain=input action=drop comment=typed\r"[..])
        .await
        .unwrap();
    eventually("the relative add ran", || {
        r.router().state().filter.items.len() == 1
    })
    .await;
    r.shutdown().await;
}
