//! NVMe-oF path failures made by the test network (issue 12): mayastor's `disconnect`,
//! `nvmf_ports` and `nvmf_distributed`, and `reconnect`, `ctrl_loss`, `multipath`,
//! `lossy_link`. Each plan step is a subtest; faults come from the switch ([`crate::network`]),
//! addresses from the machines, NVMe timeouts from [`crate::timeouts`], passed explicitly.
//!
//! The daemon shares a subsystem on one TCP port of its address; a second port (another TCP
//! port, or another vlan's address) is linked into the subsystem here through configfs, as
//! nvmet allows. The daemon reads such ports back (ListSubsystems) but has no call to add one.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::FutureExt;

use super::nvmeof::{self, Share, NVMF_PORT};
use super::workload::{integrity_job, FioOutcome, FioRun, DISK_MIB, SETTLE};
use super::{Scenario, ScriptFn};
use crate::config::{DiskSpec, NodeSpec, Role};
use crate::driver::Driver;
use crate::log;
use crate::machine::Machine;
use crate::network;
use crate::poll::{self, Pace, Polled};
use crate::target::client::TargetClient;
use crate::target::proto;
use crate::timeouts;
use crate::tools::fio::Direction;
use crate::tools::nvme::{parse_controllers, Controller, FabricsOptions, Nvme, CONTROLLERS};
use crate::tools::shell_quote;

/// The second TCP port of `nvmf_ports` and `multipath`, and its nvmet port id (high, out of the
/// way of the daemon's lowest-free ids).
const SECOND_PORT: u16 = 4421;
const SECOND_PORT_ID: u16 = 100;
/// How long `reconnect` keeps the target blocked.
const RECONNECT_BLOCK: Duration = Duration::from_secs(5);

pub fn scenarios() -> Vec<Scenario> {
    let s = |name, description, nodes: fn() -> Vec<NodeSpec>, script: ScriptFn| {
        Scenario::new(name, description, script).machines(nodes())
    };
    let all = vec![
        s(
            "disconnect",
            "block the target under fio: fio fails within a bound; after unblock, nvme disconnect-all succeeds",
            one_target_one_initiator,
            |d| disconnect(d).boxed(),
        ),
        s(
            "reconnect",
            "long controller-loss timeout; the target blocked 5 s under fio with verify, then unblocked: fio clean",
            one_target_one_initiator,
            |d| reconnect(d).boxed(),
        ),
        s(
            "ctrl_loss",
            "the target blocked past the controller-loss timeout: controller removed, fio fails cleanly, reconnecting works",
            one_target_one_initiator,
            |d| ctrl_loss(d).boxed(),
        ),
        s(
            "nvmf_ports",
            "one subsystem on two TCP ports, an initiator on each under fio; one port taken away: the other's fio clean",
            one_target_two_initiators,
            |d| nvmf_ports(d).boxed(),
        ),
        s(
            "nvmf_distributed",
            "two targets, one initiator connected to both under fio; one target blocked: the other's fio clean",
            two_targets_one_initiator,
            |d| nvmf_distributed(d).boxed(),
        ),
        s(
            "multipath",
            "one subsystem over two vlans, native NVMe multipath; one path cut under fio with verify: fio clean",
            two_vlans,
            |d| multipath(d).boxed(),
        ),
        s(
            "lossy_link",
            "5 % loss and 20 ms delay on the target's link: fio with verify passes; its throughput is reported",
            one_target_one_initiator,
            |d| lossy_link(d).boxed(),
        ),
    ];
    all.into_iter().map(host_only).collect()
}

/// Why each path-failure plan needs the host: guest mode refuses it, with the reason.
fn host_only(s: Scenario) -> Scenario {
    let why = match s.name() {
        "lossy_link" => "loss and delay on the target's link (the host's switch)",
        "multipath" => {
            "cuts a vlan's link (the host's switch) and adds an nvmet port with a command in the \
             target"
        }
        "nvmf_ports" => {
            "adds and removes an nvmet port with commands in the target, and runs fio on two \
             initiators (vm1, vm2): a guest-mode driver runs commands only where it runs"
        }
        _ => "blocks a target's link on the test network (the host's switch)",
    };
    s.host_only(why)
}

