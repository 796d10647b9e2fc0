//! The CLI client: every command other than `serve` is a thin client of the
//! REST API under `/v1`.
//!
//! - **Connection.** `--url` (or `LATCHKEY_URL`) names the server; the API
//!   root printed by `latchkey serve` (`…/v1`) is accepted too. The management
//!   token comes only from the `LATCHKEY_TOKEN` environment variable, never
//!   from an argument.
//! - **Secrets.** API keys and secret config params are never taken as
//!   argument values, so they cannot end up in shell history or in the process
//!   list. When stdin is piped they are read from it, one per line, in the
//!   order the command asks for them (the API key first, then each
//!   `--secret-param` in the order given); on a terminal they are asked for
//!   with a hidden prompt. They stay in [`SecretString`] until the request body
//!   is serialised.
//! - **Output.** A human table by default; `--json` prints the API's JSON
//!   response as it came, pretty-printed.
//! - **Errors.** A problem document from the API is printed as
//!   `error: <detail>` followed by one `  <field>: <message>` line per field
//!   error; every failure exits with status 1.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, IsTerminal, StdinLock, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use comfy_table::{presets, Table};
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::{header, Method, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// How long one request may take before the CLI gives up.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The environment variable holding the management token.
const TOKEN_ENV: &str = "LATCHKEY_TOKEN";

/// The name of the field that holds the key itself.
const API_KEY_FIELD: &str = "api_key";

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

/// The client commands, flattened into the top-level `latchkey` command.
#[derive(Subcommand)]
pub enum ClientCommand {
    /// Store, list, show, change and delete app credentials.
    Credentials {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: CredentialsCommand,
    },
    /// Browse the catalog of integrations.
    Integrations {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: IntegrationsCommand,
    },
    /// Issue, list and revoke management tokens (admin role).
    Tokens {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// Create and list tenants (admin of the operator tenant).
    Tenants {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: TenantsCommand,
    },
    /// Master keys: status and rotation (admin of the operator tenant).
    Keys {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: KeysCommand,
    },
}

/// Options every client command takes. The token is read from
/// `LATCHKEY_TOKEN` only, so it never appears in the process arguments.
#[derive(clap::Args)]
pub struct Connection {
    /// Base URL of the Latchkey server (a trailing /v1 is accepted).
    #[arg(
        long,
        global = true,
        env = "LATCHKEY_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// Print the API's JSON response instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
pub enum CredentialsCommand {
    /// Store a new credential. The API key is read from stdin when it is
    /// piped (first line), else asked for with a hidden prompt.
    Create(CreateArgs),
    /// List credentials.
    List(ListArgs),
    /// Show one credential.
    Get {
        /// Credential id.
        id: String,
    },
    /// Change a credential; options left out keep their value.
    Update(UpdateArgs),
    /// Delete a credential and its secrets.
    Delete {
        /// Credential id.
        id: String,
        /// Do not ask for confirmation (required when stdin is not a terminal).
        #[arg(long, short)]
        yes: bool,
    },
    /// Write credentials to a file sealed with a passphrase (read from the
    /// first stdin line, or asked for twice on a terminal). All of the
    /// tenant's unless --id names some.
    Export {
        /// A credential to export; repeat for several.
        #[arg(long = "id", value_name = "ID")]
        ids: Vec<String>,
        /// The file to write (never overwritten).
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Import the credentials of an export file into this tenant, all or
    /// none. The passphrase is read like the export's.
    Import {
        /// The export file (.lkx).
        file: PathBuf,
        /// When a name is already used: ask (refuse and list them),
        /// override (replace them, keeping their ids), or create-new
        /// (import under new names).
        #[arg(long, value_parser = ["ask", "override", "create-new"], default_value = "ask")]
        on_conflict: String,
    },
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// Name of the credential, unique in the tenant.
    #[arg(long)]
    name: String,
    /// Catalog id of the integration, e.g. twilio (see `latchkey integrations list`).
    #[arg(long)]
    integration: String,
    /// Free text shown with the credential.
    #[arg(long)]
    description: Option<String>,
    /// How the integration authenticates (see `latchkey integrations show`).
    #[arg(long, default_value = "api_key")]
    auth_type: String,
    /// A scope the key grants; repeat for several.
    #[arg(long = "scope", value_name = "SCOPE")]
    scopes: Vec<String>,
    /// A plain config param; repeat for several. Secret params take --secret-param.
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_pair)]
    params: Vec<(String, String)>,
    /// A secret config param; its value is read like the API key (the next
    /// stdin line, or a hidden prompt). Repeat for several.
    #[arg(long = "secret-param", value_name = "KEY")]
    secret_params: Vec<String>,
    /// The service for a role, instead of the integration's default.
    #[arg(long = "service", value_name = "ROLE=SERVICE_ID", value_parser = parse_pair)]
    services: Vec<(String, String)>,
    /// Save without checking the key with the provider first.
    #[arg(long)]
    no_validate: bool,
}

#[derive(clap::Args)]
pub struct ListArgs {
    /// Text matched against credential and integration names.
    #[arg(long)]
    q: Option<String>,
    /// Only credentials of this integration.
    #[arg(long)]
    integration: Option<String>,
    /// Only credentials with this status: valid, invalid or unverified.
    #[arg(long)]
    status: Option<String>,
    /// Page size, 1 to 200.
    #[arg(long)]
    limit: Option<u32>,
    /// Follow the cursor and list every page.
    #[arg(long)]
    all: bool,
}

#[derive(clap::Args)]
pub struct UpdateArgs {
    /// Credential id.
    id: String,
    /// New name, unique in the tenant.
    #[arg(long)]
    name: Option<String>,
    /// New description.
    #[arg(long)]
    description: Option<String>,
    /// Replaces all the scopes with the ones given; repeat for several.
    #[arg(long = "scope", value_name = "SCOPE")]
    scopes: Vec<String>,
    /// Sets a plain config param, keeping the other params; repeat for several.
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_pair)]
    params: Vec<(String, String)>,
    /// Sets a secret config param, read like the API key; repeat for several.
    #[arg(long = "secret-param", value_name = "KEY")]
    secret_params: Vec<String>,
    /// Changes the service of a role, keeping the other roles'.
    #[arg(long = "service", value_name = "ROLE=SERVICE_ID", value_parser = parse_pair)]
    services: Vec<(String, String)>,
    /// Replace the API key with a new one, read from stdin (first line) or a
    /// hidden prompt.
    #[arg(long)]
    rotate_key: bool,
    /// Save without checking the key with the provider first.
    #[arg(long)]
    no_validate: bool,
}

