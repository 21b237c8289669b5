//! The command line: `run` (the default) and `check`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sd_notify::NotifyState;

use crate::explain::{Outcome, Question};
use crate::server::{Proxy, ReloadTrigger};
use crate::snapshot::LoadCache;
use crate::snapshot::{self, Snapshot};

const DEFAULT_CONFIG: &str = "/etc/gatehouse/gatehouse.toml";

#[derive(Debug, Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "TLS-terminating edge proxy for app environments"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The main configuration file.
    #[arg(long, short, global = true, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve traffic (the default).
    Run {
        /// Threads that serve connections (like nginx's `worker_processes`); default: one per
        /// CPU core.
        #[arg(long)]
        worker_threads: Option<std::num::NonZeroUsize>,
    },
    /// Validate the configuration as a start would, print a summary, and exit.
    Check,
    /// Validate the configuration, then ask the running instance (through its admin listener)
    /// to reload it. Exit status: 0 reloaded, 1 refused or unreachable.
    Reload,
    /// Say which environment, rule and profile a request would meet, and whether it would pass.
    /// Exit status: 0 allowed, 3 denied, 4 not routed (404/400), 1 configuration error.
    Explain {
        /// The request's host (`Host` / `:authority`).
        #[arg(long)]
        host: String,
        /// The request's path, as sent (it is normalised as the request path would).
        #[arg(long, default_value = "/")]
        path: String,
        /// The client address the decision sees (after PROXY protocol / trusted forwarders).
        #[arg(long)]
        client: IpAddr,
        /// A PEM certificate chain the client would present.
        #[arg(long)]
        certificate: Option<PathBuf>,
    },
    /// Re-decide the requests of a JSON access log under this configuration and report what
    /// would change. Exit status: 0 nothing newly refused, 3 requests newly denied (403),
    /// 4 requests that reached the app newly refused otherwise (404, 421, 400), 1 configuration
    /// or read error.
    Replay {
        /// The JSON access log (`logging.access_log_format = "json"`); `-` reads standard input
        /// (for example `zcat access.log.gz | gatehouse replay --access-log -`).
        #[arg(long)]
        access_log: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run { worker_threads: None }) {
        Command::Run { worker_threads } => run(&cli.config, worker_threads),
        Command::Check => check(&cli.config),
        Command::Reload => reload(&cli.config),
        Command::Explain {
            host,
            path,
            client,
            certificate,
        } => explain(
            &cli.config,
            &Question {
                host: &host,
                path: &path,
                client,
                certificate: certificate.as_deref(),
            },
        ),
        Command::Replay { access_log, json } => replay(&cli.config, &access_log, json),
    }
}

fn check(config: &Path) -> ExitCode {
    match snapshot::load(config) {
        Ok(snapshot) => {
            print!("{}", snapshot.summary);
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("configuration {} is invalid:\n{errors}", config.display());
            ExitCode::FAILURE
        }
    }
}