fn target(name: &str, host: u8) -> NodeSpec {
    NodeSpec::new(name, Role::Target, host).with_disk(DiskSpec::nvme("disk0", DISK_MIB))
}
fn initiator(name: &str, host: u8) -> NodeSpec {
    NodeSpec::new(name, Role::Initiator, host).with_memory(768)
}
fn one_target_one_initiator() -> Vec<NodeSpec> {
    vec![target("target", 1), initiator("initiator", 2)]
}
fn one_target_two_initiators() -> Vec<NodeSpec> {
    vec![target("target", 1), initiator("vm1", 2), initiator("vm2", 3)]
}
/// target2's disk is virtio-blk: the daemon derives a namespace's UUID from its bdev's URI
/// (`aio:///dev/nvme0n1` on both targets otherwise), and Linux ignores a namespace whose IDs
/// duplicate another subsystem's ("ignoring nsid 1 because of duplicate IDs").
fn two_targets_one_initiator() -> Vec<NodeSpec> {
    let target2 =
        NodeSpec::new("target2", Role::Target, 3).with_disk(DiskSpec::virtio("disk0", DISK_MIB));
    vec![target("target1", 1), target2, initiator("initiator", 2)]
}
fn two_vlans() -> Vec<NodeSpec> {
    let mut nodes = one_target_one_initiator();
    for n in &mut nodes {
        n.vlans = vec![1, 2];
    }
    nodes
}

fn scaled(base: f64) -> u32 {
    (base * timeouts::factor()).ceil().max(1.0) as u32
}

/// Connection options for a controller that must be given up soon after its target goes
/// away: keep-alive 10 s (the kernel's 5 s was seen to expire under TCG while connecting) and
/// a 10 s controller-loss timeout, scaled.
fn short_loss() -> FabricsOptions {
    FabricsOptions {
        keep_alive_tmo: Some(scaled(10.0)),
        ctrl_loss_tmo: Some(scaled(10.0) as i32),
        reconnect_delay: Some(2),
        ..Default::default()
    }
}

/// Connection options for a path that must come back: the same keep-alive, so a dead path is
/// noticed soon, and the run's long controller-loss timeout.
fn path_options() -> FabricsOptions {
    FabricsOptions { keep_alive_tmo: Some(scaled(10.0)), ..FabricsOptions::scaled_timeouts() }
}

/// How long a controller of `o` may take to be given up once its target is gone: the
/// keep-alive (twice its period) or the 30 s I/O timeout, whichever comes first, noticing it,
/// and one more keep-alive period for the teardown (its keep-alive request times out again:
/// seen under TCG, block at ~11 s, recovery at 21 s, first reconnect at 31 s); then the
/// reconnect attempts the controller-loss timeout allows, each up to 3 s (nvme-tcp connects
/// with one SYN retry) plus the reconnect delay; and slack for TCG.
fn loss_bound(o: &FabricsOptions) -> Duration {
    let kato = u64::from(o.keep_alive_tmo.unwrap_or(5));
    let loss = o.ctrl_loss_tmo.unwrap_or(600).max(0) as u64;
    let delay = u64::from(o.reconnect_delay.unwrap_or(10)).max(1);
    let attempts = loss.div_ceil(delay);
    Duration::from_secs((2 * kato).min(30) + kato + attempts * (3 + delay))
        + Duration::from_secs_f64(30.0 * timeouts::factor())
}

/// `nvme connect` with `options`; waits for namespace 1 and returns its block device.
async fn connect_with(
    initiator: &Machine,
    share: &Share,
    options: &FabricsOptions,
) -> Result<String> {
    connect_to(initiator, &share.addr.to_string(), share.port, &share.nqn, options).await
}