#[derive(Subcommand)]
pub enum IntegrationsCommand {
    /// List the integrations of the catalog.
    List {
        /// Text matched against integration ids and names.
        #[arg(long)]
        q: Option<String>,
    },
    /// Show an integration: its fields, how the key is applied, how it is
    /// validated, its scopes and default services.
    Show {
        /// Integration id, e.g. twilio.
        id: String,
    },
}

#[derive(Subcommand)]
pub enum TokensCommand {
    /// Issue a management token. It is printed once and cannot be shown again.
    Create {
        /// What the token is for, e.g. ci.
        #[arg(long)]
        name: String,
        /// admin manages tokens; developer changes credentials; viewer reads.
        #[arg(long, value_parser = ["admin", "developer", "viewer"])]
        role: String,
    },
    /// List the tenant's management tokens.
    List,
    /// Revoke a management token.
    Revoke {
        /// Token id.
        id: String,
    },
}

#[derive(Subcommand)]
pub enum TenantsCommand {
    /// Create a tenant; prints its first admin token once.
    Create {
        /// Name of the tenant.
        #[arg(long)]
        name: String,
    },
    /// List tenants.
    List,
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Every master key the data knows, how many credentials each wraps,
    /// and the progress of a rotation.
    Status,
    /// Make a new master key active. The server re-wraps every data key with
    /// it while it keeps serving, then retires the old key (and removes it
    /// from its key file).
    Rotate {
        /// Rotate to a key every replica already holds (see `keys generate`);
        /// without it the server generates one and adds it to its key file.
        #[arg(long)]
        to: Option<String>,
        /// Wait until the old key is retired, showing progress.
        #[arg(long)]
        wait: bool,
    },
    /// Generate a master key without a server: added to --key-file (created
    /// with mode 0600 if missing), or printed in base64 for
    /// LATCHKEY_MASTER_KEY (comma-separated with the keys already there).
    Generate {
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
}

/// Parses `key=value` (the value may contain `=`).
fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

// ---------------------------------------------------------------------------
// Entry point and error reporting
// ---------------------------------------------------------------------------

/// Runs a client command. On failure the error is printed to stderr and the
/// process exits with status 1.
pub fn run(c: ClientCommand) -> Result<()> {
    if let Err(e) = execute(c) {
        let _ = std::io::stdout().flush();
        report(&e);
        std::process::exit(1);
    }
    Ok(())
}

fn execute(c: ClientCommand) -> Result<()> {
    match c {
        ClientCommand::Credentials { conn, command } => {
            let ctx = Ctx::new(&conn)?;
            match command {
                CredentialsCommand::Create(a) => create_credential(&ctx, a),
                CredentialsCommand::List(a) => list_credentials(&ctx, a),
                CredentialsCommand::Get { id } => get_credential(&ctx, &id),
                CredentialsCommand::Update(a) => update_credential(&ctx, a),
                CredentialsCommand::Delete { id, yes } => delete_credential(&ctx, &id, yes),
                CredentialsCommand::Export { ids, out } => export_credentials(&ctx, &ids, &out),
                CredentialsCommand::Import { file, on_conflict } => {
                    import_credentials(&ctx, &file, &on_conflict)
                }
            }
        }
        ClientCommand::Integrations { conn, command } => {
            let ctx = Ctx::new(&conn)?;
            match command {
                IntegrationsCommand::List { q } => list_integrations(&ctx, q),
                IntegrationsCommand::Show { id } => show_integration(&ctx, &id),
            }
        }
        ClientCommand::Tokens { conn, command } => {
            let ctx = Ctx::new(&conn)?;
            match command {
                TokensCommand::Create { name, role } => create_token(&ctx, &name, &role),
                TokensCommand::List => list_tokens(&ctx),
                TokensCommand::Revoke { id } => revoke_token(&ctx, &id),
            }
        }
        ClientCommand::Tenants { conn, command } => {
            let ctx = Ctx::new(&conn)?;
            match command {
                TenantsCommand::Create { name } => create_tenant(&ctx, &name),
                TenantsCommand::List => list_tenants(&ctx),
            }
        }
        ClientCommand::Keys {
            command: KeysCommand::Generate { key_file },
            ..
        } => generate_key(key_file.as_deref()),
        ClientCommand::Keys { conn, command } => {
            let ctx = Ctx::new(&conn)?;
            match command {
                KeysCommand::Status => key_status(&ctx),
                KeysCommand::Rotate { to, wait } => rotate_key(&ctx, to, wait),
                KeysCommand::Generate { .. } => unreachable!("handled above"),
            }
        }
    }
}

/// Prints an error: a problem document field by field, anything else with
/// its chain of causes.
fn report(e: &anyhow::Error) {
    let Some(p) = e.downcast_ref::<ApiProblem>() else {
        eprintln!("error: {e:#}");
        return;
    };
    eprintln!("error: {p}");
    for f in &p.errors {
        eprintln!("  {}: {}", f.field, f.message);
    }
    if let Some(id) = &p.existing_id {
        eprintln!("  existing credential: {id}");
    }
    if let Some(v) = p.current_version {
        eprintln!("  current version: {v}");
    }
    for c in &p.credentials {
        eprintln!("  {} ({})", c.name, c.id);
    }
    if p.code == "name_conflict" {
        eprintln!("hint: --on-conflict override replaces them; --on-conflict create-new imports under new names");
    }
    if p.status == 401 {
        eprintln!("hint: check the token in {TOKEN_ENV}");
    }
}

/// An RFC 9457 problem document as the API sends it.
#[derive(Debug, Deserialize)]
struct ApiProblem {
    /// The HTTP status (taken from the response, not the body).
    #[serde(skip)]
    status: u16,
    code: String,
    #[serde(default)]
    title: String,
    detail: Option<String>,
    #[serde(default)]
    errors: Vec<FieldProblem>,
    existing_id: Option<String>,
    current_version: Option<i64>,
    /// Credentials the problem names (in use, or names already used).
    #[serde(default)]
    credentials: Vec<NamedCredential>,
}

#[derive(Debug, Deserialize)]
struct NamedCredential {
    id: String,
    name: String,
}

#[derive(Debug, Deserialize)]
struct FieldProblem {
    field: String,
    message: String,
}

impl std::fmt::Display for ApiProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.detail {
            Some(detail) => f.write_str(detail),
            None if !self.title.is_empty() => write!(f, "{} ({})", self.title, self.code),
            None => f.write_str(&self.code),
        }
    }
}

