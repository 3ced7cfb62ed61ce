//! vmcheck-target: the storage target daemon that runs inside the target VM. It serves the
//! `vmcheck.target.v1` gRPC API and shares bdevs over NVMe-oF/TCP through Linux nvmet.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tracing::{info, warn};

use vmcheck::target::backing::Backing;
use vmcheck::target::configfs::ConfigFs;
use vmcheck::target::lio::{self, Lio};
use vmcheck::target::nvmet::{Nvmet, ROOT_LAYOUT};
use vmcheck::target::proto::target_server::TargetServer;
use vmcheck::target::service::{TargetService, Traddr};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "vmcheck storage target: gRPC over Linux nvmet (NVMe-oF/TCP) and LIO (iSCSI)"
)]
struct Args {
    /// Address the gRPC server listens on.
    #[arg(long, default_value = "0.0.0.0:10124")]
    listen: SocketAddr,
    /// The nvmet configfs root.
    #[arg(long, default_value = "/sys/kernel/config/nvmet")]
    configfs: PathBuf,
    /// LIO's configfs root (iSCSI shares); /sys/kernel/config/target, or with
    /// --emulate-configfs a `target` directory beside --configfs.
    #[arg(long)]
    lio_configfs: Option<PathBuf>,
    /// IPv4 address put in share URIs and bound by nvmet ports. Without it, looked up at each
    /// share: the only non-loopback IPv4 address, or else the only one in 192.0.2.0/24.
    #[arg(long)]
    traddr: Option<Ipv4Addr>,
    /// Directory of the malloc bdevs' files; RAM-backed only on tmpfs.
    #[arg(long, default_value = "/run/vmcheck-target/malloc")]
    malloc_dir: PathBuf,
    /// Where sysfs is mounted (block device sizes, and whether a device is still there).
    #[arg(long, default_value = "/sys")]
    sysfs: PathBuf,
    /// Emulate configfs in the --configfs directory instead of using the kernel's: to try the
    /// daemon without nvmet or root. Nothing is shared for real.
    #[arg(long)]
    emulate_configfs: bool,
    /// How often to look for backing devices that vanished (hot-remove), in milliseconds.
    #[arg(long, default_value_t = vmcheck::target::monitor::DEFAULT_PERIOD.as_millis() as u64, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    hotplug_poll_ms: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // The log goes to a serial console and into test logs: no colour codes.
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let fs = if args.emulate_configfs {
        ConfigFs::emulated(&args.configfs, &ROOT_LAYOUT)
            .with_context(|| format!("emulating configfs in {}", args.configfs.display()))?
    } else {
        ConfigFs::kernel(&args.configfs)
    };
    let nvmet = Nvmet::new(fs);
    let lio_root = match (&args.lio_configfs, args.emulate_configfs) {
        (Some(dir), _) => dir.clone(),
        (None, true) => args.configfs.with_file_name("target"),
        (None, false) => PathBuf::from(vmcheck::target::service::LIO_CONFIGFS),
    };
    let lio_fs = if args.emulate_configfs {
        ConfigFs::emulated(&lio_root, &lio::ROOT_LAYOUT)
            .with_context(|| format!("emulating LIO configfs in {}", lio_root.display()))?
    } else {
        ConfigFs::kernel(&lio_root)
    };
    let lio = Lio::new(lio_fs);
    if !lio.available() {
        warn!(
            "{} has no LIO tree: iSCSI sharing will fail until target_core_mod is loaded",
            lio_root.display()
        );
    }
    if !nvmet.available() {
        warn!(
            "{} has no nvmet tree: sharing will fail until nvmet is loaded and configfs mounted",
            args.configfs.display()
        );
    }
    let traddr = args.traddr.map_or(Traddr::Detect, Traddr::Fixed);
    let service = TargetService::new(nvmet, Backing::new(&args.sysfs, &args.malloc_dir), traddr)
        .with_lio(lio);
    match service.leftovers() {
        Ok(report) if report.is_empty() => info!("no leftover nvmet state"),
        Ok(report) => {
            warn!("leftover state from before this daemon (left alone):\n{}", report.trim_end())
        }
        Err(err) => warn!("cannot read nvmet state: {err}"),
    }

    let service = std::sync::Arc::new(service);
    let monitor = vmcheck::target::monitor::spawn(
        service.clone(),
        std::time::Duration::from_millis(args.hotplug_poll_ms),
    );

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = %listener.local_addr().unwrap_or(args.listen),
        configfs = %args.configfs.display(),
        traddr = ?traddr,
        "vmcheck-target serving"
    );
    tonic::transport::Server::builder()
        .add_service(TargetServer::from_arc(service))
        // TCP_NODELAY, as tonic's own `serve` sets it (its `serve_with_incoming` does not):
        // without it a reply written in parts waits for the peer's ACK of the first.
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown(),
        )
        .await
        .context("serving gRPC")?;
    monitor.abort();
    info!("stopped; nvmet state is left as it is");
    Ok(())
}

/// SIGTERM (init, `kill`) or SIGINT (Ctrl-C).
async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT"),
    }
}