async fn connect_to(
    initiator: &Machine,
    addr: &str,
    port: u16,
    nqn: &str,
    options: &FabricsOptions,
) -> Result<String> {
    initiator
        .succeed(&Nvme::connect(addr, port, nqn).options(options.clone()).command_line())
        .await?;
    nvmeof::wait_for_namespace(initiator, nqn, 1, timeouts::hotplug()).await
}

/// Creates the bdev of `disk0` on `target` and shares it under `nqn` on the NVMe-oF port.
async fn share_disk(
    d: &Driver,
    target: &Machine,
    client: &mut TargetClient,
    nqn: Option<&str>,
) -> Result<Share> {
    d.subtest(&format!("share disk0 of {} over NVMe-oF/TCP", target.name()), async {
        let bdev = nvmeof::create_disk_bdev(target, client, "disk0").await?;
        nvmeof::share_bdev(target, client, &bdev.name, nqn, NVMF_PORT).await
    })
    .await
}

/// The integrity job on `device`, limited to a 64 MiB region at `offset_mib` so that two
/// initiators on one namespace do not verify each other's blocks.
fn job(device: &str, runtime_secs: u64, offset_mib: u64) -> crate::tools::fio::Fio {
    integrity_job(device, runtime_secs).opt("offset", format!("{offset_mib}m"))
}

async fn start_fio(
    vm: &Machine,
    device: &str,
    runtime_secs: u64,
    offset_mib: u64,
) -> Result<FioRun> {
    let run = FioRun::start(vm, &job(device, runtime_secs, offset_mib), device).await?;
    run.settle(SETTLE).await?;
    Ok(run)
}

/// Waits at most `bound` for fio to end (it must end on its own); the outcome and how long it
/// took from `since`.
async fn fio_ends_within(
    vm: &Machine,
    run: &FioRun,
    since: Instant,
    bound: Duration,
) -> Result<(FioOutcome, Duration)> {
    let left = bound.saturating_sub(since.elapsed());
    match poll::until(left, Pace::every(Duration::from_millis(500)), |_| async {
        Ok((!run.is_running().await?).then_some(()))
    })
    .await?
    {
        Polled::Done(()) => {
            let took = since.elapsed();
            Ok((run.wait().await?, took))
        }
        // Left running: the machines are stopped with the failed test.
        Polled::TimedOut(_) => Err(vm.timeout_error(
            format!(
                "fio still ran {:.0} s after the fault; expected it to end within {bound:?}",
                since.elapsed().as_secs_f64()
            ),
            "fio had not ended".into(),
            since.elapsed(),
        )),
    }
}

async fn controllers(vm: &Machine, nqn: &str) -> Result<Vec<Controller>> {
    let out = vm.execute_with_timeout(CONTROLLERS, timeouts::request()).await?.stdout;
    Ok(parse_controllers(&out).into_iter().filter(|c| c.nqn == nqn).collect())
}

/// Waits until the controllers of `nqn` satisfy `want` (described by `what`).
async fn wait_for_controllers(
    vm: &Machine,
    nqn: &str,
    what: &str,
    timeout: Duration,
    want: impl Fn(&[Controller]) -> bool,
) -> Result<Vec<Controller>> {
    let started = Instant::now();
    let last = std::sync::Mutex::new(Vec::new());
    let polled = poll::until(timeout, Pace::every(Duration::from_millis(500)), |_| {
        let (last, want) = (&last, &want);
        async move {
            let found = controllers(vm, nqn).await?;
            let done = want(&found);
            *last.lock().unwrap() = found.clone();
            Ok(done.then_some(found))
        }
    })
    .await?;
    match polled {
        Polled::Done(found) => {
            log::line(&format!(
                "{}: {what} after {:.1} s: {found:?}",
                vm.name(),
                started.elapsed().as_secs_f64()
            ));
            Ok(found)
        }
        Polled::TimedOut(waited) => Err(vm.timeout_error(
            format!("waited {timeout:?} for the controllers of {nqn}: {what}"),
            format!("sysfs shows {:?}", last.into_inner().unwrap()),
            waited,
        )),
    }
}

