//! The management tunnel in the store suite (included by `store.rs`): a region's key is
//! made once (the first one wins), its private half sealed at rest; tunnelled routers
//! are created pending at the next free address of the prefix (never the gateway's, the
//! network's or the broadcast's), one address per region even under concurrent
//! creations; enrolment sets a key no other router has; the gateway's peers are the
//! enrolled ones; direct routers are untouched.

use std::net::Ipv4Addr;

use super::*;

fn new_tunnelled(w: &World, name: &str, prefix: &str) -> NewTunnelRouter {
    NewTunnelRouter {
        org_id: w.org,
        site_name: None,
        region_id: w.region.id,
        name: name.into(),
        tunnel_prefix: prefix.parse().unwrap(),
        gateway_address: "100.64.0.1".parse().unwrap(),
        api_port: 8728,
        ssh_port: 22,
        winbox_port: 8291,
        username: "postern".into(),
        password: format!("pw-of-{name}"),
    }
}

const KEY_A: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
const KEY_B: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

async fn tunnels(ctx: &Ctx) {
    let s = &ctx.store;
    let w = world(s).await;

    // The region's key: made once; a second attempt keeps the first.
    assert_eq!(s.region_tunnel(w.region.id).await.unwrap(), None);
    let made = s
        .ensure_region_tunnel(w.region.id, &Secret::new("private-one"), "public-one")
        .await
        .unwrap();
    assert_eq!(made.public_key, "public-one");
    let again = s
        .ensure_region_tunnel(w.region.id, &Secret::new("private-two"), "public-two")
        .await
        .unwrap();
    assert_eq!(again, made);
    assert_eq!(
        s.region_tunnel_private_key(w.region.id)
            .await
            .unwrap()
            .expose(),
        "private-one"
    );
    let raw = ctx
        .raw_bytes(
            "SELECT private_key FROM region_tunnels WHERE region_id = $1",
            &w.region.id.to_string(),
        )
        .await;
    assert!(
        !raw.windows(11).any(|x| x == b"private-one"),
        "plaintext at rest"
    );
    // Another key cannot open it.
    let other = ctx.reopen([9u8; 32]).await;
    assert!(other.region_tunnel_private_key(w.region.id).await.is_err());
    other.close().await;
    assert!(is_not_found(
        s.ensure_region_tunnel(RegionId::new(), &Secret::new("p"), "q")
            .await
    ));

    // The existing direct routers are direct, with no key.
    let direct = s.get_router(w.org, w.router.id).await.unwrap();
    assert_eq!(direct.reach, Reach::Direct);
    assert_eq!(direct.tunnel_public_key, None);
    // The direct router's address (100.64.0.2) does not count for tunnelled routers.
    let gw: Ipv4Addr = "100.64.0.1".parse().unwrap();
    let prefix = "100.64.0.0/29".parse().unwrap();
    assert_eq!(
        s.next_tunnel_address(w.region.id, prefix, gw)
            .await
            .unwrap(),
        Ipv4Addr::new(100, 64, 0, 2)
    );

    // Pending tunnelled routers, at .2, .3, ...; the gateway's .1 is skipped.
    let a = s
        .create_tunnel_router(new_tunnelled(&w, "far-a", "100.64.0.0/29"))
        .await
        .unwrap();
    assert_eq!(a.reach, Reach::Tunnel);
    assert_eq!(a.tunnel_public_key, None);
    assert_eq!(a.tunnel_address.to_string(), "100.64.0.2");
    assert_eq!(
        s.router_password(a.id).await.unwrap().expose(),
        "pw-of-far-a"
    );
    assert_eq!(s.get_site(w.org, a.site_id).await.unwrap().0.name, "far-a");
    let b = s
        .create_tunnel_router(new_tunnelled(&w, "far-b", "100.64.0.0/29"))
        .await
        .unwrap();
    assert_eq!(b.tunnel_address.to_string(), "100.64.0.3");
    // A duplicate name is refused as for any router, and takes no address.
    assert!(
        conflict(
            s.create_tunnel_router(new_tunnelled(&w, "far-a", "100.64.0.0/29"))
                .await
        )
        .contains("far-a")
    );
    // Concurrent creations get distinct addresses; the /29 then holds .2 to .6 and no more.
    let mut tasks = Vec::new();
    for i in 0..4 {
        let s = s.clone();
        let n = new_tunnelled(&w, &format!("far-c{i}"), "100.64.0.0/29");
        tasks.push(tokio::spawn(async move { s.create_tunnel_router(n).await }));
    }
    let mut made = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => made.push(r.tunnel_address),
            Err(StoreError::Conflict(m)) => {
                assert!(m.contains("no free address"), "{m}");
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((made.len(), refused), (3, 1));
    let mut all: Vec<String> = made.iter().map(|a| a.to_string()).collect();
    all.sort();
    assert_eq!(all, ["100.64.0.4", "100.64.0.5", "100.64.0.6"]);
    assert!(
        conflict(
            s.next_tunnel_address(w.region.id, "100.64.0.0/29".parse().unwrap(), gw)
                .await
        )
        .contains("100.64.0.0/29")
    );
    // Pending routers are no peers.
    assert!(s.list_tunnel_peers(w.region.id).await.unwrap().is_empty());

    // Enrolment: the key is set; the same key again is fine; another router's is refused.
    let a = s.set_router_tunnel_key(a.id, KEY_A).await.unwrap();
    assert_eq!(a.tunnel_public_key.as_deref(), Some(KEY_A));
    s.set_router_tunnel_key(a.id, KEY_A).await.unwrap();
    assert!(conflict(s.set_router_tunnel_key(b.id, KEY_A).await).contains("public key"));
    assert_eq!(
        s.get_router(w.org, b.id).await.unwrap().tunnel_public_key,
        None
    );
    // A direct router or an unknown one cannot enrol.
    assert!(is_not_found(
        s.set_router_tunnel_key(w.router.id, KEY_B).await
    ));
    assert!(is_not_found(
        s.set_router_tunnel_key(RouterId::new(), KEY_B).await
    ));
    s.set_router_tunnel_key(b.id, KEY_B).await.unwrap();
    let peers = s.list_tunnel_peers(w.region.id).await.unwrap();
    assert_eq!(
        peers
            .iter()
            .map(|p| (
                p.router_id,
                p.public_key.as_str(),
                p.tunnel_address.to_string()
            ))
            .collect::<Vec<_>>(),
        [
            (a.id, KEY_A, "100.64.0.2".to_owned()),
            (b.id, KEY_B, "100.64.0.3".to_owned())
        ]
    );
    assert!(
        s.list_tunnel_peers(RegionId::new())
            .await
            .unwrap()
            .is_empty()
    );

    // A router's deletion frees its address for the next one.
    s.delete_router(w.org, a.id).await.unwrap();
    let d = s
        .create_tunnel_router(new_tunnelled(&w, "far-d", "100.64.0.0/29"))
        .await
        .unwrap();
    assert_eq!(d.tunnel_address.to_string(), "100.64.0.2");
    // The database itself refuses two tunnelled routers at one address in a region.
    let clash = ctx
        .try_exec(&format!(
            "UPDATE routers SET tunnel_address = '100.64.0.3' WHERE id = '{}'",
            d.id
        ))
        .await;
    assert!(clash.is_err(), "{clash:?}");
}
both!(tunnel_keys_addresses_and_peers, tunnels);
