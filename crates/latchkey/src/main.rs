//! The `latchkey` binary: `serve` runs the service; every other command is a
//! client of the REST API (see `cli.rs`). This file is the composition root:
//! it parses arguments and wires configuration, nothing more.

mod cli;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use secrecy::SecretString;

/// jemalloc, not glibc's malloc: in the benchmark's profile glibc's malloc
/// and free (with `malloc_consolidate`) took about a fifth of the request
/// threads' time, and with jemalloc a get took about 15% less CPU and an
/// ingested event about 7% less. It costs about 3 MB more idle RSS.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "latchkey",
    version,
    about = "App Credentials: store, validate and use third-party app credentials."
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (SQLite in the data dir by default).
    Serve(ServeArgs),
    /// Show or apply the PostgreSQL schema migrations (the embedded SQLite
    /// applies its migrations at start).
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
    },
    /// Copy a whole installation to another database (e.g. SQLite to
    /// PostgreSQL). Secrets move sealed: the copy needs no master key, and
    /// the target opens with the source's key.
    Copy(CopyArgs),
    /// Write a consistent online snapshot of an installation to a new file
    /// (a one-file SQLite database, mode 0600). The server may keep serving.
    /// The file holds secrets sealed, not the master key: back that up apart.
    Backup(BackupArgs),
    /// Bring a backup file back into a new, empty data dir or database.
    Restore(RestoreArgs),
    #[command(flatten)]
    Client(cli::ClientCommand),
}

#[derive(clap::Args)]
struct CopyArgs {
    /// The installation to copy: `sqlite://DATA_DIR`, `sqlite://FILE.db` or
    /// `postgres://…`. It may keep serving: the copy reads one snapshot.
    #[arg(long)]
    from: String,
    /// Where to: a new or empty database, same forms as --from. Migrated
    /// first; written in one transaction, so a failed copy leaves it empty.
    #[arg(long)]
    to: String,
    /// The PostgreSQL schema of --from.
    #[arg(long)]
    from_schema: Option<String>,
    /// The PostgreSQL schema of --to (created if missing).
    #[arg(long)]
    to_schema: Option<String>,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", env = "LATCHKEY_LISTEN")]
    listen: SocketAddr,
    /// Where the database and the master key file live.
    #[arg(long, default_value = "./latchkey-data", env = "LATCHKEY_DATA_DIR")]
    data_dir: PathBuf,
    /// Base of the callback URLs (default http://{listen}).
    #[arg(long, env = "LATCHKEY_PUBLIC_URL")]
    public_url: Option<String>,
    /// Hosts (`api.corp.test`, `*.corp.test`), addresses or networks
    /// (`127.0.0.1`, `10.0.0.0/8`) outbound calls may reach beyond the
    /// catalog's declared hosts, even when private or loopback. Repeatable;
    /// comma-separated in the environment variable.
    #[arg(long, env = "LATCHKEY_ALLOW_OUTBOUND", value_delimiter = ',')]
    allow_outbound: Vec<String>,
    /// Time limit of each outbound call, in seconds.
    #[arg(long, default_value_t = 10, env = "LATCHKEY_OUTBOUND_TIMEOUT")]
    outbound_timeout_secs: u64,
    /// A PostgreSQL database shared by any number of replicas
    /// (`postgres://user@host/db`); leave out for the embedded SQLite.
    #[arg(long, env = "LATCHKEY_DATABASE_URL")]
    database_url: Option<String>,
    /// The PostgreSQL schema to use (created if missing).
    #[arg(long, env = "LATCHKEY_DATABASE_SCHEMA", requires = "database_url")]
    database_schema: Option<String>,
    /// Most connections this replica opens to PostgreSQL (at least 2).
    /// Every replica opens its own, so keep replicas × this under the
    /// server's `max_connections` less its `superuser_reserved_connections`
    /// (100 and 3 by default).
    #[arg(long, default_value_t = server::DEFAULT_DATABASE_POOL_SIZE as u16,
          env = "LATCHKEY_DATABASE_POOL_SIZE", requires = "database_url",
          value_parser = clap::value_parser!(u16)
              .range(server::MIN_DATABASE_POOL_SIZE as i64..=1000))]
    database_pool_size: u16,
    /// Failed sign-ins or bad tokens an address may send per minute; past
    /// that it gets 429 until the minute is over. 0 turns it off.
    #[arg(long, default_value_t = server::app::DEFAULT_AUTH_FAILURES, env = "LATCHKEY_AUTH_FAILURE_LIMIT")]
    auth_failure_limit: u32,
    /// Deliveries per second each credential may receive (bursts of twice
    /// that); past that, 429 with Retry-After. 0 turns it off.
    #[arg(long, default_value_t = server::app::DEFAULT_INGRESS_PER_SECOND, env = "LATCHKEY_INGRESS_LIMIT")]
    ingress_limit: u32,
    /// Log format.
    #[arg(long, value_parser = ["text", "json"], default_value = "text", env = "LATCHKEY_LOG_FORMAT")]
    log_format: String,
}