/// Links subsystem `nqn` into one more nvmet TCP port (`addr:port`, id [`SECOND_PORT_ID`]).
async fn add_port(target: &Machine, nqn: &str, addr: &str, port: u16) -> Result<()> {
    let (p, s) = (format!("ports/{SECOND_PORT_ID}"), shell_quote(nqn));
    target
        .succeed(&format!(
            "set -e; cd /sys/kernel/config/nvmet; mkdir {p}; echo tcp > {p}/addr_trtype; echo ipv4 > {p}/addr_adrfam; \
             echo {addr} > {p}/addr_traddr; echo {port} > {p}/addr_trsvcid; ln -s /sys/kernel/config/nvmet/subsystems/{s} {p}/subsystems/{s}"
        ))
        .await
        .map(drop)
}

/// Takes that port away: the subsystem is unlinked (nvmet drops its controllers there) and the
/// port removed.
async fn remove_port(target: &Machine, nqn: &str) -> Result<()> {
    let p = format!("ports/{SECOND_PORT_ID}");
    target
        .succeed(&format!(
            "set -e; cd /sys/kernel/config/nvmet; rm {p}/subsystems/{}; rmdir {p}",
            shell_quote(nqn)
        ))
        .await
        .map(drop)
}

/// The TCP ports the daemon reports for subsystem `nqn`.
async fn subsystem_ports(client: &mut TargetClient, nqn: &str) -> Result<Vec<proto::Port>> {
    let subs = client
        .list_subsystems(proto::ListSubsystemsRequest {})
        .await
        .context("ListSubsystems")?
        .into_inner()
        .subsystems;
    let sub = subs
        .into_iter()
        .find(|s| s.nqn == nqn)
        .with_context(|| format!("ListSubsystems does not list {nqn}"))?;
    Ok(sub.ports)
}

/// Bytes moved over the job's run time: the integrity job's verify reads do not show in fio's
/// read bandwidth, so both directions are counted from the bytes.
fn throughput(report: &crate::tools::fio::FioReport) -> String {
    let secs = report.jobs.iter().map(|j| j.job_runtime).max().unwrap_or(0) as f64 / 1000.0;
    let kib_s = |d| report.io_bytes(d) as f64 / 1024.0 / secs.max(0.001);
    format!(
        "{:.0} KiB/s written, {:.0} KiB/s read back to verify, over {secs:.1} s",
        kib_s(Direction::Write),
        kib_s(Direction::Read)
    )
}

async fn disconnect(d: &Driver) -> Result<()> {
    d.start_all().await?;
    let (target, vm) = (d.machine("target")?, d.machine("initiator")?);
    let mut client = target.target_client().await?;
    let share = share_disk(d, &target, &mut client, None).await?;
    let options = short_loss();
    let device = d
        .subtest(
            &format!(
                "connect (keep-alive {} s, controller loss {} s)",
                options.keep_alive_tmo.unwrap(),
                options.ctrl_loss_tmo.unwrap()
            ),
            connect_with(&vm, &share, &options),
        )
        .await?;
    let fio =
        d.subtest("run fio integrity on the namespace", start_fio(&vm, &device, 600, 0)).await?;
    let bound = loss_bound(&options);
    d.subtest(&format!("block the target: fio fails within {:.0} s", bound.as_secs_f64()), async {
        target.block().await?;
        let (outcome, took) = fio_ends_within(&vm, &fio, Instant::now(), bound).await?;
        let failure = outcome.expect_error()?;
        log::line(&format!(
            "fio failed {:.1} s after the block: errno {}",
            took.as_secs_f64(),
            failure.errno
        ));
        Ok(())
    })
    .await?;
    d.subtest("unblock the target: nvme disconnect-all succeeds", async {
        target.unblock().await?;
        vm.succeed(&Nvme::disconnect_all()).await?;
        nvmeof::wait_for_no_namespace(&vm, &share.nqn, None, timeouts::hotplug()).await?;
        let left = controllers(&vm, &share.nqn).await?;
        if !left.is_empty() {
            bail!("after disconnect-all, controllers of {} are left: {left:?}", share.nqn);
        }
        nvmeof::expect_target_alive(&target, &mut client).await.map(drop)
    })
    .await
}