/// `gatehouse reload`: ask the running process to reload. It reads only the main file here (for
/// the admin listener); the running process loads, checks and reuses what it parsed before, so
/// that a reload after one changed file stays fast with thousands of environments.
fn reload(config: &Path) -> ExitCode {
    let admin = match snapshot::admin_address(config) {
        Ok(admin) => admin,
        Err(errors) => {
            eprintln!(
                "configuration {} is invalid, nothing was reloaded:\n{errors}",
                config.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let Some(admin) = admin else {
        eprintln!("the admin listener is off (listen.admin = \"off\"): reload with SIGHUP instead");
        return ExitCode::FAILURE;
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::server::admin_client::post_reload(admin)) {
        Ok((status, body)) if status.is_success() => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Ok((status, body)) if status == http::StatusCode::UNPROCESSABLE_ENTITY => {
            eprint!(
                "configuration {} is invalid, nothing was reloaded: {body}",
                config.display()
            );
            ExitCode::FAILURE
        }
        Ok((status, body)) => {
            eprint!("the running gatehouse answered {status}: {body}");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("cannot reach the running gatehouse at http://{admin}/reload: {err}");
            ExitCode::FAILURE
        }
    }
}

fn explain(config: &Path, question: &Question<'_>) -> ExitCode {
    let snapshot = match snapshot::load(config) {
        Ok(snapshot) => snapshot,
        Err(errors) => {
            eprintln!("configuration {} is invalid:\n{errors}", config.display());
            return ExitCode::FAILURE;
        }
    };
    match crate::explain::explain(&snapshot, question) {
        Ok(explanation) => {
            print!("{explanation}");
            ExitCode::from(match explanation.outcome {
                Outcome::Allowed => 0,
                Outcome::Denied => 3,
                Outcome::NotRouted => 4,
            })
        }
        Err(err) => {
            eprintln!("{err}");
            ExitCode::FAILURE
        }
    }
}

fn replay(config: &Path, access_log: &Path, json: bool) -> ExitCode {
    let snapshot = match snapshot::load(config) {
        Ok(snapshot) => snapshot,
        Err(errors) => {
            eprintln!("configuration {} is invalid:\n{errors}", config.display());
            return ExitCode::FAILURE;
        }
    };
    let mut replay = crate::replay::Replay::new(&snapshot);
    let read = if access_log == Path::new("-") {
        replay.read(&mut std::io::stdin().lock())
    } else {
        std::fs::File::open(access_log)
            .and_then(|file| replay.read(&mut std::io::BufReader::with_capacity(1 << 20, file)))
    };
    if let Err(err) = read {
        eprintln!("cannot read {}: {err}", access_log.display());
        return ExitCode::FAILURE;
    }
    let report = replay.finish();
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(err) => {
                eprintln!("cannot write the report: {err}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        println!(
            "replayed {} under {} (configuration sha256 {})",
            access_log.display(),
            config.display(),
            snapshot.sha256
        );
        print!("{report}");
    }
    ExitCode::from(if report.newly_denied() > 0 {
        3
    } else if report.newly_refused() > 0 {
        4
    } else {
        0
    })
}

fn run(config: &Path, worker_threads: Option<std::num::NonZeroUsize>) -> ExitCode {
    init_logging();
    let mut cache = LoadCache::default();
    let snapshot = match snapshot::load_reusing(config, &mut cache) {
        Ok(snapshot) => snapshot,
        Err(errors) => {
            for error in &errors.0 {
                tracing::error!("{error}");
            }
            eprintln!("configuration {} is invalid:\n{errors}", config.display());
            return ExitCode::FAILURE;
        }
    };
    crate::memory::return_freed();
    // One worker thread: tokio's single-threaded scheduler, which spares the work-stealing
    // bookkeeping (as an nginx worker runs one event loop).
    let mut builder = match worker_threads.map(std::num::NonZeroUsize::get) {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(threads) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(snapshot, cache, config))
}

async fn serve(snapshot: Snapshot, cache: LoadCache, config: &Path) -> ExitCode {
    for warning in &snapshot.summary.warnings {
        tracing::warn!("{warning}");
    }
    tracing::info!(
        environments = snapshot.environments.len(),
        domains = snapshot.routes.len(),
        "configuration loaded"
    );
    let proxy = match Proxy::start_reusing(snapshot, cache).await {
        Ok(proxy) => proxy,
        Err(err) => {
            tracing::error!("{err}");
            return ExitCode::FAILURE;
        }
    };
    // Pairing the snapshot with its live state frees what it built on the way, as a load does.
    crate::memory::return_freed();
    let _watcher = match proxy.snapshot().settings.watch_files {
        true => crate::watch::spawn(proxy.shared(), config.to_path_buf())
            .map_err(|err| tracing::warn!(error = %err, "cannot watch configuration files; reload with SIGHUP"))
            .ok(),
        false => None,
    };
    let mut stop = match StopSignals::install() {
        Ok(stop) => stop,
        Err(err) => {
            tracing::error!(error = %err, "cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    tell_systemd(&[NotifyState::Ready]);
    serve_until_stopped(&proxy, config, &mut stop).await;
    tell_systemd(&[NotifyState::Stopping]);
    // The load balancer's turn: /readyz says 503 while every listener still accepts and serves,
    // for the grace period or until a second SIGTERM/SIGINT.
    proxy.leave_rotation();
    let grace = proxy.snapshot().settings.shutdown_grace;
    tracing::info!(
        grace_seconds = grace.as_secs_f64(),
        "stopping: /readyz says 503; still serving for the grace period"
    );
    tokio::select! {
        () = tokio::time::sleep(grace) => {}
        () = stop.next() => tracing::info!("stopping at once: grace period cut short"),
    }
    tracing::info!("stopping: closing the listeners, finishing requests in flight");
    let left = proxy.shutdown().await;
    if left > 0 {
        tracing::warn!(
            connections = left,
            "drain time is up; closing the connections still open"
        );
    }
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// SIGTERM and SIGINT, the signals that stop gatehouse (the first starts the shutdown, the
/// second cuts its grace period short), and SIGHUP, which reloads.
struct StopSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// The next SIGTERM or SIGINT.
    async fn next(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

/// Serve until SIGTERM or SIGINT; reload on SIGHUP. (SIGUSR1 reopens log files, in `logs`.)
async fn serve_until_stopped(proxy: &Proxy, config: &Path, signals: &mut StopSignals) {
    loop {
        tokio::select! {
            _ = signals.terminate.recv() => return,
            _ = signals.interrupt.recv() => return,
            _ = signals.hangup.recv() => {
                let mut reloading = vec![NotifyState::Reloading];
                reloading.extend(NotifyState::monotonic_usec_now().ok());
                tell_systemd(&reloading);
                // A refused configuration is logged and audited; the running one stays.
                // Off the serving thread: a reload reads files and may resolve host names.
                let shared = proxy.shared();
                let main_file = config.to_path_buf();
                let _ = tokio::task::spawn_blocking(move || shared.reload(&main_file, ReloadTrigger::Signal)).await;
                tell_systemd(&[NotifyState::Ready]);
            }
        }
    }
}

/// Tell systemd (`Type=notify`) how the service is doing; nothing without `NOTIFY_SOCKET`.
fn tell_systemd(states: &[NotifyState]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::warn!(error = %err, "cannot notify systemd");
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal: journald and files get plain text.
    let colours = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colours)
        .init();
}
