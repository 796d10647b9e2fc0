//! The one test harness: `spawn_app()` starts Latchkey on port 0 with its own
//! data dir and returns a client bound to the first admin token.

use std::path::PathBuf;

use reqwest::{Method, RequestBuilder, Response};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

/// The PostgreSQL URL when the suite runs on PostgreSQL
/// (`LATCHKEY_TEST_BACKEND=postgres`; URL from `LATCHKEY_TEST_POSTGRES_URL`).
pub fn postgres_url() -> Option<String> {
    (std::env::var("LATCHKEY_TEST_BACKEND").as_deref() == Ok("postgres")).then(|| {
        std::env::var("LATCHKEY_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    })
}

/// The PostgreSQL schema of the data dir `dir` (one per data dir, so a test
/// that restarts over its dir finds its data again).
fn schema_of(dir: &std::path::Path) -> String {
    let name = dir.file_name().unwrap().to_string_lossy().to_lowercase();
    let safe: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("t_{safe}")
}

/// A test server's data dir. On PostgreSQL it owns the schema named after
/// it too, and drops it with the dir, so a run leaves no schema behind.
pub struct DataDir {
    dir: tempfile::TempDir,
    owns_schema: bool,
}

impl DataDir {
    pub fn new() -> DataDir {
        DataDir {
            dir: tempfile::tempdir().unwrap(),
            owns_schema: postgres_url().is_some(),
        }
    }

    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let Some(url) = postgres_url().filter(|_| self.owns_schema) else {
            return;
        };
        let schema = schema_of(self.dir.path());
        // Drop runs inside the test's runtime, which cannot be blocked on:
        // the statement runs on a thread and runtime of its own. A server
        // still running over the schema holds no lock between requests; the
        // lock timeout bounds the wait if it does, leaving the schema.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let mut config: tokio_postgres::Config =
                    url.parse().map_err(std::io::Error::other)?;
                config.connect_timeout(std::time::Duration::from_secs(5));
                let (client, connection) = config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(std::io::Error::other)?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!(
                        "SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS {schema} CASCADE"
                    ))
                    .await
                    .map_err(std::io::Error::other)
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("note: the test schema was left behind: {e}");
        }
    }
}

/// The configuration every test server runs with, over `dir`: the backend
/// the suite runs on (its own PostgreSQL schema, see [`DataDir`]), loopback
/// fake providers allowed, and short outbound timeouts.
pub fn test_config(dir: &std::path::Path) -> server::Config {
    server::Config {
        database_url: postgres_url(),
        database_schema: postgres_url().map(|_| schema_of(dir)),
        public_url: Some(PUBLIC_URL.into()),
        allow_outbound: vec!["127.0.0.1".into()],
        outbound_timeout: std::time::Duration::from_millis(1500),
        // The access matrix sends many bad tokens on purpose; the limit has a test of its own.
        auth_failure_limit: 0,
        ..server::Config::new("127.0.0.1:0".parse().unwrap(), dir.to_path_buf())
    }
}

/// Whether the suite runs on the embedded SQLite (whose files some tests read directly).
pub fn on_sqlite() -> bool {
    postgres_url().is_none()
}

/// The public base URL the test servers build callback URLs from.
pub const PUBLIC_URL: &str = "https://hooks.example.test";

pub struct TestApp {
    pub base: String,
    pub token: String,
    pub client: reqwest::Client,
    pub dir: DataDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    serving: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    let dir = DataDir::new();
    spawn_app_in(dir, None).await.map_err(|(e, _)| e).unwrap()
}

/// Starts over an existing data dir; on failure the dir is handed back with the error.
pub async fn spawn_app_in(
    dir: DataDir,
    key: Option<&str>,
) -> Result<TestApp, (anyhow::Error, DataDir)> {
    let config = server::Config {
        master_key: key.map(|k| SecretString::from(k.to_string())),
        ..test_config(dir.path())
    };
    spawn_with(dir, config).await
}

/// Starts a server whose configuration `change` adjusts from the test default.
pub async fn spawn_app_configured(change: impl FnOnce(&mut server::Config)) -> TestApp {
    let dir = DataDir::new();
    let mut config = test_config(dir.path());
    change(&mut config);
    spawn_with(dir, config).await.map_err(|(e, _)| e).unwrap()
}

