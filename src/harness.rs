//! The harness: one call in a binary's `main` gives it vmcheck's whole command line for a suite
//! of scenarios, and libtest's, so that the same binary is a `cargo test`/`cargo nextest` target.
//!
//! ```no_run
//! // tests/vm.rs, with `[[test]] name = "vm" harness = false` in Cargo.toml
//! use futures::FutureExt;
//! use vmcheck::prelude::*;
//!
//! async fn smoke(d: &Driver) -> anyhow::Result<()> {
//!     d.start_all().await?;
//!     let vm = d.machine("vm")?;
//!     d.subtest("the guest answers", async { vm.succeed("true").await.map(drop) }).await
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     let suite = Suite::new().with(
//!         Scenario::new("smoke", "boot and run a command", |d| smoke(d).boxed())
//!             .machine(NodeSpec::new("vm", Role::Initiator, 2)),
//!     );
//!     vmcheck::harness::main(suite)
//! }
//! ```
//!
//! Two command lines, told apart by the first argument:
//! - vmcheck's: `list [--json]`, `run [NAMES|PATTERNS] [--junit F] [--out D] [--jobs N]
//!   [--shard K/N] [--fresh-boot] [--global-timeout S] [--keep-vm-state] [--pause-on-failure]
//!   [--in-guest | --local MACHINE --peer NAME[=ADDR]...]` (guest mode: ARCHITECTURE.md),
//!   `repl [SCENARIO] | repl --attach SOCKET`,
//!   `images build`, `cache [list [--json] | prune [--unused] [--older-than AGE]
//!   [--max-size SIZE] [--dry-run]]` ([`Command`]);
//! - anything else is libtest's (`--list --format terse`, `--exact NAME`, `--ignored`,
//!   `--nocapture`, a filter), as `cargo test` and `cargo nextest run` pass it: every listed
//!   scenario is a test (a chain is one test, named after the chain) and every hidden one an
//!   ignored test. Each test runs on machines of its own, as `run NAME` would.
//!
//! Exit status of the vmcheck command line: 0 when all passed, 1 when one failed, 2 for a usage
//! error, 130 after SIGINT/SIGTERM (every machine is stopped first).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::DriverConfig;
use crate::driver::DriverOptions;
use crate::report::Reporter;
use crate::scenarios::{RunOptions, Scenario, Shard, Suite};

/// The words that start vmcheck's command line; anything else is libtest's.
const COMMANDS: &[&str] =
    &["list", "run", "repl", "images", "cache", "help", "--help", "-h", "--version", "-V"];

/// The harness's subcommands. A binary that adds its own (vmcheck's adds `bench`) flattens
/// this into its clap command and hands it to [`dispatch`].
#[derive(Subcommand, Debug)]
pub enum Command {
    /// List the scenarios.
    List {
        /// Print each scenario's machines as JSON (what nix/scenarios.json holds).
        #[arg(long)]
        json: bool,
    },
    /// Run scenarios (all listed ones when none is named): names or shell-style patterns
    /// (`run 'hotremove_*'`).
    Run {
        /// Scenario names or shell-style patterns; none runs every listed scenario.
        names: Vec<String>,
        /// Write JUnit XML here (one test case per subtest).
        #[arg(long)]
        junit: Option<PathBuf>,
        /// Keep console logs, command lines, the transcript and tool output here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Keep the run directory (disks, sockets) after the run.
        #[arg(long)]
        keep_vm_state: bool,
        /// Driver configuration from nix/ (NixOS machines); names the scenario itself.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Seconds each scenario may take (a chain: all its cases together), after the driver's
        /// set-up (images, accelerator probe).
        #[arg(long)]
        global_timeout: Option<u64>,
        /// Run only part K of N of the chosen scenarios (a stable split by name; a chain stays
        /// whole), to spread a suite over a CI matrix: `--shard 1/3` on one machine, `2/3` ...
        #[arg(long)]
        shard: Option<Shard>,
        /// Scenarios run side by side (a chain counts as one), each on machines of its own;
        /// their terminal lines are prefixed with `[name] `.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
        jobs: u16,
        /// Boot every machine instead of restoring its saved state from the cache (also
        /// VMCHECK_FRESH_BOOT=1).
        #[arg(long)]
        fresh_boot: bool,
        /// When a subtest fails, keep the machines and open the REPL on them (at a terminal;
        /// without one, wait for `vmcheck repl --attach <run dir>/repl.sock`), within the
        /// global timeout; quitting it ends the run as it would have ended.
        #[arg(long)]
        pause_on_failure: bool,
        /// Guest mode: this process runs inside the scenario's machine MACHINE, as the test's
        /// driver; its commands are local processes. Every other machine is a --peer. Scenarios
        /// that need the host are refused (exit 2); with no names, those that run in guest mode
        /// run.
        #[arg(long, value_name = "MACHINE", conflicts_with_all = ["config", "in_guest", "pause_on_failure"])]
        local: Option<String>,
        /// Guest mode: another machine of the scenario, reached at ADDR (default: NAME through
        /// the system resolver, as nixpkgs' /etc/hosts names test nodes): its target daemon's
        /// gRPC on port 10124, its NVMe-oF and iSCSI ports.
        #[arg(long, value_name = "NAME[=ADDR]", requires = "local")]
        peer: Vec<String>,
        /// Boot each scenario's machines here, put vmcheck itself into the first initiator and
        /// run the scenario from there in guest mode (--local, --peer); its JUnit and
        /// transcript come back and are reported as a host run's.
        #[arg(long, conflicts_with_all = ["config", "pause_on_failure"])]
        in_guest: bool,
    },
    /// Interactive driver: the scenario's machines (default fio_nvme_basic's, else the first),
    /// defined but not started; `help` at its prompt lists the commands.
    Repl {
        /// The scenario whose machines to define (default fio_nvme_basic, else the suite's first).
        scenario: Option<String>,
        /// Driver configuration from nix/ (NixOS machines); names the scenario itself.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Attach to the REPL of a run paused by --pause-on-failure without a terminal (the
        /// socket its log names) instead of starting machines.
        #[arg(long, conflicts_with_all = ["scenario", "config"])]
        attach: Option<PathBuf>,
    },
    /// Manage the default images.
    Images {
        #[command(subcommand)]
        /// What to do with them.
        command: ImagesCommand,
    },
    /// What the image and snapshot cache ($VMCHECK_CACHE, default ~/.cache/vmcheck) holds, and
    /// its pruning; no subcommand lists it.
    Cache {
        #[command(subcommand)]
        /// What to do (default: list).
        command: Option<CacheCommand>,
    },
}

/// `cache` subcommands.
#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// Each image and snapshot: size, last use, whether a running test holds it, whether a
    /// recipe of the suite uses it.
    List {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove images and snapshots (never one a running test holds): those no recipe of the
    /// suite uses, those unused for a time, then the least recently used down to a size.
    Prune {
        /// Those no recipe of the suite's scenarios uses (nor snapshots of another QEMU).
        #[arg(long)]
        unused: bool,
        /// Those not used for longer than this (`7d`, `12h`, `30m`).
        #[arg(long, value_name = "AGE", value_parser = humantime::parse_duration)]
        older_than: Option<std::time::Duration>,
        /// Then the least recently used until images and snapshots take at most this (`20G`,
        /// `500MiB`; G is 10^9 bytes, GiB 2^30).
        #[arg(long, value_name = "SIZE", value_parser = crate::cache::parse_size)]
        max_size: Option<u64>,
        /// Say what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `images` subcommands.
#[derive(Subcommand, Debug)]
pub enum ImagesCommand {
    /// Build (or find up to date) the images the suite's machines boot.
    Build {
        /// Also save the state of every machine the listed scenarios declare (booted once,
        /// two at a time), so that every run after this one restores them, as a user's second
        /// run does.
        #[arg(long)]
        snapshots: bool,
    },
}

#[derive(Parser)]
#[command(about = "VM-level integration tests (vmcheck harness)", arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The whole `main` of a test binary: checks the suite, then runs the command line it was given
/// (vmcheck's or libtest's, see the module docs).
pub fn main(suite: Suite) -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Err(e) = suite.check() {
        eprintln!("vmcheck: the suite is not valid: {e:#}");
        return ExitCode::from(2);
    }
    if is_libtest(&args) {
        return libtest(suite);
    }
    let cli = Cli::parse();
    init_tracing();
    let signals = !matches!(cli.command, Command::Repl { .. });
    runtime_main(dispatch(&suite, cli.command), signals)
}

/// Whether `args` (the whole `argv`) are libtest's rather than vmcheck's: anything but one of
/// vmcheck's subcommands first, no arguments included (`cargo test` runs everything).
pub fn is_libtest(args: &[String]) -> bool {
    args.get(1).is_none_or(|first| !COMMANDS.contains(&first.as_str()))
}

/// Starts tracing (`VMCHECK_LOG`) on stderr; once per process.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("VMCHECK_LOG"))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs `work` on a tokio runtime; with `signals`, against SIGINT and SIGTERM: on a signal the
/// work is dropped, which stops every machine, and the status is 130. (The REPL handles Ctrl-C
/// itself: it cancels a command, not the session.)
pub fn runtime_main(work: impl std::future::Future<Output = ExitCode>, signals: bool) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vmcheck: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async {
        if !signals {
            return work.await;
        }
        tokio::select! {
            code = work => code,
            // Dropping the run kills every machine and removes the run directory.
            _ = interrupted() => {
                eprintln!("vmcheck: interrupted; stopping every machine");
                ExitCode::from(130)
            }
        }
    })
}