#[derive(Subcommand)]
enum MigrateAction {
    /// Apply the pending migrations, under the lock the servers take too.
    Apply(MigrateArgs),
    /// List every migration and whether it is applied; changes nothing.
    Status(MigrateArgs),
}

#[derive(clap::Args)]
struct MigrateArgs {
    /// The PostgreSQL database (`postgres://user@host/db`). The embedded
    /// SQLite needs no command: it applies its migrations at start.
    #[arg(long, env = "LATCHKEY_DATABASE_URL")]
    database_url: Option<String>,
    /// The PostgreSQL schema (default: the connection's search_path).
    #[arg(long, env = "LATCHKEY_DATABASE_SCHEMA")]
    database_schema: Option<String>,
}

#[derive(clap::Args)]
struct BackupArgs {
    /// The installation: `sqlite://DATA_DIR` or `postgres://…`.
    #[arg(long, default_value = "sqlite://./latchkey-data")]
    from: String,
    /// The PostgreSQL schema of --from.
    #[arg(long)]
    from_schema: Option<String>,
    /// The backup file to write; never overwritten.
    #[arg(long)]
    to: PathBuf,
}

#[derive(clap::Args)]
struct RestoreArgs {
    /// The backup file.
    #[arg(long)]
    from: PathBuf,
    /// Where to: `sqlite://DATA_DIR` or `postgres://…`, new or empty.
    #[arg(long)]
    to: String,
    /// The PostgreSQL schema of --to (created if missing).
    #[arg(long)]
    to_schema: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.command {
        Command::Serve(s) => serve(s),
        Command::Migrate { action } => migrate(action),
        Command::Copy(c) => copy(c),
        Command::Backup(b) => backup(b),
        Command::Restore(r) => restore(r),
        Command::Client(c) => cli::run(c),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(&args.log_format);
    let master_key = std::env::var("LATCHKEY_MASTER_KEY")
        .ok()
        .map(SecretString::from);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // The handlers are installed before start-up: a signal during it
        // stops the process there, and one sent as soon as `ready in`
        // appears drains, as any later one does.
        let stop = stop_on_signal()?;
        let config = server::Config {
            public_url: args.public_url,
            master_key,
            allow_outbound: args.allow_outbound,
            database_url: args.database_url,
            database_schema: args.database_schema,
            database_pool_size: usize::from(args.database_pool_size),
            outbound_timeout: std::time::Duration::from_secs(args.outbound_timeout_secs),
            auth_failure_limit: args.auth_failure_limit,
            ingress_limit: args.ingress_limit,
            ..server::Config::new(args.listen, args.data_dir)
        };
        let draining = {
            let stop = stop.clone();
            async move {
                stopped(stop).await;
                eprintln!("latchkey: shutting down, finishing requests in flight");
            }
        };
        // Start-up can wait a long time (another replica's migration holds
        // the lock). On a signal it gets one more second, so that a first
        // start that has just stored its admin token still prints it (and
        // then drains at once); past that it ends where it is, which leaves
        // nothing half-done: migrations and writes are transactions.
        let start = server::start(config, draining);
        tokio::pin!(start);
        let started = tokio::select! {
            biased;
            started = &mut start => started,
            () = stopped(stop) => {
                match tokio::time::timeout(std::time::Duration::from_secs(1), &mut start).await {
                    Ok(started) => started,
                    Err(_) => {
                        eprintln!("latchkey: stopped by a signal before start-up finished");
                        std::process::exit(0);
                    }
                }
            }
        };
        let (report, serving) = match started {
            Ok(started) => started,
            Err(e) => {
                eprintln!("latchkey: cannot start: {e:#}");
                std::process::exit(1);
            }
        };
        print_banner(&report);
        serving.await?;
        eprintln!("latchkey: stopped");
        Ok(())
    })
}