async fn spawn_with(
    dir: DataDir,
    config: server::Config,
) -> Result<TestApp, (anyhow::Error, DataDir)> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (report, serving) = match server::start(config, async move {
        let _ = stopped.await;
    })
    .await
    {
        Ok(started) => started,
        Err(e) => return Err((e, dir)),
    };
    let token = report
        .first_admin_token
        .as_ref()
        .map(|t| t.expose_secret().to_string())
        .unwrap_or_default();
    Ok(TestApp {
        base: format!("http://{}", report.addr),
        token,
        client: reqwest::Client::new(),
        dir,
        stop: Some(stop),
        serving: Some(tokio::spawn(serving)),
    })
}

/// A second server over the same database as `of` (PostgreSQL only): its
/// own data dir, `of`'s schema and master key, and `of`'s admin token,
/// which works on it because tokens live in the database.
pub async fn spawn_replica(of: &TestApp) -> TestApp {
    let key = std::fs::read_to_string(of.dir.path().join("master.key")).unwrap();
    // The schema is `of`'s, and `of`'s dir drops it.
    let dir = DataDir {
        dir: tempfile::tempdir().unwrap(),
        owns_schema: false,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = server::Config {
        master_key: Some(SecretString::from(key.trim().to_string())),
        database_schema: test_config(of.dir.path()).database_schema,
        ..test_config(dir.path())
    };
    let (report, serving) = server::start(config, async move {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    assert!(
        report.first_admin_token.is_none(),
        "a replica finds the tenant the first server made"
    );
    TestApp {
        base: format!("http://{}", report.addr),
        token: of.token.clone(),
        client: reqwest::Client::new(),
        dir,
        stop: Some(stop),
        serving: Some(tokio::spawn(serving)),
    }
}

impl TestApp {
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("latchkey.db")
    }

    /// Runs SQL on the server's database behind its back, for a state the
    /// API cannot make: on the SQLite file, or in the test's PostgreSQL
    /// schema.
    pub async fn execute_sql(&self, sql: &str) {
        match postgres_url() {
            None => {
                let db = rusqlite::Connection::open(self.db_path()).unwrap();
                db.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
                db.execute_batch(sql).unwrap();
            }
            Some(url) => {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(connection);
                let schema = schema_of(self.dir.path());
                client
                    .batch_execute(&format!("SET search_path TO {schema}; {sql}"))
                    .await
                    .unwrap();
            }
        }
    }

    pub fn req(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
    }

    pub async fn get(&self, path: &str) -> Response {
        self.req(Method::GET, path, &self.token)
            .send()
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str, body: &Value) -> Response {
        self.req(Method::POST, path, &self.token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Creates a credential as the admin and returns its JSON.
    pub async fn create(&self, body: &Value) -> Value {
        let res = self.post("/v1/credentials", body).await;
        let status = res.status();
        let json: Value = res.json().await.unwrap();
        assert_eq!(status, 201, "{json}");
        json
    }

    /// A token of the given role in the admin's tenant.
    pub async fn token_with_role(&self, role: &str) -> String {
        let res = self
            .post(
                "/v1/tokens",
                &json!({ "name": format!("{role} token"), "role": role }),
            )
            .await;
        assert_eq!(res.status(), 201);
        res.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Stops the server and waits until it has drained.
    pub async fn stop(mut self) -> DataDir {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.serving.take() {
            h.await.unwrap().unwrap();
        }
        self.dir
    }
}

pub fn twilio_key(seed: char) -> String {
    std::iter::repeat_n(seed, 28)
        .chain("WXYZ".chars())
        .collect()
}

/// A valid Twilio credential body.
pub fn twilio(name: &str, key: &str) -> Value {
    json!({
        "name": name,
        "description": "SMS for the support team",
        "integration": "twilio",
        "auth_type": "api_key",
        "api_key": key,
        "scopes": ["messaging"],
        // No real provider is reachable from the tests; validation has its own tests.
        "validate": false,
        "config_params": [
            { "key": "account_sid", "value": format!("AC{}", "0123456789abcdef".repeat(2)) },
            { "key": "api_key_sid", "value": format!("SK{}", "fedcba9876543210".repeat(2)) },
        ],
    })
}

pub fn stripe(name: &str) -> Value {
    json!({
        "name": name,
        "integration": "stripe",
        "api_key": "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
        "validate": false,
    })
}

/// Field names of a problem's `errors`.
pub fn error_fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|e| e["field"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}
