//! `latchkey serve` as an operator sees it: the first-start banner, the key
//! fingerprint on every start, a wrong key refused, SIGTERM drains and exits 0.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

struct Server {
    child: Child,
    banner: Vec<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &std::path::Path, key: Option<&str>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_latchkey"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env_remove("LATCHKEY_MASTER_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(k) = key {
        cmd.env("LATCHKEY_MASTER_KEY", k);
    }
    cmd
}

/// Starts the server and reads its banner up to the `ready in` line.
fn start(dir: &std::path::Path, key: Option<&str>) -> Server {
    let mut child = serve(dir, key).spawn().unwrap();
    let mut banner = Vec::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let done = line.contains("ready in");
        banner.push(line);
        if done {
            break;
        }
    }
    assert!(
        banner.last().is_some_and(|l| l.contains("ready in")),
        "no banner: {banner:?}"
    );
    Server { child, banner }
}

fn line<'a>(banner: &'a [String], label: &str) -> &'a str {
    banner
        .iter()
        .find(|l| l.trim_start().starts_with(label))
        .map(|l| l.as_str())
        .unwrap_or("")
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[test]
fn first_start_creates_the_key_and_admin_token_and_later_starts_check_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    let mut first = start(&data, None);
    let text = first.banner.join("\n");
    assert!(
        text.contains("created") && text.contains("master.key") && text.contains("BACK IT UP"),
        "{text}"
    );
    assert!(
        text.contains("LATCHKEY_TOKEN=lk_"),
        "the first admin token is printed once: {text}"
    );
    let fingerprint = line(&first.banner, "fingerprint").to_string();
    assert!(fingerprint.contains("kek_"), "{fingerprint}");

    // SIGTERM drains and exits cleanly.
    sigterm(&first.child);
    let status = first.child.wait().unwrap();
    assert!(status.success(), "{status}");

    let mut second = start(&data, None);
    let text = second.banner.join("\n");
    assert!(
        !text.contains("LATCHKEY_TOKEN="),
        "the token is shown only on the first start"
    );
    assert_eq!(line(&second.banner, "fingerprint"), fingerprint);
    sigterm(&second.child);
    assert!(second.child.wait().unwrap().success());

    // A key that did not seal this data stops start-up with a message that says so.
    let out = serve(&data, Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not match"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ready in"));

    // A malformed key is named as such.
    let out = serve(&data, Some("not base64!")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("LATCHKEY_MASTER_KEY"));
}

/// A SIGTERM sent the moment the banner says `ready in` drains and exits 0.
/// The handlers were once installed only after the banner, and a signal in
/// that gap killed the process; the gap is narrow, so this tries many times.
#[test]
fn a_sigterm_right_after_ready_drains_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for attempt in 0..20 {
        let mut server = start(&data, None);
        sigterm(&server.child);
        let status = server.child.wait().unwrap();
        assert!(status.success(), "attempt {attempt}: {status}");
    }
}

/// The PostgreSQL pool size is refused, before anything is created, without
/// a PostgreSQL database to size it for, and outside 1..=1000.
#[test]
fn a_pool_size_without_postgres_or_out_of_range_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    let out = serve(&data, None)
        .args(["--database-pool-size", "4"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--database-url"), "{err}");

    let out = serve(&data, None)
        .args(["--database-url", "postgres://postgres@127.0.0.1:1/none"])
        .args(["--database-pool-size", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--database-pool-size") && err.contains("1..=1000"),
        "{err}"
    );
    assert!(!data.exists(), "a refused start created the data dir");
}