async fn reconnect(d: &Driver) -> Result<()> {
    d.start_all().await?;
    let (target, vm) = (d.machine("target")?, d.machine("initiator")?);
    let mut client = target.target_client().await?;
    let share = share_disk(d, &target, &mut client, None).await?;
    let options = FabricsOptions::scaled_timeouts();
    let device = d
        .subtest(
            &format!(
                "connect with a long controller-loss timeout ({} s)",
                options.ctrl_loss_tmo.unwrap()
            ),
            async { connect_with(&vm, &share, &options).await },
        )
        .await?;
    // Long enough to run well past the block: I/O must resume and be verified after it.
    let fio = d.subtest("run fio integrity with verify", start_fio(&vm, &device, 25, 0)).await?;
    d.subtest(
        &format!("block the target for {} s, then unblock it", RECONNECT_BLOCK.as_secs()),
        async {
            target.block().await?;
            tokio::time::sleep(RECONNECT_BLOCK).await;
            target.unblock().await?;
            if !fio.is_running().await? {
                bail!(
                    "fio ended while the target was blocked; {:?}",
                    fio.wait().await?.expect_clean().err()
                );
            }
            Ok(())
        },
    )
    .await?;
    d.subtest("I/O resumes: fio with verify reports no error", async {
        let report = fio.wait().await?.expect_clean()?.clone();
        // The controller is live again (it may or may not have reconnected under the block).
        wait_for_controllers(&vm, &share.nqn, "one live controller", timeouts::request(), |c| {
            c.len() == 1 && c[0].state == "live"
        })
        .await?;
        log::line(&format!(
            "after a {} s block: {}",
            RECONNECT_BLOCK.as_secs(),
            report.summary_line()
        ));
        Ok(())
    })
    .await
}

async fn ctrl_loss(d: &Driver) -> Result<()> {
    d.start_all().await?;
    let (target, vm) = (d.machine("target")?, d.machine("initiator")?);
    let mut client = target.target_client().await?;
    let share = share_disk(d, &target, &mut client, None).await?;
    let options = short_loss();
    let device = d
        .subtest(
            &format!("connect with controller loss {} s", options.ctrl_loss_tmo.unwrap()),
            connect_with(&vm, &share, &options),
        )
        .await?;
    let fio = d.subtest("run fio integrity", start_fio(&vm, &device, 600, 0)).await?;
    let bound = loss_bound(&options);
    d.subtest(
        "block the target past the controller-loss timeout: the controller is removed",
        async {
            target.block().await?;
            let since = Instant::now();
            wait_for_controllers(
                &vm,
                &share.nqn,
                "the controller removed",
                bound,
                <[Controller]>::is_empty,
            )
            .await?;
            nvmeof::wait_for_no_namespace(&vm, &share.nqn, None, timeouts::request()).await?;
            log::line(&format!(
                "controller removed {:.1} s after the block",
                since.elapsed().as_secs_f64()
            ));
            Ok(())
        },
    )
    .await?;
    d.subtest("fio fails cleanly (an I/O error, no verify failure)", async {
        let (outcome, _) = fio_ends_within(&vm, &fio, Instant::now(), timeouts::request()).await?;
        outcome.expect_error().map(drop)
    })
    .await?;
    d.subtest("unblock the target: reconnecting works and fio is clean", async {
        target.unblock().await?;
        let device = connect_with(&vm, &share, &options).await?;
        let outcome = super::workload::run_fio(&vm, &job(&device, 5, 0), &device).await?;
        outcome.expect_clean().map(drop)
    })
    .await
}