impl std::error::Error for ApiProblem {}

// ---------------------------------------------------------------------------
// HTTP client
// ---------------------------------------------------------------------------

/// The API, as seen by the CLI: a base URL, the management token and a
/// blocking HTTP client.
struct Api {
    base: Url,
    token: SecretString,
    http: Client,
}

impl Api {
    fn new(url: &str) -> Result<Api> {
        let token = match std::env::var(TOKEN_ENV) {
            Ok(t) if !t.trim().is_empty() => SecretString::from(t.trim().to_string()),
            _ => bail!(
                "{TOKEN_ENV} is not set: export a management token (lk_…), e.g. the one \
                 `latchkey serve` prints on first start or one from `latchkey tokens create`"
            ),
        };
        let http = Client::builder()
            .timeout(TIMEOUT)
            .user_agent(concat!("latchkey-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Api {
            base: parse_base_url(url)?,
            token,
            http,
        })
    }

    /// The base URL for messages, without a trailing slash.
    fn base_str(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// `{base}/v1/{segments…}`, each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("parse_base_url accepts only http(s) URLs, which have a path")
            .pop_if_empty()
            .push("v1")
            .extend(segments);
        url
    }

    fn request(&self, method: Method, url: Url) -> RequestBuilder {
        self.http
            .request(method, url)
            .bearer_auth(self.token.expose_secret())
            .header(header::ACCEPT, "application/json")
    }

    /// Sends a request; a non-2xx answer becomes an error (an [`ApiProblem`]
    /// when the server sent one).
    fn send(&self, req: RequestBuilder) -> Result<Response> {
        let res = req.send().map_err(|e| self.transport_error(e))?;
        if res.status().is_success() {
            Ok(res)
        } else {
            Err(problem(res))
        }
    }

    fn get(&self, url: Url) -> Result<Value> {
        json_body(self.send(self.request(Method::GET, url))?)
    }

    /// GETs a list. With `all`, follows `next_cursor` and returns every item
    /// as one page (`next_cursor: null`); else returns the first page as-is.
    fn list(&self, segments: &[&str], query: &[(&str, String)], all: bool) -> Result<Value> {
        let mut url = self.url(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut page = self.get(url.clone())?;
        if !all {
            return Ok(page);
        }
        let mut items = take_items(&mut page);
        while let Some(cursor) = page["next_cursor"].as_str().map(str::to_owned) {
            let mut next = url.clone();
            next.query_pairs_mut().append_pair("cursor", &cursor);
            page = self.get(next)?;
            items.extend(take_items(&mut page));
        }
        Ok(json!({ "items": items, "next_cursor": null }))
    }

    /// The secret fields an integration declares for an auth type. Empty when
    /// the integration or the auth type does not exist: the API then reports
    /// that itself, field by field.
    fn secret_fields(&self, integration: &str, auth_type: &str) -> Result<BTreeSet<String>> {
        let value = match self.get(self.url(&["integrations", integration])) {
            Ok(v) => v,
            Err(e)
                if e.downcast_ref::<ApiProblem>()
                    .is_some_and(|p| p.status == 404) =>
            {
                return Ok(BTreeSet::new())
            }
            Err(e) => return Err(e),
        };
        let detail: IntegrationDetail = from_value(value)?;
        Ok(detail
            .auth
            .into_iter()
            .filter(|a| a.type_ == auth_type)
            .flat_map(|a| a.fields)
            .filter(|f| f.secret)
            .map(|f| f.name)
            .collect())
    }

    fn transport_error(&self, e: reqwest::Error) -> anyhow::Error {
        let base = self.base_str();
        if e.is_connect() {
            anyhow!(
                "cannot connect to Latchkey at {base} ({}); is the server running, and is --url \
                 (LATCHKEY_URL) right?",
                root_cause(&e)
            )
        } else if e.is_timeout() {
            anyhow!(
                "Latchkey at {base} did not answer within {} s",
                TIMEOUT.as_secs()
            )
        } else {
            anyhow::Error::new(e).context(format!("the request to Latchkey at {base} failed"))
        }
    }
}

/// Parses `--url`, accepting the API root (`…/v1`) as well as the server's base.
fn parse_base_url(raw: &str) -> Result<Url> {
    let mut url = Url::parse(raw.trim())
        .with_context(|| format!("--url {raw:?} is not a URL (e.g. http://127.0.0.1:8080)"))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        bail!("--url {raw:?} must be an http:// or https:// URL");
    }
    let path = url.path().trim_end_matches('/');
    let path = path.strip_suffix("/v1").unwrap_or(path).to_string();
    url.set_path(&path);
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

/// Turns a non-2xx response into an error, keeping the problem document's fields.
fn problem(res: Response) -> anyhow::Error {
    let status = res.status();
    let url = res.url().clone();
    let body = res.text().unwrap_or_default();
    match serde_json::from_str::<ApiProblem>(&body) {
        Ok(mut p) => {
            p.status = status.as_u16();
            p.into()
        }
        Err(_) => {
            let snippet: String = body.trim().chars().take(200).collect();
            anyhow!("{url} answered {status}: {snippet}")
        }
    }
}

/// The innermost cause of an error, e.g. `Connection refused`.
fn root_cause(e: &reqwest::Error) -> &(dyn std::error::Error + 'static) {
    let mut cause: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause
}

fn json_body(res: Response) -> Result<Value> {
    res.json().context("the server's answer is not JSON")
}

fn from_value<T: DeserializeOwned>(value: Value) -> Result<T> {
    serde_json::from_value(value).context("the server's answer does not have the expected shape")
}

fn take_items(page: &mut Value) -> Vec<Value> {
    page.get_mut("items")
        .and_then(Value::as_array_mut)
        .map(std::mem::take)
        .unwrap_or_default()
}

/// The version in an `ETag` header (`"3"` or `W/"3"`).
fn etag_version(res: &Response) -> Option<i64> {
    res.headers()
        .get(header::ETAG)?
        .to_str()
        .ok()?
        .trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .ok()
}

/// What every command needs: the API and the output mode.
struct Ctx {
    api: Api,
    json: bool,
}

impl Ctx {
    fn new(conn: &Connection) -> Result<Ctx> {
        Ok(Ctx {
            api: Api::new(&conn.url)?,
            json: conn.json,
        })
    }