async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) =
        (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            // While --pause-on-failure's REPL is open, Ctrl-C is the REPL's (it cancels a command).
            _ = int.recv() => if !crate::repl::pause::is_open() { return },
            _ = term.recv() => return,
        }
    }
}

/// Runs one of the harness's subcommands on `suite`.
pub async fn dispatch(suite: &Suite, command: Command) -> ExitCode {
    match command {
        Command::List { json: true } => {
            let listed: Vec<_> = suite
                .listed()
                .map(|s| crate::config::Listed {
                    name: s.name(),
                    description: s.description(),
                    nodes: s.nodes().to_vec(),
                    host_only: s.host_only_reason(),
                })
                .collect();
            match crate::config::scenario_listing_json(&listed, &listing_command()) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Command::List { json: false } => {
            // Where each runs: `host+guest`, or `host` (guest mode refuses it; `list --json`
            // says why).
            for s in suite.listed() {
                let place = if s.runs_in_guest() { "host+guest" } else { "host" };
                println!("{:<28} {place:<10} {}", s.name(), s.description());
            }
            ExitCode::SUCCESS
        }
        Command::Images { command: ImagesCommand::Build { snapshots } } => {
            let nodes: Vec<_> =
                suite.scenarios().iter().flat_map(|s| s.nodes().iter().cloned()).collect();
            match tokio::task::spawn_blocking(move || build_images(&nodes)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return fail(&e),
                Err(e) => return fail(&e.into()),
            }
            if !snapshots {
                return ExitCode::SUCCESS;
            }
            match save_machines(suite).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        Command::Cache { command } => {
            let command = command.unwrap_or(CacheCommand::List { json: false });
            let nodes: Vec<_> =
                suite.scenarios().iter().flat_map(|s| s.nodes().iter().cloned()).collect();
            match tokio::task::spawn_blocking(move || cache(&nodes, command)).await {
                Ok(Ok(code)) => code,
                Ok(Err(e)) => fail(&e),
                Err(e) => fail(&e.into()),
            }
        }
        Command::Repl { attach: Some(path), .. } => crate::repl::pause::attach(&path).await,
        Command::Repl { scenario, config, attach: None } => {
            crate::repl::main(suite, scenario, config).await
        }
        Command::Run {
            names,
            junit,
            out,
            keep_vm_state,
            config,
            global_timeout,
            shard,
            jobs,
            fresh_boot,
            pause_on_failure,
            local,
            peer,
            in_guest,
        } => {
            let args = RunArgs {
                junit,
                out,
                keep: keep_vm_state,
                config,
                global_timeout,
                shard,
                jobs: usize::from(jobs),
                fresh_boot,
                pause_on_failure,
                local,
                peers: peer,
                in_guest,
            };
            run(suite, names, args).await
        }
    }
}

/// The command that wrote a `list --json`: vmcheck's own (its `nix/scenarios.json`), else
/// this binary's name.
fn listing_command() -> String {
    let argv0 = std::env::args().next().unwrap_or_default();
    let name = std::path::Path::new(&argv0).file_name().and_then(|n| n.to_str()).unwrap_or("");
    // cargo names a test binary `<test>-<16 hex digits>`.
    let test = name
        .rsplit_once('-')
        .filter(|(_, h)| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    match (name, test) {
        ("vmcheck", _) => crate::config::SCENARIO_LISTING_COMMAND.to_string(),
        (_, Some((test, _))) => format!("cargo test --test {test} -- list --json"),
        ("", _) => "list --json".to_string(),
        _ => format!("{name} list --json"),
    }
}

fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("vmcheck: {e:#}");
    ExitCode::from(1)
}

/// Builds the image of every recipe the machines boot (NixOS machines bring their own).
fn build_images(nodes: &[crate::config::NodeSpec]) -> anyhow::Result<()> {
    let images = crate::images::Images::from_env()?;
    let mut seen = std::collections::HashSet::new();
    for recipe in nodes.iter().filter(|n| n.start_script.is_none()).map(|n| n.recipe()) {
        if !seen.insert(serde_json::to_string(&recipe)?) {
            continue;
        }
        let name = recipe.name().to_string();
        let image = images.ensure(recipe)?;
        println!(
            "{name}: kernel {} initrd {} tools {}",
            image.kernel.display(),
            image.initrd.display(),
            image.tools.display()
        );
    }
    Ok(())
}

/// What the suite's recipes use now: the image of each (when the cache has it up to date) and
/// this host's QEMU.
fn current_use(
    images: &crate::images::Images,
    nodes: &[crate::config::NodeSpec],
) -> anyhow::Result<crate::cache::Current> {
    let mut current = crate::cache::Current::default();
    let mut seen = std::collections::HashSet::new();
    for recipe in nodes.iter().filter(|n| n.start_script.is_none()).map(|n| n.recipe()) {
        if !seen.insert(serde_json::to_string(&recipe)?) {
            continue;
        }
        if let Some(image) = images.find(recipe)? {
            let dir = image.initrd.parent().and_then(|d| d.file_name());
            current.images.extend(dir.map(|d| d.to_string_lossy().into_owned()));
        }
    }
    if let Ok((_, qemu_version)) = crate::qemu::find_qemu_with_version() {
        current.qemu_version = Some(qemu_version);
    }
    Ok(current)
}

/// `cache`: lists or prunes the cache of `Images::from_env`, judged against the suite's recipes.
fn cache(nodes: &[crate::config::NodeSpec], command: CacheCommand) -> anyhow::Result<ExitCode> {
    let images = crate::images::Images { verbose: false, ..crate::images::Images::from_env()? };
    // Written at the end, a write error ignored: `vmcheck cache | head` is no panic.
    let mut out = String::new();
    let code = cache_command(&images, nodes, command, &mut out)?;
    let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
    Ok(code)
}

fn cache_command(
    images: &crate::images::Images,
    nodes: &[crate::config::NodeSpec],
    command: CacheCommand,
    out: &mut String,
) -> anyhow::Result<ExitCode> {
    use crate::cache::{ago, human_bytes, Kind};
    let dir = images.cache_dir.clone();
    macro_rules! outln {
        ($($arg:tt)*) => {{ *out += &format!($($arg)*); out.push('\n'); }};
    }
    match command {
        CacheCommand::List { json } => {
            let mut entries = crate::cache::list(&dir)?;
            crate::cache::mark_current(&mut entries, &current_use(images, nodes)?);
            let others = crate::cache::others(&dir);
            let total: u64 = entries.iter().map(|e| e.bytes).sum();
            let max = crate::cache::max_from_env()?;
            if json {
                let value = serde_json::json!({
                    "cache": dir,
                    "entries": entries,
                    "bytes": total,
                    "max_bytes": max,
                    "others": others.iter().map(|(d, b)| serde_json::json!({"dir": d, "bytes": b})).collect::<Vec<_>>(),
                });
                outln!("{}", serde_json::to_string_pretty(&value)?);
                return Ok(ExitCode::SUCCESS);
            }
            outln!("cache {}", dir.display());
            outln!(
                "{:<8}  {:<36}  {:>10}  {:<14}  {:<6}  {:<5}  image",
                "kind",
                "name",
                "size",
                "last used",
                "in use",
                "suite"
            );
            for e in &entries {
                let (kind, name) = e.label();
                outln!(
                    "{kind:<8}  {name:<36}  {:>10}  {:<14}  {:<6}  {:<5}  {}",
                    human_bytes(e.bytes),
                    ago(e.last_used),
                    if e.in_use { "yes" } else { "no" },
                    match e.current {
                        Some(true) => "yes",
                        Some(false) => "no",
                        None => "?",
                    },
                    e.image.as_deref().unwrap_or(if e.kind == Kind::Snapshot { "?" } else { "" }),
                );
            }
            let count = |k| entries.iter().filter(|e| e.kind == k).count();
            outln!(
                "{} in {} images and {} snapshots (bound {}); not pruned: {}",
                human_bytes(total),
                count(Kind::Image),
                count(Kind::Snapshot),
                max.map_or("off".to_string(), |m| format!("VMCHECK_CACHE_MAX {}", human_bytes(m))),
                others
                    .iter()
                    .map(|(d, b)| format!("{d}/ {}", human_bytes(*b)))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        CacheCommand::Prune { unused, older_than, max_size, dry_run } => {
            if !unused && older_than.is_none() && max_size.is_none() {
                eprintln!("vmcheck: cache prune: say what to remove: --unused, --older-than AGE or --max-size SIZE");
                return Ok(ExitCode::from(2));
            }
            let policy = crate::cache::Policy { unused, older_than, max_bytes: max_size };
            let current = if unused { Some(current_use(images, nodes)?) } else { None };
            let pruned = crate::cache::prune(&dir, &policy, current.as_ref(), dry_run)?;
            let verb = if dry_run { "would remove" } else { "removed" };
            for (e, reason) in &pruned.removed {
                let (kind, name) = e.label();
                outln!(
                    "{verb} {kind} {name} ({}, last used {}): {reason}",
                    human_bytes(e.bytes),
                    ago(e.last_used)
                );
            }
            for e in &pruned.held {
                let (kind, name) = e.label();
                outln!("kept {kind} {name}: a running test holds it");
            }
            let freed: u64 = pruned.removed.iter().map(|(e, _)| e.bytes).sum();
            outln!(
                "{verb} {} entries ({}); {} held kept; {} left",
                pruned.removed.len(),
                human_bytes(freed),
                pruned.held.len(),
                human_bytes(pruned.left_bytes)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Starts the machines of every listed scenario once, so that their states are saved
/// (section 15 of ARCHITECTURE.md); a machine already saved (the same description in another
/// scenario, or an earlier build) is only restored. Two scenarios' machines at a time.
async fn save_machines(suite: &Suite) -> anyhow::Result<()> {
    use futures::StreamExt;
    // A saved state is of the machine without its disks: machines that differ only in their
    // disks share one.
    let mut seen = std::collections::HashSet::new();
    let mut todo = Vec::new();
    for s in suite.listed() {
        let fresh: Vec<_> = s
            .nodes()
            .iter()
            .filter(|n| n.start_script.is_none())
            .filter(|n| {
                seen.insert(
                    serde_json::to_string(&crate::config::NodeSpec {
                        disks: Vec::new(),
                        ..(*n).clone()
                    })
                    .unwrap_or_default(),
                )
            })
            .collect();
        if !fresh.is_empty() {
            todo.push(s.clone());
        }
    }
    let started = std::time::Instant::now();
    let count = todo.len();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(todo)
        .map(|s| async move {
            let driver =
                crate::driver::Driver::new(s.nodes().to_vec(), DriverOptions::default()).await?;
            let result = driver.start_all().await;
            driver.kill_all().await;
            result.map_err(|e| e.context(format!("starting the machines of {}", s.name())))
        })
        .buffer_unordered(2)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    println!(
        "machines of {count} scenario(s) started and saved in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `run`'s options, less the names.
struct RunArgs {
    junit: Option<PathBuf>,
    out: Option<PathBuf>,
    keep: bool,
    config: Option<PathBuf>,
    global_timeout: Option<u64>,
    shard: Option<Shard>,
    jobs: usize,
    fresh_boot: bool,
    pause_on_failure: bool,
    local: Option<String>,
    peers: Vec<String>,
    in_guest: bool,
}

/// `--peer NAME[=ADDR]`s as names and IPv4 addresses: ADDR (an address or a host name), else
/// NAME, through the system resolver. The error names the peer that does not resolve.
async fn resolve_peers(
    peers: &[String],
) -> anyhow::Result<std::collections::BTreeMap<String, std::net::Ipv4Addr>> {
    let mut resolved = std::collections::BTreeMap::new();
    for p in peers {
        let (name, host) = p.split_once('=').unwrap_or((p.as_str(), p.as_str()));
        crate::config::validate_machine_name(name).with_context(|| format!("--peer {p}"))?;
        if host.is_empty() {
            anyhow::bail!("--peer {p}: an empty address");
        }
        let addrs = tokio::net::lookup_host((host, 0))
            .await
            .with_context(|| format!("--peer {p}: {host:?} does not resolve"))?;
        let v4 = addrs
            .filter_map(|a| match a.ip() {
                std::net::IpAddr::V4(v4) => Some(v4),
                std::net::IpAddr::V6(_) => None,
            })
            .next()
            .with_context(|| format!("--peer {p}: {host:?} has no IPv4 address"))?;
        if resolved.insert(name.to_string(), v4).is_some() {
            anyhow::bail!("--peer {name} is given twice");
        }
    }
    Ok(resolved)
}

/// Guest mode's and `--in-guest`'s checks of `chosen`, before anything runs: no host-only
/// scenario (or earlier case of a chosen chain case); under `--local`, every group's machines
/// placed; under `--in-guest`, an initiator in every group.
fn check_guest(
    suite: &Suite,
    chosen: &[Scenario],
    guest: Option<&crate::driver::GuestMode>,
) -> anyhow::Result<()> {
    if let Some(why) = suite.guest_refusal(chosen) {
        anyhow::bail!(
            "refused in guest mode (`vmcheck list` shows where each scenario runs):\n{why}"
        );
    }
    for (group, nodes) in suite.group_machines(chosen) {
        match guest {
            Some(g) => g.check(&nodes).with_context(|| format!("scenario {group}"))?,
            None => drop(
                crate::in_guest::local_machine(&nodes)
                    .with_context(|| format!("scenario {group}"))?,
            ),
        }
    }
    Ok(())
}

async fn run(suite: &Suite, names: Vec<String>, args: RunArgs) -> ExitCode {
    let usage = |msg: String| {
        eprintln!("vmcheck: {msg}");
        ExitCode::from(2)
    };
    let config = match args.config.as_deref().map(DriverConfig::load).transpose() {
        Ok(c) => c,
        Err(e) => return usage(format!("{e:#}")),
    };
    let guest_mode = args.local.is_some() || args.in_guest;
    let all = names.is_empty();
    let names = match (&config, names.is_empty()) {
        (Some(c), true) => vec![c.scenario.clone()],
        (Some(_), false) => return usage("--config names the scenario; do not name others".into()),
        // In guest mode, every listed scenario that runs there (a chain case with all its
        // earlier cases).
        (None, true) if guest_mode => suite
            .listed()
            .filter(|s| suite.guest_refusal(std::slice::from_ref(*s)).is_none())
            .map(|s| s.name().to_string())
            .collect(),
        (None, true) => suite.listed().map(|s| s.name().to_string()).collect(),
        (None, false) => names,
    };
    let chosen = match suite.select(&names) {
        Ok(c) => c,
        Err(e) => return usage(format!("{e:#}")),
    };
    let chosen: Vec<Scenario> =
        chosen.into_iter().filter(|s| args.shard.is_none_or(|sh| sh.contains(s))).collect();
    if args.jobs > 1 && args.local.is_some() {
        return usage("--jobs: a guest-mode driver runs one scenario at a time (they share the machine it runs on)".into());
    }
    let guest = match &args.local {
        None => None,
        Some(local) => match resolve_peers(&args.peers).await {
            Ok(peers) => Some(crate::driver::GuestMode { local: local.clone(), peers }),
            Err(e) => return usage(format!("{e:#}")),
        },
    };
    if guest_mode {
        // Peers of no chosen scenario are typos.
        if let Some(g) = &guest {
            let known: std::collections::BTreeSet<String> = suite
                .group_machines(&chosen)
                .into_iter()
                .flat_map(|(_, nodes)| nodes.into_iter().map(|n| n.name))
                .collect();
            if let Some(p) = g.peers.keys().find(|p| !known.contains(*p)) {
                return usage(format!("--peer {p}: no chosen scenario has a machine of that name; they have {known:?}"));
            }
        }
        if let Err(e) = check_guest(suite, &chosen, guest.as_ref()) {
            return usage(format!("{e:#}"));
        }
        if all {
            let left = suite.listed().count() - chosen.len();
            eprintln!("vmcheck: guest mode: {} scenario(s) that run there; {left} that need the host left out", chosen.len());
        }
    }
    // The run's one reporter: the terminal, `--out`'s transcript, the record of every result.
    let reporter = match &args.out {
        None => Reporter::new(),
        Some(dir) => match std::fs::create_dir_all(dir)
            .and_then(|_| Reporter::with_transcript(&dir.join("transcript.log")))
        {
            Ok(r) => r,
            Err(e) => return usage(format!("cannot use --out {}: {e}", dir.display())),
        },
    };
    if let Some(sh) = args.shard {
        let names: Vec<_> = chosen.iter().map(Scenario::name).collect();
        reporter.line(&format!("shard {}/{}: {}", sh.index, sh.count, names.join(" ")));
    }
    let options = RunOptions {
        driver: DriverOptions {
            keep_state: args.keep,
            out_dir: args.out.clone(),
            reporter: reporter.clone(),
            fresh_boot: args.fresh_boot,
            guest,
        },
        config: config.clone(),
        global_timeout: args.global_timeout.map(std::time::Duration::from_secs),
        jobs: args.jobs,
        pause_on_failure: args.pause_on_failure,
        in_guest: args.in_guest,
    };
    let started = std::time::Instant::now();
    suite.run(&chosen, &options).await;
    reporter.log_summary();
    if let Some(dir) = &args.out {
        // The report (index.html) before JUnit, which points to it.
        reporter.set_out_dir(dir);
        match crate::run_report::write_index(dir, &reporter, started.elapsed()) {
            Ok(path) => reporter.line(&format!("report: {}", path.display())),
            Err(e) => return fail(&e),
        }
    }
    if let Some(path) = args.junit {
        if let Err(e) = reporter.write_junit(&path) {
            return fail(&e);
        }
    }
    if reporter.log_totals() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// libtest's command line over `suite`: one test per listed scenario (a chain: one test named
/// after it, running its cases in order), an ignored test per hidden one.
fn libtest(suite: Suite) -> ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    let mut trials = Vec::new();
    let mut chains = std::collections::HashSet::new();
    for s in suite.scenarios() {
        if s.chain_name().is_some_and(|c| !chains.insert(c.to_string())) {
            continue;
        }
        let cases: Vec<Scenario> = match s.chain_name() {
            Some(chain) => suite
                .scenarios()
                .iter()
                .filter(|c| c.chain_name() == Some(chain))
                .cloned()
                .collect(),
            None => vec![s.clone()],
        };
        let suite = suite.clone();
        let trial = libtest_mimic::Trial::test(s.group_name().to_string(), move || {
            run_trial(&suite, &cases)
        })
        .with_ignored_flag(s.is_hidden());
        trials.push(trial);
    }
    libtest_mimic::run(&args, trials).exit_code()
}

/// The stack of the thread a libtest test's scenarios are polled on (a main thread's).
const TRIAL_STACK_BYTES: usize = 8 << 20;

/// One libtest test: the cases on machines of their own, as `run NAMES` runs them; it fails
/// with every failed case's verdict and error.
fn run_trial(suite: &Suite, cases: &[Scenario]) -> Result<(), libtest_mimic::Failed> {
    init_tracing();
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| format!("cannot start the runtime: {e}"))?;
    // On a thread with a main thread's stack: libtest's test threads have 2 MiB, which a
    // scenario's futures, polled from block_on, overflowed (balloon_migrate and balloon_power
    // aborted so in a CI replay); `vmcheck run` polls them on its 8 MiB main thread.
    let outcomes = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name(cases.first().map(|c| c.name().to_string()).unwrap_or_default())
            .stack_size(TRIAL_STACK_BYTES)
            .spawn_scoped(scope, || runtime.block_on(suite.run(cases, &RunOptions::default())))
            .map_err(|e| format!("cannot start the test's thread: {e}"))?
            .join()
            .map_err(|_| "the test's thread panicked".to_string())
    })?;
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.passed())
        .map(|o| {
            format!(
                "{}: {}\n{}",
                o.name,
                o.verdict(),
                o.error.as_deref().or(o.skipped.as_deref()).unwrap_or_default()
            )
        })
        .collect();
    match failed.is_empty() {
        true => Ok(()),
        false => Err(failed.join("\n").into()),
    }
}
