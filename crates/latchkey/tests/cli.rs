//! End-to-end tests of the CLI client: each test starts a real server
//! (`latchkey serve` on a free port, in a temporary data dir) and drives it
//! with the `latchkey` binary, as a user would.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command, Output, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_latchkey");

/// A Twilio API key secret: 32 letters and digits.
const KEY_1: &str = "0123456789abcdefghijklmnopqrWXYZ";
/// Another one, for the rotation.
const KEY_2: &str = "ZYXWvutsrqponmlkjihgfedcba987654";
/// A Twilio Auth Token: 32 hex digits.
const WEBHOOK_SECRET: &str = "feedfacefeedfacefeedfacefeedface";

fn account_sid() -> String {
    format!("AC{}", "0123456789abcdef".repeat(2))
}

fn api_key_sid() -> String {
    format!("SK{}", "fedcba9876543210".repeat(2))
}

/// A running server; killed when dropped.
struct Server {
    child: Child,
    /// Kept open so the server never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
    _data_dir: tempfile::TempDir,
    url: String,
    token: String,
}

impl Server {
    fn start() -> Server {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir.path())
            .env_remove("LATCHKEY_MASTER_KEY")
            .env_remove("LATCHKEY_PUBLIC_URL")
            .env("LATCHKEY_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start latchkey serve");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let (mut url, mut token) = (None, None);
        let mut banner = String::new();
        loop {
            let mut line = String::new();
            let n = stdout.read_line(&mut line).expect("read the banner");
            if n == 0 {
                let _ = child.kill();
                panic!("the server exited before it was ready; banner:\n{banner}");
            }
            banner.push_str(&line);
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("API") {
                let api = rest.split_whitespace().next().expect("API URL");
                url = Some(api.to_string());
            } else if let Some(t) = line.strip_prefix("LATCHKEY_TOKEN=") {
                token = Some(t.to_string());
            } else if line.starts_with("ready in") {
                break;
            }
        }
        Server {
            child,
            _stdout: stdout,
            _data_dir: data_dir,
            url: url.unwrap_or_else(|| panic!("no API line in the banner:\n{banner}")),
            token: token.unwrap_or_else(|| panic!("no first admin token in the banner:\n{banner}")),
        }
    }

    /// Runs `latchkey ARGS` as the operator's admin, with `stdin` piped in
    /// (or an empty stdin).
    fn cli(&self, args: &[&str], stdin: Option<&str>) -> Run {
        self.cli_as(&self.token, args, stdin)
    }

    fn cli_as(&self, token: &str, args: &[&str], stdin: Option<&str>) -> Run {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("LATCHKEY_URL", &self.url)
            .env("LATCHKEY_TOKEN", token);
        run(cmd, stdin)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The outcome of one CLI run.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts success and returns stdout parsed as JSON.
    fn json(&self) -> Value {
        self.ok();
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }

    fn ok(&self) -> &Run {
        assert_eq!(
            self.code,
            Some(0),
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    fn fails(&self) -> &Run {
        assert_eq!(
            self.code,
            Some(1),
            "expected exit code 1\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    fn contains_nowhere(&self, needle: &str) {
        assert!(
            !self.stdout.contains(needle) && !self.stderr.contains(needle),
            "{needle:?} leaked\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
    }
}

fn run(mut cmd: Command, stdin: Option<&str>) -> Run {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run latchkey");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("wait for latchkey");
    Run {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

fn create_twilio(server: &Server, name: &str, account_sid: &str, stdin: &str) -> Run {
    let account = format!("account_sid={account_sid}");
    let key_sid = format!("api_key_sid={}", api_key_sid());
    server.cli(
        &[
            "credentials",
            "create",
            "--name",
            name,
            "--integration",
            "twilio",
            "--param",
            &account,
            "--param",
            &key_sid,
            "--secret-param",
            "webhook_secret",
            "--scope",
            "messaging",
            // No provider is reachable from the tests: save unverified.
            "--no-validate",
            "--json",
        ],
        Some(stdin),
    )
}

#[test]
fn a_credential_goes_through_its_whole_life() {
    let server = Server::start();

    // Create, the key and then the webhook secret piped on stdin.
    let created = create_twilio(
        &server,
        "Twilio prod",
        &account_sid(),
        &format!("{KEY_1}\n{WEBHOOK_SECRET}\n"),
    );
    created.contains_nowhere(KEY_1);
    created.contains_nowhere(WEBHOOK_SECRET);
    let c = created.json();
    let id = c["id"].as_str().expect("id").to_string();
    assert_eq!(c["name"], "Twilio prod");
    assert_eq!(c["api_key"]["set"], true);
    assert_eq!(c["api_key"]["last4"], "WXYZ");
    assert_eq!(c["scopes"], serde_json::json!(["messaging"]));
    let v1 = c["version"].as_i64().expect("version");

    // It is listed, as JSON and as a table.
    let list = server.cli(&["credentials", "list", "--json"], None).json();
    let ids: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["id"].as_str())
        .collect();
    assert_eq!(ids, [id.as_str()]);
    let table = server.cli(&["credentials", "list"], None);
    table.ok();
    for needle in ["ID", "NAME", "INTEGRATION", "STATUS", &id, "Twilio prod"] {
        assert!(table.stdout.contains(needle), "{needle}:\n{}", table.stdout);
    }

    // Get shows the key as set, never the key itself.
    let got = server.cli(&["credentials", "get", &id, "--json"], None);
    got.contains_nowhere(KEY_1);
    let g = got.json();
    assert_eq!(g["api_key"]["set"], true);
    assert_eq!(g["id"], id.as_str());
    let shown = server.cli(&["credentials", "get", &id], None);
    shown.ok();
    shown.contains_nowhere(KEY_1);
    shown.contains_nowhere(WEBHOOK_SECRET);
    assert!(shown.stdout.contains("set (…WXYZ)"), "{}", shown.stdout);
    assert!(shown.stdout.contains("set (…face)"), "{}", shown.stdout);
    assert!(shown.stdout.contains("/hooks/"), "{}", shown.stdout);

    // Update the description.
    let u = server
        .cli(
            &[
                "credentials",
                "update",
                &id,
                "--description",
                "SMS for prod",
                "--json",
            ],
            None,
        )
        .json();
    assert_eq!(u["description"], "SMS for prod");
    let v2 = u["version"].as_i64().expect("version");
    assert!(v2 > v1, "{v2} > {v1}");

    // Change a plain param: the other params and the stored secret are kept.
    let new_sid = format!("AC{}", "abcdef0123456789".repeat(2));
    let u = server
        .cli(
            &[
                "credentials",
                "update",
                &id,
                "--param",
                &format!("account_sid={new_sid}"),
                "--json",
            ],
            None,
        )
        .json();
    let params = u["config_params"].as_array().expect("params");
    let param = |k: &str| {
        params
            .iter()
            .find(|p| p["key"] == k)
            .unwrap_or_else(|| panic!("{k} is missing: {u}"))
    };
    assert_eq!(param("account_sid")["value"], new_sid.as_str());
    assert_eq!(param("api_key_sid")["value"], api_key_sid().as_str());
    assert_eq!(param("webhook_secret")["value"]["set"], true);
    let v3 = u["version"].as_i64().expect("version");
    assert!(v3 > v2);

    // A secret is never taken as an argument value.
    server
        .cli(
            &[
                "credentials",
                "update",
                &id,
                "--param",
                &format!("webhook_secret={WEBHOOK_SECRET}"),
            ],
            None,
        )
        .fails();

    // Rotate the key, the new one piped on stdin.
    let rotated = server.cli(
        &[
            "credentials",
            "update",
            &id,
            "--rotate-key",
            "--no-validate",
            "--json",
        ],
        Some(&format!("{KEY_2}\n")),
    );
    rotated.contains_nowhere(KEY_2);
    let r = rotated.json();
    assert!(r["version"].as_i64().expect("version") > v3);
    assert_eq!(r["api_key"]["last4"], "7654");
    assert_eq!(r["description"], "SMS for prod");

    // Delete: refused without --yes when nobody can confirm, done with it.
    let refused = server.cli(&["credentials", "delete", &id], None);
    refused.fails();
    assert!(refused.stderr.contains("--yes"), "{}", refused.stderr);
    server.cli(&["credentials", "get", &id], None).ok();
    let deleted = server.cli(&["credentials", "delete", &id, "--yes"], None);
    deleted.ok();
    assert!(deleted.stdout.contains(&id));

    // It is gone.
    let gone = server.cli(&["credentials", "get", &id], None);
    gone.fails();
    assert!(gone.stderr.starts_with("error: "), "{}", gone.stderr);
    assert!(
        gone.stderr.contains("No such credential"),
        "{}",
        gone.stderr
    );
}

#[test]
fn a_validation_error_names_the_field_and_exits_1() {
    let server = Server::start();
    let out = create_twilio(
        &server,
        "Bad",
        "ACnot-a-sid",
        &format!("{KEY_1}\n{WEBHOOK_SECRET}\n"),
    );
    out.fails();
    out.contains_nowhere(KEY_1);
    assert!(out.stderr.starts_with("error: "), "{}", out.stderr);
    // One indented line per field error, naming the field (as the API does:
    // `config_params.account_sid`).
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("  ") && l.contains("account_sid: ")),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "{}", out.stdout);

    // Nothing was stored.
    let list = server.cli(&["credentials", "list", "--json"], None).json();
    assert_eq!(list["items"], serde_json::json!([]));

    // A taken name is reported with the existing credential.
    let first = create_twilio(
        &server,
        "Dup",
        &account_sid(),
        &format!("{KEY_1}\n{WEBHOOK_SECRET}\n"),
    )
    .json();
    let again = create_twilio(
        &server,
        "Dup",
        &account_sid(),
        &format!("{KEY_1}\n{WEBHOOK_SECRET}\n"),
    );
    again.fails();
    assert!(again.stderr.contains("  name: "), "{}", again.stderr);
    assert!(
        again.stderr.contains(first["id"].as_str().expect("id")),
        "{}",
        again.stderr
    );
}

#[test]
fn tokens_are_issued_listed_and_revoked() {
    let server = Server::start();

    let issued = server
        .cli(
            &[
                "tokens", "create", "--name", "ci", "--role", "viewer", "--json",
            ],
            None,
        )
        .json();
    let token_id = issued["id"].as_str().expect("id").to_string();
    let token = issued["token"].as_str().expect("token").to_string();
    assert_eq!(issued["role"], "viewer");
    assert!(token.starts_with("lk_"), "{token}");

    // The human output shows the token once, set apart.
    let human = server.cli(
        &["tokens", "create", "--name", "ops", "--role", "developer"],
        None,
    );
    human.ok();
    assert!(
        human.stdout.contains("    LATCHKEY_TOKEN=lk_"),
        "{}",
        human.stdout
    );

    let list = server.cli(&["tokens", "list", "--json"], None).json();
    let names: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"ci") && names.contains(&"ops"), "{names:?}");
    let table = server.cli(&["tokens", "list"], None);
    table.ok();
    assert!(table.stdout.contains(&token_id), "{}", table.stdout);
    table.contains_nowhere(&token);

    // The new token works, and a viewer may not issue tokens.
    server.cli_as(&token, &["credentials", "list"], None).ok();
    let forbidden = server.cli_as(
        &token,
        &["tokens", "create", "--name", "x", "--role", "admin"],
        None,
    );
    forbidden.fails();
    assert!(
        forbidden.stderr.starts_with("error: "),
        "{}",
        forbidden.stderr
    );

    // Revoked, it no longer does.
    let revoked = server.cli(&["tokens", "revoke", &token_id], None);
    revoked.ok();
    assert!(revoked.stdout.contains(&token_id));
    let refused = server.cli_as(&token, &["credentials", "list"], None);
    refused.fails();
    assert!(refused.stderr.contains("revoked"), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("LATCHKEY_TOKEN"),
        "{}",
        refused.stderr
    );
}

#[test]
fn secrets_come_only_from_stdin_or_a_prompt() {
    let server = Server::start();
    let account = format!("account_sid={}", account_sid());
    let key_sid = format!("api_key_sid={}", api_key_sid());
    let create = [
        "credentials",
        "create",
        "--name",
        "No key",
        "--integration",
        "twilio",
        "--param",
        &account,
        "--param",
        &key_sid,
    ];

    // Stdin is not a terminal and empty: no key, no prompt, nothing created.
    let out = server.cli(&create, None);
    out.fails();
    assert!(out.stderr.contains("stdin"), "{}", out.stderr);
    let out = server.cli(&create, Some(""));
    out.fails();
    assert!(out.stderr.contains("no API key"), "{}", out.stderr);
    // A secret param whose line is missing is refused too.
    let mut with_secret = create.to_vec();
    with_secret.extend(["--secret-param", "webhook_secret"]);
    let out = server.cli(&with_secret, Some(&format!("{KEY_1}\n")));
    out.fails();
    assert!(out.stderr.contains("webhook_secret"), "{}", out.stderr);
    // A declared secret is not accepted as an argument value.
    let mut as_arg = create.to_vec();
    let secret_arg = format!("webhook_secret={WEBHOOK_SECRET}");
    as_arg.extend(["--param", &secret_arg]);
    let out = server.cli(&as_arg, Some(&format!("{KEY_1}\n")));
    out.fails();
    assert!(
        out.stderr.contains("--secret-param webhook_secret"),
        "{}",
        out.stderr
    );

    let list = server.cli(&["credentials", "list", "--json"], None).json();
    assert_eq!(list["items"], serde_json::json!([]));
}

#[test]
fn missing_token_and_unreachable_server_are_explained() {
    let mut cmd = Command::new(BIN);
    cmd.args(["credentials", "list"])
        .env("LATCHKEY_URL", "http://127.0.0.1:9")
        .env_remove("LATCHKEY_TOKEN");
    let out = run(cmd, None);
    out.fails();
    assert!(
        out.stderr.contains("LATCHKEY_TOKEN is not set"),
        "{}",
        out.stderr
    );

    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let mut cmd = Command::new(BIN);
    cmd.args(["credentials", "list", "--url", &url])
        .env("LATCHKEY_TOKEN", "lk_test");
    let out = run(cmd, None);
    out.fails();
    assert!(out.stderr.contains(&url), "{}", out.stderr);
    assert!(out.stderr.contains("cannot connect"), "{}", out.stderr);
}

#[test]
fn credentials_export_to_a_sealed_file_and_import_into_another_tenant() {
    let server = Server::start();
    create_twilio(
        &server,
        "Support SMS",
        &account_sid(),
        &format!("{KEY_1}\n{WEBHOOK_SECRET}\n"),
    )
    .json();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("all.lkx");
    let file_arg = file.to_str().unwrap();
    let passphrase = "correct horse battery staple\n";

    let exported = server.cli(
        &["credentials", "export", "--out", file_arg],
        Some(passphrase),
    );
    exported.ok();
    assert!(
        exported.stdout.contains("Exported every credential"),
        "{}",
        exported.stdout
    );
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.starts_with(b"LKEX"));
    assert!(
        !bytes.windows(KEY_1.len()).any(|w| w == KEY_1.as_bytes()),
        "sealed"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    server
        .cli(
            &["credentials", "export", "--out", file_arg],
            Some(passphrase),
        )
        .fails();

    let tenant = server
        .cli(&["tenants", "create", "--name", "Other", "--json"], None)
        .json();
    let other = tenant["admin_token"]["token"].as_str().unwrap().to_string();
    let wrong = server.cli_as(
        &other,
        &["credentials", "import", file_arg],
        Some("not it\n"),
    );
    wrong.fails();
    assert!(
        wrong.stderr.contains("passphrase is wrong"),
        "{}",
        wrong.stderr
    );

    let done = server
        .cli_as(
            &other,
            &["credentials", "import", file_arg, "--json"],
            Some(passphrase),
        )
        .json();
    assert_eq!(done["imported"][0]["name"], "Support SMS");
    assert_eq!(done["imported"][0]["action"], "created");
    let again = server.cli_as(
        &other,
        &["credentials", "import", file_arg],
        Some(passphrase),
    );
    again.fails();
    assert!(
        again.stderr.contains("Support SMS") && again.stderr.contains("--on-conflict"),
        "{}",
        again.stderr
    );
    let renamed = server.cli_as(
        &other,
        &[
            "credentials",
            "import",
            file_arg,
            "--on-conflict",
            "create-new",
        ],
        Some(passphrase),
    );
    renamed.ok();
    assert!(
        renamed.stdout.contains("Support SMS (imported)"),
        "{}",
        renamed.stdout
    );
    let list = server
        .cli_as(&other, &["credentials", "list", "--json"], None)
        .json();
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    renamed.contains_nowhere(KEY_1);
}
