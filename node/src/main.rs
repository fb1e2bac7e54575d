//! The `berth` binary: installs the ring crypto provider, parses flags, loads configuration,
//! starts telemetry, raises the open-file limit, binds, and calls [`berth_node::run`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use berth_node::config::{Config, LogFormat};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "A geo-replicated OCI container registry"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a registry node.
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Configuration file (TOML). Also `BERTH_CONFIG`.
    #[arg(long, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// Address of the registry HTTP front [default: 127.0.0.1:5000].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory [default: ./berth-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Log format [default: text].
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// This node's id in the cluster, at least 1, never reused [default: 1].
    #[arg(long)]
    node_id: Option<u64>,
    /// Address of the cluster gRPC endpoint [default: 127.0.0.1:7000].
    #[arg(long)]
    cluster_listen: Option<SocketAddr>,
    /// URL clients and peers use to reach this node's HTTP front [default: http://<listen>].
    #[arg(long)]
    advertise_url: Option<String>,
    /// host:port peers and clusterctl use to reach the cluster endpoint
    /// [default: the cluster-listen address].
    #[arg(long)]
    advertise_cluster: Option<String>,
    /// Region this node is placed in [default: default].
    #[arg(long)]
    region: Option<String>,
    /// Zone within the region [default: default].
    #[arg(long)]
    zone: Option<String>,
    /// Cluster address of any member: on first start (empty data directory), ask it to add
    /// this node as a learner instead of starting a new cluster.
    #[arg(long)]
    join: Option<String>,
    /// PEM certificate chain of the registry port: serve HTTPS (with --tls-key)
    /// [tls.cert_file].
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key of that certificate [tls.key_file].
    #[arg(long)]
    tls_key: Option<PathBuf>,
}

fn load_config(args: &ServeArgs) -> Result<Config, String> {
    let text = match &args.config {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("failed to read config file {}: {e}", path.display()))?,
        None => String::new(),
    };
    let env: BTreeMap<String, String> = std::env::vars().collect();
    // Checked once the flags are applied: a flag may settle what the file and environment
    // leave invalid (e.g. `--tls-cert` with `BERTH_LISTEN=0.0.0.0:5000`).
    let mut config = Config::parse(&text, &env).map_err(|e| e.to_string())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    for (flag, field) in [
        (&args.tls_cert, &mut config.tls.cert_file),
        (&args.tls_key, &mut config.tls.key_file),
    ] {
        if let Some(path) = flag {
            *field = Some(path.clone());
        }
    }
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(format) = args.log_format {
        config.log_format = format;
    }
    if let Some(id) = args.node_id {
        config.node_id = id;
    }
    if let Some(addr) = args.cluster_listen {
        config.cluster_listen = addr;
    }
    for (flag, field) in [
        (&args.advertise_url, &mut config.advertise_url),
        (&args.advertise_cluster, &mut config.advertise_cluster),
        (&args.join, &mut config.join),
    ] {
        if let Some(v) = flag {
            *field = Some(v.clone());
        }
    }
    for (flag, field) in [
        (&args.region, &mut config.region),
        (&args.zone, &mut config.zone),
    ] {
        if let Some(v) = flag {
            *field = v.clone();
        }
    }
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    // Colours only on a terminal: a log file or a collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("failed to install the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn main() -> ExitCode {
    // ring, not aws-lc-rs, is the process's one crypto provider (docs/adr/017).
    rustls::crypto::ring::default_provider()
        .install_default()
        .expect("no crypto provider is installed before main");
    // Blob transfers may hold up to `MAX_TRANSFER_THREADS` blocking threads; the pool keeps as
    // many again for Raft storage, metadata scans and file operations.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(2 * berth_node::blobstore::MAX_TRANSFER_THREADS)
        .build()
        .expect("failed to build the tokio runtime");
    runtime.block_on(serve())
}

async fn serve() -> ExitCode {
    let cli = Cli::parse();
    let Command::Serve(args) = cli.command;
    let config = match load_config(&args) {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("berth: {msg}");
            return ExitCode::from(2);
        }
    };
    init_tracing(config.log_format);
    // Every connection is a file: use all the process may have (the connection cap is
    // derived from it in `run`).
    match berth_node::server::raise_fd_limit() {
        Ok((at_start, soft, hard)) => {
            tracing::info!(soft, hard, soft_at_start = at_start, "open-file limit")
        }
        Err(e) => tracing::warn!(error = %e, "failed to raise the open-file limit"),
    }
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listen = %config.listen, error = %e, "failed to bind");
            return ExitCode::FAILURE;
        }
    };
    let cluster_listener = match tokio::net::TcpListener::bind(config.cluster_listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(cluster_listen = %config.cluster_listen, error = %e, "failed to bind");
            return ExitCode::FAILURE;
        }
    };
    match berth_node::run(config, listener, cluster_listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %berth_node::error_chain(&e), "berth stopped on an error");
            ExitCode::FAILURE
        }
    }
}
