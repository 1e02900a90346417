//! Regional gateways in the store suite (included by `store.rs`): a join token joins
//! once, before it expires, and never after its gateway is removed; concurrent joins
//! with one token give one gateway; a later join for the region replaces the gateway it
//! had; the control CA is made once and its key sealed at rest.

use domain::GatewayId;

use super::*;

fn token_hash(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn facts(name: &str) -> JoinedGateway {
    JoinedGateway {
        at: t(0),
        from: Some("203.0.113.9".parse().unwrap()),
        control_address: format!("{name}.example.net:7443"),
        tunnel_endpoint: format!("{name}.example.net:51820"),
        entry_host: format!("{name}.example.net"),
        wireguard_public_key: "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=".into(),
        certificate_pem: format!("-----BEGIN CERTIFICATE-----\n{name}\n"),
    }
}

fn new_gateway(region: RegionId, n: u8, expires_at: DateTime<Utc>) -> NewGateway {
    NewGateway {
        id: GatewayId::new(),
        region_id: region,
        token_hash: token_hash(n),
        created_by: "admin".into(),
        at: t(0),
        expires_at,
    }
}

async fn gateways(ctx: &Ctx) {
    let s = &ctx.store;
    let w = world(s).await;

    // Pending: listed, not live; an unknown region is NotFound.
    let first = s
        .add_gateway(new_gateway(w.region.id, 1, t(60)))
        .await
        .unwrap();
    assert!(!first.live());
    assert_eq!(s.list_gateways().await.unwrap(), vec![first.clone()]);
    assert!(is_not_found(
        s.add_gateway(new_gateway(RegionId::new(), 2, t(60))).await
    ));

    // Wrong, malformed and expired tokens are refused alike, and change nothing.
    for (hash, at) in [
        (token_hash(9), t(1)),
        ("nope".to_owned(), t(1)),
        (token_hash(1), t(60)),
    ] {
        let refused = s.join_gateway(&hash, at, |_| Ok(facts("x"))).await.unwrap();
        assert!(matches!(refused, GatewayJoin::Refused), "{hash} at {at}");
    }
    assert!(!s.get_gateway(first.id).await.unwrap().live());

    // Joined once: the certificate is made for the gateway's own id.
    let mut seen = None;
    let joined = s
        .join_gateway(&token_hash(1), t(1), |id| {
            seen = Some(id);
            Ok(facts("eu1"))
        })
        .await
        .unwrap();
    let GatewayJoin::Joined { gateway, replaced } = joined else {
        panic!("not joined");
    };
    assert_eq!(seen, Some(first.id));
    assert_eq!(replaced, None);
    assert!(gateway.live());
    let j = gateway.joined.clone().unwrap();
    assert_eq!(j.control_address, "eu1.example.net:7443");
    assert_eq!(j.from, Some("203.0.113.9".parse().unwrap()));
    assert!(matches!(
        s.join_gateway(&token_hash(1), t(2), |_| Ok(facts("again")))
            .await
            .unwrap(),
        GatewayJoin::Refused
    ));

    // A second gateway for the region replaces the first when it joins.
    let second = s
        .add_gateway(new_gateway(w.region.id, 3, t(60)))
        .await
        .unwrap();
    let GatewayJoin::Joined { replaced, .. } = s
        .join_gateway(&token_hash(3), t(3), |_| Ok(facts("eu2")))
        .await
        .unwrap()
    else {
        panic!("not joined");
    };
    assert_eq!(replaced, Some(first.id));
    let live: Vec<GatewayId> = s
        .list_gateways()
        .await
        .unwrap()
        .into_iter()
        .filter(|g| g.live())
        .map(|g| g.id)
        .collect();
    assert_eq!(live, vec![second.id]);
    assert!(s.get_gateway(first.id).await.unwrap().removed_at.is_some());

    // Concurrent joins with one token: one gateway.
    let third = s
        .add_gateway(new_gateway(w.region.id, 4, t(60)))
        .await
        .unwrap();
    let hash = token_hash(4);
    let joins = futures::future::join_all((0..6).map(|n| {
        let hash = hash.clone();
        async move {
            s.join_gateway(&hash, t(4), move |_| Ok(facts(&format!("c{n}"))))
                .await
        }
    }))
    .await;
    let won = joins
        .into_iter()
        .filter(|j| matches!(j, Ok(GatewayJoin::Joined { .. })))
        .count();
    assert_eq!(won, 1);
    assert!(s.get_gateway(third.id).await.unwrap().live());

    // Removed: gone from the list; a pending one's token no longer joins.
    let pending = s
        .add_gateway(new_gateway(w.region.id, 5, t(60)))
        .await
        .unwrap();
    assert!(s.remove_gateway(pending.id, t(5)).await.unwrap());
    assert!(!s.remove_gateway(pending.id, t(6)).await.unwrap());
    assert!(matches!(
        s.join_gateway(&token_hash(5), t(6), |_| Ok(facts("late")))
            .await
            .unwrap(),
        GatewayJoin::Refused
    ));
    assert!(
        s.list_gateways()
            .await
            .unwrap()
            .iter()
            .all(|g| g.id != pending.id)
    );

    // The CA: made once (the first wins), its key sealed at rest.
    assert!(s.control_ca().await.unwrap().is_none());
    let (cert, key) = s
        .ensure_control_ca(|| Ok(("CERT-ONE".into(), Secret::new("KEY-ONE-PEM"))))
        .await
        .unwrap();
    assert_eq!((cert.as_str(), key.expose()), ("CERT-ONE", "KEY-ONE-PEM"));
    let (cert, key) = s
        .ensure_control_ca(|| Ok(("CERT-TWO".into(), Secret::new("KEY-TWO-PEM"))))
        .await
        .unwrap();
    assert_eq!((cert.as_str(), key.expose()), ("CERT-ONE", "KEY-ONE-PEM"));
    let raw = ctx
        .raw_bytes(
            "SELECT private_key FROM control_ca WHERE id = CAST($1 AS INTEGER)",
            "1",
        )
        .await;
    assert!(
        !raw.windows(7).any(|w| w == b"KEY-ONE"),
        "the CA key is sealed"
    );
}
both!(gateways_join_once_and_replace, gateways);