async fn nvmf_ports(d: &Driver) -> Result<()> {
    d.start_all().await?;
    let (target, vm1, vm2) = (d.machine("target")?, d.machine("vm1")?, d.machine("vm2")?);
    let mut client = target.target_client().await?;
    let share = share_disk(d, &target, &mut client, None).await?;
    let addr = target.address().to_string();
    d.subtest(&format!("link the subsystem into a second port, {addr}:{SECOND_PORT}"), async {
        add_port(&target, &share.nqn, &addr, SECOND_PORT).await?;
        let ports: Vec<u32> = subsystem_ports(&mut client, &share.nqn).await?.iter().map(|p| p.trsvcid).collect();
        if ports.len() != 2 || !ports.contains(&u32::from(NVMF_PORT)) || !ports.contains(&u32::from(SECOND_PORT)) {
            bail!("expected the subsystem on ports {NVMF_PORT} and {SECOND_PORT}, the target lists {ports:?}");
        }
        // nvmet's discovery log lists the subsystems of the port it is asked through.
        for port in [NVMF_PORT, SECOND_PORT] {
            nvmeof::discover(&vm1, &Share { port, ..share.clone() }).await?;
        }
        Ok(())
    })
    .await?;
    let options = short_loss();
    let dev1 = d
        .subtest(
            &format!("vm1 connects through port {NVMF_PORT}"),
            connect_with(&vm1, &share, &options),
        )
        .await?;
    let dev2 = d
        .subtest(
            &format!("vm2 connects through port {SECOND_PORT}"),
            connect_to(&vm2, &addr, SECOND_PORT, &share.nqn, &options),
        )
        .await?;
    let (fio1, fio2) = d
        .subtest("run fio integrity on both (separate regions)", async {
            let fio1 = FioRun::start(&vm1, &job(&dev1, 40, 0), &dev1).await?;
            let fio2 = FioRun::start(&vm2, &job(&dev2, 600, 128), &dev2).await?;
            fio2.settle(SETTLE).await?;
            Ok((fio1, fio2))
        })
        .await?;
    let bound = loss_bound(&options);
    d.subtest(
        &format!("take port {SECOND_PORT} away: vm2's controller is removed, its fio fails"),
        async {
            remove_port(&target, &share.nqn).await?;
            let since = Instant::now();
            wait_for_controllers(
                &vm2,
                &share.nqn,
                "the controller removed",
                bound,
                <[Controller]>::is_empty,
            )
            .await?;
            let (outcome, _) =
                fio_ends_within(&vm2, &fio2, since, bound + timeouts::request()).await?;
            outcome.expect_error().map(drop)
        },
    )
    .await?;
    d.subtest(&format!("vm1's fio through port {NVMF_PORT} is clean"), async {
        let o = fio1.wait().await?;
        o.expect_clean().map(drop)
    })
    .await?;
    d.subtest(&format!("vm2 connects through port {NVMF_PORT}: fio clean"), async {
        let dev = connect_with(&vm2, &share, &options).await?;
        super::workload::run_fio(&vm2, &job(&dev, 5, 128), &dev).await?.expect_clean().map(drop)
    })
    .await
}