fn migrate(action: MigrateAction) -> anyhow::Result<()> {
    let (args, apply) = match action {
        MigrateAction::Apply(a) => (a, true),
        MigrateAction::Status(a) => (a, false),
    };
    let Some(url) = args.database_url else {
        println!("No --database-url (or LATCHKEY_DATABASE_URL): the embedded SQLite applies its migrations at start; nothing to do.");
        return Ok(());
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, applied) = match runtime.block_on(server::migrate(
        &url,
        args.database_schema.as_deref(),
        apply,
    )) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("latchkey: {e:#}");
            std::process::exit(1);
        }
    };
    if apply {
        if applied.is_empty() {
            println!("nothing to apply: the schema is up to date");
        } else {
            for v in &applied {
                println!("applied {v:04}");
            }
        }
    }
    for (version, is_applied) in status {
        let state = if is_applied { "applied" } else { "pending" };
        println!("{version:04}  {state}");
    }
    Ok(())
}

fn copy(args: CopyArgs) -> anyhow::Result<()> {
    use server::ops::{self, Location};
    let from = Location::parse(&args.from, args.from_schema.as_deref())?;
    let to = Location::parse(&args.to, args.to_schema.as_deref())?;
    let copied = run_op(ops::copy(&from, &to))?;
    println!(
        "copied {} to {}",
        redact_url(&args.from),
        redact_url(&args.to)
    );
    report_rows(&copied);
    Ok(())
}

fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let from = server::ops::Location::parse(&args.from, args.from_schema.as_deref())?;
    let copied = run_op(server::ops::backup(&from, &args.to))?;
    println!(
        "backed up {} to {}",
        redact_url(&args.from),
        args.to.display()
    );
    report_rows(&copied);
    Ok(())
}

fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let to = server::ops::Location::parse(&args.to, args.to_schema.as_deref())?;
    let copied = run_op(server::ops::restore(&args.from, &to))?;
    println!(
        "restored {} to {}",
        args.from.display(),
        redact_url(&args.to)
    );
    report_rows(&copied);
    Ok(())
}

/// Runs an operator command to its end; a failure is printed with its
/// causes and exits 1.
fn run_op<T>(op: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match runtime.block_on(op) {
        Ok(t) => Ok(t),
        Err(e) => {
            eprintln!("latchkey: {e:#}");
            std::process::exit(1);
        }
    }
}

fn report_rows(copied: &server::ops::Copied) {
    for (table, rows) in &copied.rows {
        println!("  {table:<20} {rows:>10} rows");
    }
    match &copied.key_id {
        Some(id) => println!(
            "The secrets are still sealed with master key {id}: start the target with that key \
             (its master.key file or LATCHKEY_MASTER_KEY)."
        ),
        None => {
            println!("The source had never been started: there is no master key to carry over.")
        }
    }
}

/// A database URL without its password, for printing.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

fn print_banner(r: &server::StartReport) {
    use secrecy::ExposeSecret;
    use server::KeySource;
    println!("Latchkey {}", env!("CARGO_PKG_VERSION"));
    println!("  data dir     {}", r.data_dir.display());
    match r.key_source {
        KeySource::CreatedFile => {
            println!(
                "  master key   created {} (mode 0600)",
                r.key_file.display()
            );
            println!(
                "               BACK IT UP NOW: without it the stored secrets cannot be opened."
            );
        }
        KeySource::ExistingFile => println!("  master key   {}", r.key_file.display()),
        KeySource::Environment => println!("  master key   from LATCHKEY_MASTER_KEY"),
    }
    println!("  fingerprint  {}", r.key_id);
    if let Some(token) = &r.first_admin_token {
        println!("  first start: created the operator tenant and its admin token (shown only this once):");
        println!("    LATCHKEY_TOKEN={}", token.expose_secret());
    }
    println!(
        "  API          http://{}/v1  (OpenAPI at /v1/openapi.json)",
        r.addr
    );
    println!("  callbacks    {}/hooks/{{credential_id}}", r.public_url);
    println!("  dashboard    http://{}/app/credentials", r.addr);
    println!("  ready in     {} ms", r.ready_in.as_millis());
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LATCHKEY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Installs the SIGTERM and SIGINT handlers now and returns a flag that
/// turns true on the first of them. Installing them lazily, on a future's
/// first poll, would leave the default action (death) in place until then.
fn stop_on_signal() -> anyhow::Result<tokio::sync::watch::Receiver<bool>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let (raise, flag) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = term.recv() => {},
        }
        let _ = raise.send(true);
    });
    Ok(flag)
}

/// Resolves once [`stop_on_signal`]'s flag is up.
async fn stopped(mut flag: tokio::sync::watch::Receiver<bool>) {
    let _ = flag.wait_for(|up| *up).await;
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn printed_urls_hide_the_password_only() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact_url("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(redact_url("sqlite://./data"), "sqlite://./data");
    }
}
