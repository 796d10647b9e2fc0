//! A headless Chromium driven through chromedriver, and the few helpers the
//! browser tests share: wait for a condition, click, fill, read, screenshot.
//! Every helper polls until the page is ready or a timeout runs out; none
//! sleeps for a fixed time.

use std::future::Future;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::error::CmdError;
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// How long any one wait may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// `<workspace>/target/screenshots`.
pub fn screenshots_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let workspace = workspace.canonicalize().unwrap_or(workspace);
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        Some(dir) => workspace.join(dir),
        None => workspace.join("target"),
    };
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir).expect("create the screenshots dir");
    dir
}

/// chromedriver in its own process group, so Chromium goes with it.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        // The group id is the child's pid (process_group(0) below).
        let group = rustix::process::Pid::from_child(&self.0);
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Browser {
    pub client: Client,
    pub base: String,
    // Dropped in this order: the session, then chromedriver, then the profile.
    _driver: Driver,
    _profile: tempfile::TempDir,
}

/// A row of the credentials table.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub name: String,
    pub status: String,
    pub class: String,
    pub el: Element,
}

impl Browser {
    /// Starts chromedriver and a fresh headless Chromium profile pointed at
    /// `base`. `None` (the test passes) when chromedriver is not installed,
    /// unless `CI` is set: then the missing browser fails the run.
    pub async fn launch(base: &str) -> Option<Browser> {
        if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "the browser tests need Chromium and chromedriver: \
                     install them with `apt-get install chromium chromium-driver`"
                );
            }
            eprintln!("skipping browser tests: chromedriver not installed");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = screenshots_dir();
        // A failure from an earlier run is not this run's.
        let _ = std::fs::remove_file(dir.join("failure.png"));
        let _ = std::fs::remove_file(dir.join("failure.html"));
        let log = std::fs::File::create(dir.join("chromedriver.log")).ok();
        let driver = Driver(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log.map(Stdio::from).unwrap_or_else(Stdio::null))
                .process_group(0)
                .spawn()
                .expect("start chromedriver"),
        );
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match http.get(format!("{url}/status")).send().await {
                Ok(res) if res.status().is_success() => break,
                _ if Instant::now() > deadline => panic!("chromedriver did not answer on {url}"),
                _ => tokio::time::sleep(POLL).await,
            }
        }

        let profile = tempfile::tempdir().expect("a Chromium profile dir");
        let caps = json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1280,800",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!()
        };
        // chromedriver speaks plain HTTP on loopback: no TLS stack needed.
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&url)
            .await
            .expect("start a headless Chromium session");
        Some(Browser {
            client,
            base: base.to_string(),
            _driver: driver,
            _profile: profile,
        })
    }

    /// Ends the session (Chromium quits) before chromedriver is killed.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }

    pub async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap_or_else(|e| panic!("open {path}: {e}"));
    }

    /// Polls `check` until it yields `Some`; errors (a stale element, one not
    /// there yet) count as "not yet". Fails the test after [`TIMEOUT`], with
    /// a screenshot and the page source saved for the post-mortem.
    pub async fn eventually<T, F, Fut>(&self, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>, CmdError>>,
    {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let last = match check().await {
                Ok(Some(v)) => return v,
                Ok(None) => String::new(),
                Err(e) => format!(" (last error: {e})"),
            };
            if Instant::now() > deadline {
                let saved = self.save_failure().await;
                panic!("timed out after {TIMEOUT:?} waiting for {what}{last}; {saved}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn save_failure(&self) -> String {
        let dir = screenshots_dir();
        if let Ok(png) = self.client.screenshot().await {
            let _ = std::fs::write(dir.join("failure.png"), png);
        }
        if let Ok(html) = self.client.source().await {
            let _ = std::fs::write(dir.join("failure.html"), html);
        }
        let url = self.client.current_url().await.map(|u| u.to_string());
        format!(
            "page {} saved as {}/failure.{{png,html}}",
            url.unwrap_or_default(),
            dir.display()
        )
    }

    /// The element matching `css` once it is displayed.
    pub async fn visible(&self, css: &str) -> Element {
        self.eventually(&format!("`{css}` to be visible"), move || async move {
            let el = self.client.find(Locator::Css(css)).await?;
            Ok(el.is_displayed().await?.then_some(el))
        })
        .await
    }

    /// Waits until nothing matching `css` is displayed.
    pub async fn hidden(&self, css: &str) {
        self.eventually(&format!("`{css}` to be hidden"), move || async move {
            for el in self.client.find_all(Locator::Css(css)).await? {
                if el.is_displayed().await? {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        })
        .await
    }

    /// Whether something matching `css` is displayed right now.
    pub async fn shown_now(&self, css: &str) -> bool {
        match self.client.find(Locator::Css(css)).await {
            Ok(el) => el.is_displayed().await.unwrap_or(false),
            Err(_) => false,
        }
    }

    pub async fn click(&self, css: &str) {
        self.eventually(&format!("to click `{css}`"), move || async move {
            let el = self.client.find(Locator::Css(css)).await?;
            if !el.is_displayed().await? || !el.is_enabled().await? {
                return Ok(None);
            }
            click_el(&el).await?;
            Ok(Some(()))
        })
        .await
    }

    /// Replaces the field's value by typing (so input events fire).
    pub async fn fill(&self, css: &str, text: &str) {
        let el = self.visible(css).await;
        fill_el(&el, text)
            .await
            .unwrap_or_else(|e| panic!("type into `{css}`: {e}"));
    }

    pub async fn text(&self, css: &str) -> String {
        self.visible(css)
            .await
            .text()
            .await
            .unwrap_or_else(|e| panic!("text of `{css}`: {e}"))
    }

    /// Waits until the text of `css` satisfies `ok`, and returns it.
    pub async fn text_where(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let ok = &ok;
        self.eventually(what, move || async move {
            let el = self.client.find(Locator::Css(css)).await?;
            let text = el.text().await?;
            Ok((el.is_displayed().await? && ok(&text)).then_some(text))
        })
        .await
    }

    pub async fn value(&self, css: &str) -> String {
        self.visible(css)
            .await
            .prop("value")
            .await
            .unwrap_or_else(|e| panic!("value of `{css}`: {e}"))
            .unwrap_or_default()
    }

    /// Waits until the value of the form control `css` is `want`.
    pub async fn value_is(&self, css: &str, want: &str) {
        self.eventually(
            &format!("`{css}` to have the value {want:?}"),
            move || async move {
                let el = self.client.find(Locator::Css(css)).await?;
                Ok((el.prop("value").await?.as_deref() == Some(want)).then_some(()))
            },
        )
        .await
    }

    pub async fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("find `{css}`: {e}"))
            .attr(name)
            .await
            .unwrap_or_else(|e| panic!("attribute {name} of `{css}`: {e}"))
    }

    /// Chooses the `<option>` with this value in the select `css`.
    pub async fn select(&self, css: &str, value: &str) {
        self.eventually(
            &format!("to select {value:?} in `{css}`"),
            move || async move {
                let el = self.client.find(Locator::Css(css)).await?;
                if !el.is_displayed().await? {
                    return Ok(None);
                }
                el.select_by_value(value).await?;
                Ok((el.prop("value").await?.as_deref() == Some(value)).then_some(()))
            },
        )
        .await
    }

    /// Presses a key in whatever has the focus.
    pub async fn press(&self, key: Key) {
        let el = self
            .client
            .active_element()
            .await
            .expect("a focused element");
        el.send_keys(&key.to_string())
            .await
            .expect("send a key to the focused element");
    }

    /// Scrolls `css` to the middle of its scroll box (e.g. before a screenshot).
    pub async fn scroll_to(&self, css: &str) {
        let el = self.visible(css).await;
        let arg = serde_json::to_value(&el).unwrap();
        self.client
            .execute(
                "arguments[0].scrollIntoView({ block: 'center' });",
                vec![arg],
            )
            .await
            .unwrap_or_else(|e| panic!("scroll to `{css}`: {e}"));
    }

    pub async fn source(&self) -> String {
        self.client.source().await.expect("the page source")
    }

    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("a screenshot");
        std::fs::write(screenshots_dir().join(name), png).expect("save the screenshot");
    }

    /// The displayed rows of the credentials table, first row first.
    pub async fn rows(&self) -> Result<Vec<Row>, CmdError> {
        let mut rows = Vec::new();
        for el in self
            .client
            .find_all(Locator::Css("#credentials tr[data-id]"))
            .await?
        {
            if !el.is_displayed().await? {
                continue;
            }
            let status = el.find(Locator::Css("td.status span.badge")).await?;
            rows.push(Row {
                id: el.attr("data-id").await?.unwrap_or_default(),
                name: el
                    .find(Locator::Css("td.name"))
                    .await?
                    .text()
                    .await?
                    .trim()
                    .to_string(),
                status: status.attr("data-status").await?.unwrap_or_default(),
                class: el.attr("class").await?.unwrap_or_default(),
                el,
            });
        }
        Ok(rows)
    }

    /// Waits until the displayed rows satisfy `ok`, and returns them.
    pub async fn rows_where(&self, what: &str, ok: impl Fn(&[Row]) -> bool) -> Vec<Row> {
        let ok = &ok;
        self.eventually(what, move || async move {
            let rows = self.rows().await?;
            Ok(ok(&rows).then_some(rows))
        })
        .await
    }

    /// Waits for the row named `name`.
    pub async fn row(&self, name: &str) -> Row {
        self.eventually(&format!("a row named {name:?}"), move || async move {
            Ok(self.rows().await?.into_iter().find(|r| r.name == name))
        })
        .await
    }

    /// Clicks the button `css` (e.g. `.view`) in the row named `name`.
    pub async fn click_in_row(&self, name: &str, css: &str) {
        self.eventually(
            &format!("to click `{css}` in the row {name:?}"),
            move || async move {
                let Some(row) = self.rows().await?.into_iter().find(|r| r.name == name) else {
                    return Ok(None);
                };
                click_el(&row.el.find(Locator::Css(css)).await?).await?;
                Ok(Some(()))
            },
        )
        .await
    }

    /// Empties the toast so the next confirmation can be told from the last.
    pub async fn reset_toast(&self) {
        self.client
            .execute(
                "const t = document.getElementById('toast'); if (t) t.textContent = '';",
                vec![],
            )
            .await
            .expect("reset the toast");
    }

    /// Waits for a toast whose text contains `needle` (case-insensitive).
    pub async fn toast(&self, needle: &str) -> String {
        let lower = needle.to_lowercase();
        self.text_where(
            "#toast",
            &format!("a toast mentioning {needle:?}"),
            move |t| t.to_lowercase().contains(&lower),
        )
        .await
    }
}

/// Scrolls `el` to the middle of its scroll box (so sticky headers and
/// footers do not cover it), then clicks it.
pub async fn click_el(el: &Element) -> Result<(), CmdError> {
    let arg = serde_json::to_value(el)?;
    el.clone()
        .client()
        .execute(
            "arguments[0].scrollIntoView({ block: 'center', inline: 'center' });",
            vec![arg],
        )
        .await?;
    el.click().await
}

/// Clears `el` and types `text`; an empty `text` still fires input events.
pub async fn fill_el(el: &Element, text: &str) -> Result<(), CmdError> {
    el.clear().await?;
    if text.is_empty() {
        el.send_keys(&format!(" {}", Key::Backspace)).await
    } else {
        el.send_keys(text).await
    }
}
