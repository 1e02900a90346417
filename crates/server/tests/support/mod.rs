//! A real server for the contract and limits tests: 127.0.0.1:0, a temporary SQLite
//! store, one organisation with an admin token, stopped by `stop`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use postern_server as server;
use serde_json::Value;
use server::config::{RegionConfig, ServerConfig};

use crate::harness::{Ctx, Db};

pub const METRICS_TOKEN: &str = "metrics-token-for-the-contract";

/// A running server and what it needs.
pub struct Server {
    pub store: store::Store,
    pub org: domain::OrgId,
    pub base: String,
    pub http: reqwest::Client,
    pub admin: String,
    pub spare_token_id: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _ctx: Ctx,
    _dir: tempfile::TempDir,
}

impl Server {
    /// The URL of the server's database.
    pub fn database_url(&self) -> &str {
        &self._ctx.url
    }
}

pub async fn token(
    store: &store::Store,
    org: domain::OrgId,
    role: domain::Role,
    name: &str,
) -> (String, String) {
    let secret = server::auth::generate_token();
    let t = store
        .create_api_token(store::NewApiToken {
            org_id: org,
            name: name.into(),
            role,
            token_hash: server::auth::hash_token(&secret),
            created_by: None,
            expires_at: None,
        })
        .await
        .unwrap();
    (secret, t.id.to_string())
}

/// The configuration the tests start from: lab mode (the caller, on loopback, is a
/// valid default `allow_from`), one region on 127.0.0.1.
fn config(dir: &std::path::Path, url: &str) -> ServerConfig {
    ServerConfig {
        data_dir: dir.to_owned(),
        database_url: Some(url.to_owned()),
        lab_mode: true,
        metrics_token: Some(server::config::Secret::new(METRICS_TOKEN)),
        regions: vec![RegionConfig {
            port_min: 20000,
            port_max: 60000,
            ..RegionConfig::local()
        }],
        ..ServerConfig::default()
    }
}

impl Server {
    /// A server on SQLite with the tests' configuration as `configure` changes it.
    pub async fn start(configure: impl FnOnce(&mut ServerConfig)) -> Self {
        Self::start_on(Db::Sqlite, configure).await.unwrap()
    }

    /// The same on `db`; `None` when PostgreSQL is unavailable outside CI (the harness
    /// says so loudly).
    pub async fn start_on(db: Db, configure: impl FnOnce(&mut ServerConfig)) -> Option<Self> {
        let ctx = Ctx::new(db).await?;
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path(), &ctx.url);
        configure(&mut config);
        let store = server::bootstrap::open_store(&config).await.unwrap();
        let org = store.create_organisation("tests").await.unwrap();
        let (admin, _) = token(&store, org.id, domain::Role::Admin, "admin").await;
        let (_, spare_token_id) = token(&store, org.id, domain::Role::Viewer, "spare").await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let store_handle = store.clone();
        let state = server::AppState::new(store, config, Arc::new(server::SystemClock));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server::run(listener, state, async {
            let _ = rx.await;
        }));
        Some(Self {
            store: store_handle,
            org: org.id,
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            admin,
            spare_token_id,
            shutdown: Some(tx),
            task: Some(task),
            _ctx: ctx,
            _dir: dir,
        })
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        resp.json().await.unwrap()
    }
}