async fn nvmf_distributed(d: &Driver) -> Result<()> {
    d.start_all().await?;
    let (t1, t2, vm) = (d.machine("target1")?, d.machine("target2")?, d.machine("initiator")?);
    let (mut c1, mut c2) = (t1.target_client().await?, t2.target_client().await?);
    // Explicit NQNs: the default is made from the bdev, alike on two targets with alike disks.
    let s1 = share_disk(d, &t1, &mut c1, Some("nqn.2019-05.io.vmcheck:target1")).await?;
    let s2 = share_disk(d, &t2, &mut c2, Some("nqn.2019-05.io.vmcheck:target2")).await?;
    let options = short_loss();
    let (dev1, dev2) = d
        .subtest("the initiator connects to both targets", async {
            let dev1 = connect_with(&vm, &s1, &options).await?;
            let dev2 = connect_with(&vm, &s2, &options).await?;
            if dev1 == dev2 {
                bail!("both subsystems show as one device {dev1}");
            }
            Ok((dev1, dev2))
        })
        .await?;
    let (fio1, fio2) = d
        .subtest("run fio integrity on both", async {
            let fio1 = FioRun::start(&vm, &job(&dev1, 600, 0), &dev1).await?;
            let fio2 = FioRun::start(&vm, &job(&dev2, 45, 0), &dev2).await?;
            fio1.settle(SETTLE).await?;
            Ok((fio1, fio2))
        })
        .await?;
    let bound = loss_bound(&options);
    d.subtest("block target1: its fio fails", async {
        t1.block().await?;
        let (outcome, took) = fio_ends_within(&vm, &fio1, Instant::now(), bound).await?;
        outcome.expect_error()?;
        log::line(&format!(
            "fio on target1's namespace failed {:.1} s after the block",
            took.as_secs_f64()
        ));
        Ok(())
    })
    .await?;
    d.subtest("fio on target2's namespace is clean", async {
        let o = fio2.wait().await?;
        o.expect_clean().map(drop)?;
        let live = controllers(&vm, &s2.nqn).await?;
        if live.len() != 1 || live[0].state != "live" {
            bail!("expected target2's controller live, sysfs shows {live:?}");
        }
        Ok(())
    })
    .await?;
    d.subtest("unblock target1: both targets still answer", async {
        t1.unblock().await?;
        nvmeof::expect_target_alive(&t1, &mut c1).await?;
        nvmeof::expect_target_alive(&t2, &mut c2).await.map(drop)
    })
    .await
}

async fn multipath(d: &Driver) -> Result<()> {
    d.start_all().await?;
    let (target, vm) = (d.machine("target")?, d.machine("initiator")?);
    let mut client = target.target_client().await?;
    let share = share_disk(d, &target, &mut client, None).await?;
    let addr2 = target.address_on(2).to_string();
    d.subtest(&format!("link the subsystem into a port on vlan 2, {addr2}:{SECOND_PORT}"), async {
        add_port(&target, &share.nqn, &addr2, SECOND_PORT).await?;
        let ports: Vec<String> = subsystem_ports(&mut client, &share.nqn)
            .await?
            .iter()
            .map(|p| format!("{}:{}", p.traddr, p.trsvcid))
            .collect();
        let want = [format!("{}:{NVMF_PORT}", share.addr), format!("{addr2}:{SECOND_PORT}")];
        if ports.len() != 2 || !want.iter().all(|w| ports.contains(w)) {
            bail!("expected the subsystem on {want:?}, the target lists {ports:?}");
        }
        Ok(())
    })
    .await?;
    let options = path_options();
    let device = d
        .subtest("connect both paths: one namespace, two live controllers (native multipath)", async {
            let dev = connect_with(&vm, &share, &options).await?;
            let dev2 = connect_to(&vm, &addr2, SECOND_PORT, &share.nqn, &options).await?;
            if dev != dev2 {
                bail!("the two paths show as two devices, {dev} and {dev2}: native multipath is off?");
            }
            let ctrls = wait_for_controllers(&vm, &share.nqn, "two live paths", timeouts::request(), |c| {
                c.len() == 2 && c.iter().all(|c| c.state == "live")
            })
            .await?;
            if !ctrls.iter().any(|c| c.reaches(&addr2, SECOND_PORT)) {
                bail!("no controller reaches {addr2}:{SECOND_PORT}: {ctrls:?}");
            }
            // Both paths carry I/O, so the cut hits requests in flight.
            vm.succeed(&format!(
                "for s in /sys/class/nvme-subsystem/*; do [ \"$(cat $s/subsysnqn)\" = {} ] && echo round-robin > $s/iopolicy; done; true",
                shell_quote(&share.nqn)
            ))
            .await?;
            Ok(dev)
        })
        .await?;
    let fio = d
        .subtest(
            "run fio integrity with verify on the multipath device",
            start_fio(&vm, &device, 45, 0),
        )
        .await?;
    d.subtest("cut the vlan 2 path: its controller leaves live, the other stays live", async {
        target.link_down(2)?;
        wait_for_controllers(
            &vm,
            &share.nqn,
            "the vlan 2 path down, the vlan 1 path live",
            loss_bound(&short_loss()),
            |c| {
                c.len() == 2
                    && c.iter().all(|c| (c.state == "live") != c.reaches(&addr2, SECOND_PORT))
            },
        )
        .await
        .map(drop)
    })
    .await?;
    d.subtest("fio finishes clean over the remaining path", async {
        let o = fio.wait().await?;
        log::line(&format!("multipath fio over a cut path: {}", throughput(o.expect_clean()?)));
        Ok(())
    })
    .await?;
    d.subtest("restore the vlan 2 link: the path comes back live", async {
        target.link_up(2)?;
        wait_for_controllers(&vm, &share.nqn, "two live paths", loss_bound(&short_loss()), |c| {
            c.len() == 2 && c.iter().all(|c| c.state == "live")
        })
        .await
        .map(drop)
    })
    .await
}