    /// Prints an API answer: as-is with `--json`, else rendered by `human`.
    fn show<T: DeserializeOwned>(&self, value: Value, human: impl FnOnce(&T)) -> Result<()> {
        if self.json {
            return print_json(&value);
        }
        human(&from_value(value)?);
        Ok(())
    }
}

fn print_json(value: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

// ---------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------

/// Where secrets come from: piped stdin, one per line in the order they are
/// asked for, or a hidden prompt when stdin is a terminal.
enum SecretSource {
    Piped {
        stdin: StdinLock<'static>,
        line: usize,
    },
    Terminal,
}

impl SecretSource {
    fn detect() -> SecretSource {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            SecretSource::Terminal
        } else {
            SecretSource::Piped {
                stdin: stdin.lock(),
                line: 0,
            }
        }
    }

    /// Reads one secret; `what` names it in the prompt and in errors.
    fn read(&mut self, what: &str) -> Result<SecretString> {
        let value = match self {
            SecretSource::Piped { stdin, line } => {
                *line += 1;
                let mut buf = String::new();
                let n = stdin.read_line(&mut buf).context("cannot read stdin")?;
                if n == 0 {
                    bail!(
                        "no {what} on stdin (expected it on line {line}): pipe it in, e.g. \
                         `… < key.txt`, or run on a terminal to be asked for it"
                    );
                }
                let len = buf.trim_end_matches(['\n', '\r']).len();
                buf.truncate(len);
                buf
            }
            SecretSource::Terminal => rpassword::prompt_password(format!("{what}: "))
                .context("cannot read from the terminal")?,
        };
        if value.is_empty() {
            bail!("the {what} is empty");
        }
        Ok(SecretString::from(value))
    }
}

/// Reads the value of each `--secret-param`, in the order given.
fn read_secret_params(
    source: &mut SecretSource,
    keys: &[String],
) -> Result<Vec<(String, SecretString)>> {
    keys.iter()
        .map(|k| Ok((k.clone(), source.read(&format!("value of {k}"))?)))
        .collect()
}

/// Checks the params given on the command line: no key twice, the API key
/// never as a param, and no secret value as an argument.
fn check_params(
    params: &BTreeMap<String, String>,
    secret_params: &[String],
    secret_fields: &BTreeSet<String>,
) -> Result<()> {
    let mut seen = BTreeSet::new();
    for key in secret_params {
        if key == API_KEY_FIELD {
            bail!("the API key is not a param: it is read on its own (stdin or prompt)");
        }
        if !seen.insert(key) || params.contains_key(key) {
            bail!("{key} is given more than once");
        }
    }
    if let Some(key) = params
        .keys()
        .find(|k| *k == API_KEY_FIELD || secret_fields.contains(*k))
    {
        bail!(
            "{key} is secret and is not taken as an argument value: pass `--secret-param {key}` \
             and give the value on stdin or at the prompt"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Request bodies (secrets exposed only while the body is serialised)
// ---------------------------------------------------------------------------

#[derive(Serialize)]
struct ParamOut<'a> {
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
    secret: bool,
}

impl<'a> ParamOut<'a> {
    fn plain(key: &'a str, value: &'a str) -> ParamOut<'a> {
        ParamOut {
            key,
            value: Some(value),
            secret: false,
        }
    }

    /// A secret param; without a value the server keeps the stored one.
    fn secret(key: &'a str, value: Option<&'a SecretString>) -> ParamOut<'a> {
        ParamOut {
            key,
            value: value.map(|v| v.expose_secret()),
            secret: true,
        }
    }
}

#[derive(Serialize)]
struct CreateBody<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    integration: &'a str,
    auth_type: &'a str,
    services: &'a BTreeMap<String, String>,
    api_key: &'a str,
    scopes: &'a [String],
    config_params: Vec<ParamOut<'a>>,
    validate: bool,
}

#[derive(Serialize)]
struct UpdateBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    services: Option<&'a BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scopes: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    config_params: Option<Vec<ParamOut<'a>>>,
    validate: bool,
}

// ---------------------------------------------------------------------------
// Response shapes (only what the tables show; unknown fields are ignored)
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
struct Page<T> {
    items: Vec<T>,
    next_cursor: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Credential {
    id: String,
    name: String,
    description: String,
    integration: String,
    integration_name: String,
    auth_type: String,
    services: BTreeMap<String, String>,
    api_key: SecretState,
    scopes: Vec<String>,
    config_params: Vec<ConfigParam>,
    status: String,
    status_message: Option<String>,
    checked_at: Option<String>,
    callback_urls: CallbackUrls,
    version: i64,
    created_at: String,
    created_by: String,
    updated_at: String,
    updated_by: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SecretState {
    set: bool,
    last4: Option<String>,
}

impl std::fmt::Display for SecretState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.set, &self.last4) {
            (true, Some(last4)) => write!(f, "set (…{last4})"),
            (true, None) => f.write_str("set"),
            (false, _) => f.write_str("not set"),
        }
    }
}