async fn lossy_link(d: &Driver) -> Result<()> {
    d.start_all().await?;
    let (target, vm) = (d.machine("target")?, d.machine("initiator")?);
    let mut client = target.target_client().await?;
    let share = share_disk(d, &target, &mut client, None).await?;
    let device =
        d.subtest("connect", connect_with(&vm, &share, &FabricsOptions::scaled_timeouts())).await?;
    let before = target.link(1).context("the target has no vlan 1 link")?.1;
    d.subtest("5 % loss and 20 ms delay on the target's link: fio with verify passes", async {
        target.set_loss(0.05)?;
        target.set_delay(Duration::from_millis(20), Duration::ZERO)?;
        let outcome = super::workload::run_fio(&vm, &job(&device, 20, 0), &device).await;
        target.clear_link_faults()?;
        let outcome = outcome?;
        let report = outcome.expect_clean()?;
        let line = format!(
            "fio over 5 % loss and 20 ms delay: {} ({})",
            throughput(report),
            report.summary_line()
        );
        log::line(&line);
        d.artifact("lossy_link-throughput.txt", &format!("{line}\n"));
        Ok(())
    })
    .await?;
    d.subtest("the switch dropped about 5 % of the target's frames", async {
        let after = target.link(1).context("the target has no vlan 1 link")?.1;
        let lost = after.dropped_by[network::DropReason::Loss as usize]
            - before.dropped_by[network::DropReason::Loss as usize];
        let frames = (after.from_passed + after.from_dropped + after.to_passed + after.to_dropped)
            - (before.from_passed + before.from_dropped + before.to_passed + before.to_dropped);
        let share = lost as f64 / frames.max(1) as f64;
        log::line(&format!("lost {lost} of {frames} frames ({:.2} %)", share * 100.0));
        if frames < 1000 || !(0.03..0.07).contains(&share) {
            bail!("expected about 5 % of at least 1000 frames lost, got {lost} of {frames}");
        }
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loss_bound_covers_detection_and_the_controller_loss_timeout() {
        let o = FabricsOptions {
            keep_alive_tmo: Some(10),
            ctrl_loss_tmo: Some(10),
            reconnect_delay: Some(2),
            ..Default::default()
        };
        // 20 s to notice, 10 s to tear down, 5 attempts of up to 5 s, then slack.
        assert_eq!(
            loss_bound(&o),
            Duration::from_secs(55) + Duration::from_secs_f64(30.0 * timeouts::factor())
        );
    }

    #[test]
    fn multipath_machines_are_on_two_vlans_with_two_subnets() {
        for n in two_vlans() {
            assert_eq!(n.vlans, [1, 2]);
            assert_ne!(network::vlan_address(n.address, 1), network::vlan_address(n.address, 2));
        }
    }
}