#[derive(Deserialize)]
struct ConfigParam {
    key: String,
    #[serde(default)]
    secret: bool,
    value: ParamValue,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ParamValue {
    Plain(String),
    Secret(SecretState),
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CallbackUrls {
    webhook_url: String,
    action_url: String,
    authentication_url: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct IntegrationSummary {
    id: String,
    name: String,
    description: String,
    auth_types: Vec<String>,
    sends_webhooks: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct IntegrationDetail {
    #[serde(flatten)]
    summary: IntegrationSummary,
    base_url: String,
    hosts: Vec<String>,
    allow_base_url_override: bool,
    webhook_scheme: Option<String>,
    auth: Vec<AuthTypeDetail>,
    defaults: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct AuthTypeDetail {
    #[serde(rename = "type")]
    type_: String,
    #[serde(default)]
    label: String,
    #[serde(default)]
    fields: Vec<FieldSpec>,
    apply: Option<Apply>,
    validation: Option<ValidationEndpoint>,
    #[serde(default)]
    scopes: Vec<String>,
}

#[derive(Deserialize)]
struct FieldSpec {
    name: String,
    #[serde(default)]
    label: String,
    #[serde(default)]
    secret: bool,
    #[serde(default)]
    required: bool,
    pattern: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Apply {
    Header {
        name: String,
        value: String,
    },
    Query {
        name: String,
        value: String,
    },
    Basic {
        username: String,
        password: String,
    },
    #[serde(other)]
    Other,
}

impl std::fmt::Display for Apply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Apply::Header { name, value } => write!(f, "header {name}: {value}"),
            Apply::Query { name, value } => write!(f, "query ?{name}={value}"),
            Apply::Basic { username, password } => {
                write!(f, "basic auth, user {username}, password {password}")
            }
            Apply::Other => f.write_str("(a kind this CLI does not know; see --json)"),
        }
    }
}

#[derive(Deserialize)]
struct ValidationEndpoint {
    method: String,
    path: String,
    #[serde(default)]
    success_status: Vec<u16>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Token {
    id: String,
    name: String,
    role: String,
    created_at: String,
    revoked_at: Option<String>,
}

#[derive(Deserialize)]
struct IssuedToken {
    #[serde(flatten)]
    info: Token,
    token: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Tenant {
    id: String,
    name: String,
    is_operator: bool,
    created_at: String,
}

#[derive(Deserialize)]
struct CreatedTenant {
    #[serde(flatten)]
    tenant: Tenant,
    admin_token: IssuedToken,
}

// ---------------------------------------------------------------------------
// Credentials
// ---------------------------------------------------------------------------

fn create_credential(ctx: &Ctx, a: CreateArgs) -> Result<()> {
    let params: BTreeMap<String, String> = a.params.into_iter().collect();
    let services: BTreeMap<String, String> = a.services.into_iter().collect();
    let secret_fields = ctx.api.secret_fields(&a.integration, &a.auth_type)?;
    check_params(&params, &a.secret_params, &secret_fields)?;

    let mut source = SecretSource::detect();
    let api_key = source.read("API key")?;
    let secrets = read_secret_params(&mut source, &a.secret_params)?;

    let mut config_params: Vec<ParamOut> =
        params.iter().map(|(k, v)| ParamOut::plain(k, v)).collect();
    config_params.extend(secrets.iter().map(|(k, v)| ParamOut::secret(k, Some(v))));
    let body = CreateBody {
        name: &a.name,
        description: a.description.as_deref(),
        integration: &a.integration,
        auth_type: &a.auth_type,
        services: &services,
        api_key: api_key.expose_secret(),
        scopes: &a.scopes,
        config_params,
        validate: !a.no_validate,
    };
    let req = ctx
        .api
        .request(Method::POST, ctx.api.url(&["credentials"]))
        .json(&body);
    let created = json_body(ctx.api.send(req)?)?;
    ctx.show(created, print_credential)
}

fn export_credentials(ctx: &Ctx, ids: &[String], out: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if out.exists() {
        bail!("{} exists already; choose another file", out.display());
    }
    let mut source = SecretSource::detect();
    let passphrase = source.read("passphrase for the export file")?;
    if matches!(source, SecretSource::Terminal)
        && source.read("the same passphrase again")?.expose_secret() != passphrase.expose_secret()
    {
        bail!("the two passphrases differ; nothing was exported");
    }
    let body = json!({ "passphrase": passphrase.expose_secret(), "ids": ids });
    let req = ctx
        .api
        .request(Method::POST, ctx.api.url(&["credentials", "export"]))
        .json(&body);
    let bytes = ctx
        .api
        .send(req)?
        .bytes()
        .context("cannot read the export")?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("cannot create {}", out.display()))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", out.display()))?;
    let what = if ids.is_empty() {
        "every credential".to_string()
    } else {
        format!("{} credential(s)", ids.len())
    };
    println!(
        "Exported {what} to {} ({} bytes), sealed with your passphrase.",
        out.display(),
        bytes.len()
    );
    Ok(())
}

fn import_credentials(ctx: &Ctx, file: &Path, on_conflict: &str) -> Result<()> {
    use base64::Engine;
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let passphrase = SecretSource::detect().read("passphrase of the export file")?;
    let body = json!({
        "file": base64::engine::general_purpose::STANDARD.encode(&bytes),
        "passphrase": passphrase.expose_secret(),
        "on_conflict": on_conflict.replace('-', "_"),
    });
    let req = ctx
        .api
        .request(Method::POST, ctx.api.url(&["credentials", "import"]))
        .json(&body);
    let done = json_body(ctx.api.send(req)?)?;
    ctx.show(done, |done: &Value| {
        let items = done["imported"].as_array().cloned().unwrap_or_default();
        let mut t = list_table(&["ID", "NAME", "ACTION"]);
        for i in &items {
            let action = match i["original_name"].as_str() {
                Some(from) => format!("created (the file's {from:?} was taken)"),
                None => i["action"].as_str().unwrap_or("").to_string(),
            };
            t.add_row(vec![
                i["id"].as_str().unwrap_or("").to_string(),
                i["name"].as_str().unwrap_or("").to_string(),
                action,
            ]);
        }
        println!("{t}");
        println!(
            "Imported {} credential(s); check them with `latchkey credentials get ID`.",
            items.len()
        );
    })
}

fn list_credentials(ctx: &Ctx, a: ListArgs) -> Result<()> {
    let mut query = Vec::new();
    let filters = [
        ("q", a.q),
        ("integration", a.integration),
        ("status", a.status),
        ("limit", a.limit.map(|l| l.to_string())),
    ];
    for (k, v) in filters {
        if let Some(v) = v {
            query.push((k, v));
        }
    }
    let page = ctx.api.list(&["credentials"], &query, a.all)?;
    ctx.show(page, |page: &Page<Credential>| {
        if page.items.is_empty() {
            println!("No credentials.");
            return;
        }
        let mut t = list_table(&["ID", "NAME", "INTEGRATION", "STATUS", "UPDATED"]);
        for c in &page.items {
            t.add_row(vec![
                c.id.clone(),
                c.name.clone(),
                c.integration.clone(),
                c.status.clone(),
                short_time(&c.updated_at),
            ]);
        }
        println!("{}", render(&t));
        if page.next_cursor.is_some() {
            eprintln!("(more credentials: pass --all to list every page)");
        }
    })
}

fn get_credential(ctx: &Ctx, id: &str) -> Result<()> {
    let value = ctx.api.get(ctx.api.url(&["credentials", id]))?;
    ctx.show(value, print_credential)
}

fn update_credential(ctx: &Ctx, a: UpdateArgs) -> Result<()> {
    let nothing = a.name.is_none()
        && a.description.is_none()
        && a.scopes.is_empty()
        && a.params.is_empty()
        && a.secret_params.is_empty()
        && a.services.is_empty()
        && !a.rotate_key;
    if nothing {
        bail!(
            "nothing to change: pass --name, --description, --scope, --param, --secret-param, \
             --service or --rotate-key"
        );
    }
    let params: BTreeMap<String, String> = a.params.into_iter().collect();
    let services: BTreeMap<String, String> = a.services.into_iter().collect();

    // The current state: its version for If-Match, its params to keep.
    let url = ctx.api.url(&["credentials", &a.id]);
    let res = ctx.api.send(ctx.api.request(Method::GET, url.clone()))?;
    let etag = etag_version(&res);
    let current: Credential = from_value(json_body(res)?)?;
    let version = etag.unwrap_or(current.version);

    let change_params = !params.is_empty() || !a.secret_params.is_empty();
    let stored_secrets: BTreeSet<String> = current
        .config_params
        .iter()
        .filter(|p| p.secret)
        .map(|p| p.key.clone())
        .collect();
    if change_params {
        let mut secret_fields = ctx
            .api
            .secret_fields(&current.integration, &current.auth_type)?;
        secret_fields.extend(stored_secrets.iter().cloned());
        check_params(&params, &a.secret_params, &secret_fields)?;
    }

    let mut source = SecretSource::detect();
    let api_key = if a.rotate_key {
        Some(source.read("new API key")?)
    } else {
        None
    };
    let secrets = read_secret_params(&mut source, &a.secret_params)?;

    // The API replaces the params as a whole: send the current plain ones
    // merged with the new, and the stored secrets without a value (kept).
    let config_params = change_params.then(|| {
        let mut plain: BTreeMap<&str, &str> = current
            .config_params
            .iter()
            .filter_map(|p| match &p.value {
                ParamValue::Plain(v) if !p.secret => Some((p.key.as_str(), v.as_str())),
                _ => None,
            })
            .collect();
        plain.extend(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let mut out: Vec<ParamOut> = plain
            .into_iter()
            .map(|(k, v)| ParamOut::plain(k, v))
            .collect();
        out.extend(
            stored_secrets
                .iter()
                .filter(|k| !secrets.iter().any(|(n, _)| n == *k))
                .map(|k| ParamOut::secret(k, None)),
        );
        out.extend(secrets.iter().map(|(k, v)| ParamOut::secret(k, Some(v))));
        out
    });

    let body = UpdateBody {
        name: a.name.as_deref(),
        description: a.description.as_deref(),
        services: (!services.is_empty()).then_some(&services),
        api_key: api_key.as_ref().map(|k| k.expose_secret()),
        scopes: (!a.scopes.is_empty()).then_some(a.scopes.as_slice()),
        config_params,
        validate: !a.no_validate,
    };
    let req = ctx
        .api
        .request(Method::PATCH, url)
        .header(header::IF_MATCH, format!("\"{version}\""))
        .json(&body);
    let updated = json_body(ctx.api.send(req)?)?;
    ctx.show(updated, print_credential)
}

fn delete_credential(ctx: &Ctx, id: &str, yes: bool) -> Result<()> {
    if !yes {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            bail!(
                "refusing to delete {id} without confirmation: stdin is not a terminal; pass --yes"
            );
        }
        eprint!("Delete credential {id} and its secrets? [y/N] ");
        std::io::stderr().flush()?;
        let mut answer = String::new();
        stdin.read_line(&mut answer)?;
        if !matches!(answer.trim().to_lowercase().as_str(), "y" | "yes") {
            bail!("not confirmed; nothing was deleted");
        }
    }
    let req = ctx
        .api
        .request(Method::DELETE, ctx.api.url(&["credentials", id]));
    ctx.api.send(req)?;
    if ctx.json {
        print_json(&json!({ "id": id, "deleted": true }))
    } else {
        println!("Deleted credential {id}.");
        Ok(())
    }
}

fn print_credential(c: &Credential) {
    let mut rows = vec![
        ("ID".to_string(), c.id.clone()),
        ("Name".into(), c.name.clone()),
        ("Description".into(), or_dash(&c.description)),
        (
            "Integration".into(),
            format!("{} ({})", c.integration_name, c.integration),
        ),
        ("Auth type".into(), c.auth_type.clone()),
        (
            "Status".into(),
            match &c.status_message {
                Some(m) => format!("{}: {m}", c.status),
                None => c.status.clone(),
            },
        ),
        (
            "Checked".into(),
            c.checked_at.as_deref().map_or("never".into(), short_time),
        ),
        ("API key".into(), c.api_key.to_string()),
        ("Scopes".into(), or_dash(&c.scopes.join(", "))),
    ];
    for p in &c.config_params {
        let value = match &p.value {
            ParamValue::Plain(v) => v.clone(),
            ParamValue::Secret(s) => s.to_string(),
        };
        rows.push((format!("Param {}", p.key), value));
    }
    for (role, service) in &c.services {
        rows.push((format!("Service {role}"), service.clone()));
    }
    rows.push(("Webhook URL".into(), c.callback_urls.webhook_url.clone()));
    rows.push(("Action URL".into(), c.callback_urls.action_url.clone()));
    if let Some(u) = &c.callback_urls.authentication_url {
        rows.push(("Authentication URL".into(), u.clone()));
    }
    rows.push(("Version".into(), c.version.to_string()));
    rows.push((
        "Created".into(),
        format!("{} by {}", short_time(&c.created_at), c.created_by),
    ));
    rows.push((
        "Updated".into(),
        format!("{} by {}", short_time(&c.updated_at), c.updated_by),
    ));
    println!("{}", render(&kv_table(rows)));
}

// ---------------------------------------------------------------------------
// Integrations
// ---------------------------------------------------------------------------

fn list_integrations(ctx: &Ctx, q: Option<String>) -> Result<()> {
    let query: Vec<(&str, String)> = q.map(|q| ("q", q)).into_iter().collect();
    let page = ctx.api.list(&["integrations"], &query, true)?;
    ctx.show(page, |page: &Page<IntegrationSummary>| {
        if page.items.is_empty() {
            println!("No integrations.");
            return;
        }
        let mut t = list_table(&["ID", "NAME", "AUTH TYPES", "WEBHOOKS", "DESCRIPTION"]);
        for i in &page.items {
            t.add_row(vec![
                i.id.clone(),
                i.name.clone(),
                i.auth_types.join(", "),
                yes_no(i.sends_webhooks).into(),
                i.description.clone(),
            ]);
        }
        println!("{}", render(&t));
    })
}

fn show_integration(ctx: &Ctx, id: &str) -> Result<()> {
    let value = ctx.api.get(ctx.api.url(&["integrations", id]))?;
    ctx.show(value, |i: &IntegrationDetail| {
        let s = &i.summary;
        println!(
            "{}",
            render(&kv_table(vec![
                ("ID".into(), s.id.clone()),
                ("Name".into(), s.name.clone()),
                ("Description".into(), or_dash(&s.description)),
                ("Base URL".into(), i.base_url.clone()),
                ("Hosts".into(), or_dash(&i.hosts.join(", "))),
                (
                    "Base URL override".into(),
                    if i.allow_base_url_override {
                        "allowed (param base_url)".into()
                    } else {
                        "no".into()
                    },
                ),
                (
                    "Webhooks".into(),
                    i.webhook_scheme
                        .as_deref()
                        .map_or("none".into(), |s| format!("signed ({s})")),
                ),
            ]))
        );
        for a in &i.auth {
            println!("\nAuth type {} ({})", a.label, a.type_);
            let mut fields = list_table(&["FIELD", "LABEL", "SECRET", "REQUIRED", "PATTERN"]);
            for f in &a.fields {
                fields.add_row(vec![
                    f.name.clone(),
                    f.label.clone(),
                    yes_no(f.secret).into(),
                    yes_no(f.required).into(),
                    f.pattern.clone().unwrap_or_else(|| "-".into()),
                ]);
            }
            println!("{}", render(&fields));
            let mut rows = Vec::new();
            if let Some(apply) = &a.apply {
                rows.push(("Applied as".to_string(), apply.to_string()));
            }
            if let Some(v) = &a.validation {
                let statuses: Vec<String> = v.success_status.iter().map(u16::to_string).collect();
                rows.push((
                    "Validation".into(),
                    format!(
                        "{} {} (expects {})",
                        v.method,
                        v.path,
                        statuses.join(" or ")
                    ),
                ));
            }
            rows.push(("Scopes".into(), or_dash(&a.scopes.join(", "))));
            println!("{}", render(&kv_table(rows)));
        }
        if !i.defaults.is_empty() {
            println!("\nDefault services");
            let mut t = list_table(&["ROLE", "SERVICE"]);
            for (role, service) in &i.defaults {
                t.add_row(vec![role.clone(), service.clone()]);
            }
            println!("{}", render(&t));
        }
    })
}

// ---------------------------------------------------------------------------
// Tokens and tenants
// ---------------------------------------------------------------------------

fn create_token(ctx: &Ctx, name: &str, role: &str) -> Result<()> {
    let req = ctx
        .api
        .request(Method::POST, ctx.api.url(&["tokens"]))
        .json(&json!({ "name": name, "role": role }));
    let issued = json_body(ctx.api.send(req)?)?;
    ctx.show(issued, |t: &IssuedToken| {
        println!(
            "Created token {} ({:?}, role {}).",
            t.info.id, t.info.name, t.info.role
        );
        print_token_once(&t.token);
    })
}

fn list_tokens(ctx: &Ctx) -> Result<()> {
    let page = ctx.api.list(&["tokens"], &[], true)?;
    ctx.show(page, |page: &Page<Token>| {
        let mut t = list_table(&["ID", "NAME", "ROLE", "CREATED", "REVOKED"]);
        for tok in &page.items {
            t.add_row(vec![
                tok.id.clone(),
                tok.name.clone(),
                tok.role.clone(),
                short_time(&tok.created_at),
                tok.revoked_at.as_deref().map_or("-".into(), short_time),
            ]);
        }
        println!("{}", render(&t));
    })
}

fn revoke_token(ctx: &Ctx, id: &str) -> Result<()> {
    ctx.api.send(
        ctx.api
            .request(Method::DELETE, ctx.api.url(&["tokens", id])),
    )?;
    if ctx.json {
        print_json(&json!({ "id": id, "revoked": true }))
    } else {
        println!("Revoked token {id}.");
        Ok(())
    }
}

fn create_tenant(ctx: &Ctx, name: &str) -> Result<()> {
    let req = ctx
        .api
        .request(Method::POST, ctx.api.url(&["tenants"]))
        .json(&json!({ "name": name }));
    let created = json_body(ctx.api.send(req)?)?;
    ctx.show(created, |c: &CreatedTenant| {
        println!("Created tenant {} ({:?}).", c.tenant.id, c.tenant.name);
        println!(
            "Its first admin token is {} (role {}).",
            c.admin_token.info.id, c.admin_token.info.role
        );
        print_token_once(&c.admin_token.token);
    })
}

fn list_tenants(ctx: &Ctx) -> Result<()> {
    let page = ctx.api.list(&["tenants"], &[], true)?;
    ctx.show(page, |page: &Page<Tenant>| {
        let mut t = list_table(&["ID", "NAME", "OPERATOR", "CREATED"]);
        for tenant in &page.items {
            t.add_row(vec![
                tenant.id.clone(),
                tenant.name.clone(),
                yes_no(tenant.is_operator).into(),
                short_time(&tenant.created_at),
            ]);
        }
        println!("{}", render(&t));
    })
}

#[derive(Deserialize)]
struct Keys {
    active: String,
    keys: Vec<KeyOut>,
    rotation: Option<Rotation>,
}

#[derive(Deserialize)]
struct KeyOut {
    id: String,
    state: String,
    credentials: u64,
    held_here: bool,
    created_at: String,
    retired_at: Option<String>,
}

#[derive(Deserialize)]
struct Rotation {
    from: String,
    to: String,
    remaining: u64,
    done: u64,
}

fn print_keys(k: &Keys) {
    let mut t = list_table(&[
        "KEY",
        "STATE",
        "CREDENTIALS",
        "HELD HERE",
        "CREATED",
        "RETIRED",
    ]);
    for key in &k.keys {
        t.add_row(vec![
            key.id.clone(),
            key.state.clone(),
            key.credentials.to_string(),
            yes_no(key.held_here).into(),
            short_time(&key.created_at),
            key.retired_at
                .as_deref()
                .map(short_time)
                .unwrap_or_default(),
        ]);
    }
    println!("{}", render(&t));
    match &k.rotation {
        Some(r) => println!(
            "Rotating from {} to {}: {} re-wrapped or new, {} still on the old key.",
            r.from, r.to, r.done, r.remaining
        ),
        None => println!("Active key {}; no rotation in progress.", k.active),
    }
}

fn key_status(ctx: &Ctx) -> Result<()> {
    let status = ctx.api.get(ctx.api.url(&["keys"]))?;
    ctx.show(status, print_keys)
}

fn rotate_key(ctx: &Ctx, to: Option<String>, wait: bool) -> Result<()> {
    let body = match &to {
        Some(id) => json!({ "to": id }),
        None => json!({}),
    };
    let req = ctx
        .api
        .request(Method::POST, ctx.api.url(&["keys", "rotate"]))
        .json(&body);
    let mut status = json_body(ctx.api.send(req)?)?;
    if !ctx.json {
        let k: Keys = serde_json::from_value(status.clone())?;
        println!(
            "Key {} is now active; data keys are being re-wrapped with it.",
            k.active
        );
    }
    loop {
        let k: Keys = serde_json::from_value(status.clone())?;
        let Some(r) = k.rotation.filter(|_| wait) else {
            break;
        };
        if !ctx.json {
            eprintln!("  {} re-wrapped or new, {} to go", r.done, r.remaining);
        }
        std::thread::sleep(Duration::from_millis(500));
        status = ctx.api.get(ctx.api.url(&["keys"]))?;
    }
    ctx.show(status, |k: &Keys| {
        if wait {
            println!("Done: nothing uses the old key any more, and it is retired.");
        }
        print_keys(k)
    })
}

fn generate_key(key_file: Option<&Path>) -> Result<()> {
    let key = std::sync::Arc::new(crypto::MasterKey::generate()?);
    match key_file {
        Some(file) => {
            let ring = match crypto::KeyRing::read_file(file)? {
                Some(ring) => ring.with(key.clone()),
                None => crypto::KeyRing::new(vec![key.clone()]),
            };
            ring.write_file(file)
                .with_context(|| format!("cannot write {}", file.display()))?;
            println!("Added master key {} to {}.", key.id(), file.display());
            println!("Give every replica this key file, restart them, then run `latchkey keys rotate --to {}`.", key.id());
        }
        None => {
            eprintln!("Master key {} (base64 below). Add it to LATCHKEY_MASTER_KEY of every replica, comma-separated, restart them, then run `latchkey keys rotate --to {}`.", key.id(), key.id());
            println!("{}", key.to_base64().as_str());
        }
    }
    Ok(())
}

/// Prints a freshly issued token, set apart so it is easy to copy.
fn print_token_once(token: &str) {
    println!();
    println!("    {TOKEN_ENV}={token}");
    println!();
    println!("This is the only time the token is shown: store it now.");
}

// ---------------------------------------------------------------------------
// Tables
// ---------------------------------------------------------------------------

/// A borderless table with a header row.
fn list_table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING).set_header(header.to_vec());
    t
}

/// A borderless two-column table of labels and values.
fn kv_table(rows: Vec<(String, String)>) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING);
    for (k, v) in rows {
        t.add_row(vec![k, v]);
    }
    t
}

/// A table as text, without the padding comfy-table puts at the start and
/// end of every line.
fn render(t: &Table) -> String {
    t.lines()
        .map(|l| l.strip_prefix(' ').unwrap_or(&l).trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `2024-05-01T12:34:56.789Z` → `2024-05-01 12:34:56 UTC`; anything else as-is.
fn short_time(t: &str) -> String {
    match (t.get(..10), t.get(10..11), t.get(11..19)) {
        (Some(date), Some("T"), Some(time)) => format!("{date} {time} UTC"),
        _ => t.to_string(),
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
