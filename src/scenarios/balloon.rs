//! The virtio balloon test plan (../shared/seeds/003, the Linux-guest rows: not Windows, driver
//! packaging, signing, services or WHQL). Each plan row is a subtest named after it; rows that
//! need the same machine share its boot.
//!
//! Tolerances are tp-qemu's `balloon_check`: QMP's reported size exact; the guest's MemTotal
//! within 100 MiB of the target; balloon statistics within 10 % or 150 MiB of /proc/meminfo.
//! The machines boot the balloon without deflate-on-oom (MemTotal follows it); the hot-plug
//! scenario also plugs one with deflate-on-oom and checks MemTotal does not follow.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures::FutureExt;

use super::{Scenario, ScriptFn};
use crate::config::{NodeSpec, Role};
use crate::driver::Driver;
use crate::log;
use crate::machine::Machine;
use crate::machine::{stat_matches, BalloonStats};
use crate::poll::{self, Pace, Polled};
use crate::qemu::Balloon;
use crate::qga::MemoryStats;
use crate::qmp::QmpError;

/// The guest's memory (the default initiator's).
pub const GUEST_MIB: u64 = 768;
/// tp-qemu: the guest's MemTotal within 100 MiB of the balloon's target.
pub const MEM_TOTAL_TOLERANCE_MIB: u64 = 100;

pub fn scenarios() -> Vec<Scenario> {
    let s = |name, description, nodes: fn() -> Vec<NodeSpec>, script: ScriptFn| {
        Scenario::new(name, description, script).machines(nodes())
    };
    let all = vec![
        s(
            "balloon_basic",
            "balloon: evict, enlarge, evict then enlarge, ratios 0.5/0.75/0.8, stats, illegal values, stop/cont during evict and enlarge",
            one_vm,
            |d| basic(d).boxed(),
        ),
        s(
            "balloon_cmdline",
            "balloon: a second balloon refused at boot and at hot-plug; the driver disabled on the kernel command line",
            blacklisted_vm,
            |d| cmdline(d).boxed(),
        ),
        s("balloon_power", "balloon: shutdown and reboot with the balloon enabled, during evict and during enlarge", one_vm, |d| {
            power(d).boxed()
        }),
        s(
            "balloon_hotplug",
            "balloon: hot-unplug and hot-plug, reboot and shutdown after each, in a loop; deflate-on-oom keeps MemTotal",
            one_vm,
            |d| hotplug(d).boxed(),
        ),
        s(
            "balloon_migrate",
            "balloon: live migration with the balloon, after hot-plug, hot-unplug, evict, enlarge, and during balloon changes in a loop",
            one_vm,
            |d| migrate(d).boxed(),
        ),
    ];
    all.into_iter().map(host_only).collect()
}

/// Why each balloon plan needs the host: guest mode refuses it, with the reason.
fn host_only(s: Scenario) -> Scenario {
    let why = match s.name() {
        "balloon_cmdline" => "the virtio balloon (QMP) and QEMU started with extra arguments",
        "balloon_power" => "the virtio balloon (QMP), shutdown and reboot (power)",
        "balloon_hotplug" => "the virtio balloon hot-plugged (QMP), reboot and shutdown (power)",
        "balloon_migrate" => "the virtio balloon (QMP) and live migration",
        _ => "the virtio balloon (QMP)",
    };
    s.host_only(why)
}

fn vm() -> NodeSpec {
    NodeSpec::new("vm1", Role::Initiator, 2).with_memory(GUEST_MIB)
}
fn one_vm() -> Vec<NodeSpec> {
    vec![vm()]
}
fn blacklisted_vm() -> Vec<NodeSpec> {
    vec![vm().with_kernel_param("module_blacklist=virtio_balloon")]
}

/// The balloon reaches `mib` exactly (QMP) and the guest's MemTotal is within tp-qemu's
/// tolerance of it.
pub async fn evict_or_enlarge(vm: &Machine, mib: u64) -> Result<MemoryStats> {
    let mem = vm.balloon(mib).await?;
    expect_mem_total_near(vm, &mem, mib)?;
    Ok(mem)
}

pub fn expect_mem_total_near(vm: &Machine, mem: &MemoryStats, mib: u64) -> Result<()> {
    let total_mib = mem.total_kib / 1024;
    if total_mib.abs_diff(mib) > MEM_TOTAL_TOLERANCE_MIB {
        return Err(vm.error(
            format!("expected the guest's MemTotal within {MEM_TOTAL_TOLERANCE_MIB} MiB of the balloon's {mib} MiB"),
            format!("MemTotal is {total_mib} MiB ({mem:?})"),
        ));
    }
    log::line(&format!("{}: MemTotal {total_mib} MiB for a balloon of {mib} MiB", vm.name()));
    Ok(())
}

/// QMP's balloon size must be `mib` exactly.
async fn expect_actual(vm: &Machine, mib: u64) -> Result<()> {
    let actual = vm.balloon_actual().await?;
    if actual != mib << 20 {
        return Err(vm.error(
            format!("expected query-balloon {} bytes ({mib} MiB)", mib << 20),
            format!("it says {actual} bytes"),
        ));
    }
    Ok(())
}

/// Starts a balloon change to `mib` and returns once the balloon has moved part of the way:
/// the change is under way, not done.
async fn start_change(vm: &Machine, mib: u64) -> Result<u64> {
    let before = vm.balloon_actual().await?;
    vm.balloon_request(mib).await?;
    // Polled closely: the change must be caught under way, before it is done.
    let moved =
        |_| async move { Ok(Some(vm.balloon_actual().await?).filter(|now| *now != before)) };
    match poll::until(
        crate::machine::balloon_timeout(),
        Pace::every(Duration::from_millis(20)),
        moved,
    )
    .await?
    {
        Polled::Done(now) => {
            log::line(&format!(
                "{}: balloon under way: {} MiB on the way from {} to {mib} MiB",
                vm.name(),
                now >> 20,
                before >> 20
            ));
            Ok(now)
        }
        Polled::TimedOut(_) => Err(vm.error(
            format!("the balloon did not start moving towards {mib} MiB"),
            format!("still {before} bytes"),
        )),
    }
}

/// A paused guest's balloon does not move: two readings a second apart agree.
async fn expect_balloon_still(vm: &Machine) -> Result<u64> {
    let a = vm.balloon_actual().await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let b = vm.balloon_actual().await?;
    if a != b {
        return Err(vm.error(
            "the balloon moved while the guest was paused",
            format!("{a} bytes, then {b}"),
        ));
    }
    Ok(a)
}

/// The balloon's statistics agree with /proc/meminfo within 10 % or 150 MiB.
async fn expect_stats_match_meminfo(vm: &Machine, after: i64) -> Result<BalloonStats> {
    let stats = vm.wait_for_balloon_stats(after, Duration::from_secs(30)).await?;
    let mem = vm.memory_stats().await?;
    let pairs = [
        ("stat-total-memory", stats.total_memory, "MemTotal", mem.total_kib),
        ("stat-free-memory", stats.free_memory, "MemFree", mem.free_kib),
        ("stat-available-memory", stats.available_memory, "MemAvailable", mem.available_kib),
    ];
    for (stat, value, field, kib) in pairs {
        let Some(value) = value else { bail!("the guest reports no {stat}: {}", stats.raw) };
        if !stat_matches(value, kib << 10) {
            return Err(vm.error(
                format!(
                    "{stat} {} MiB is not within 10 % or 150 MiB of {field} {} MiB",
                    value >> 20,
                    kib >> 10
                ),
                format!("guest-stats: {}\nmeminfo: {mem:?}", stats.raw),
            ));
        }
    }
    log::line(&format!(
        "{}: balloon stats total {} MiB, free {} MiB agree with /proc/meminfo",
        vm.name(),
        stats.total_memory.unwrap_or(0) >> 20,
        stats.free_memory.unwrap_or(0) >> 20
    ));
    Ok(stats)
}

/// A refusal with QEMU's GenericError class.
fn expect_generic_error(vm: &Machine, result: Result<()>, what: &str) -> Result<QmpError> {
    match result {
        Ok(()) => Err(vm.error(format!("expected QEMU to refuse {what}"), "it accepted")),
        Err(e) => match e.downcast_ref::<QmpError>() {
            Some(q) if q.class == qapi::ErrorClass::GenericError => {
                log::line(&format!("{}: {what} refused: {}", vm.name(), q.desc));
                Ok(q.clone())
            }
            _ => {
                Err(vm.error(format!("expected a GenericError refusing {what}"), format!("{e:#}")))
            }
        },
    }
}

/// The guest answers and runs a command.
async fn expect_alive(vm: &Machine) -> Result<()> {
    vm.succeed("true").await.map(drop)
}

async fn basic(d: &Driver) -> Result<()> {
    d.start_all().await?;
    let vm = d.machine("vm1")?;
    let full = d
        .subtest("the balloon starts at the guest's memory", async {
            expect_actual(&vm, GUEST_MIB).await?;
            let mem = vm.memory_stats().await?;
            expect_mem_total_near(&vm, &mem, GUEST_MIB)?;
            if !vm.guest_balloon_bound().await? {
                bail!("the guest's virtio_balloon driver has no device");
            }
            Ok(mem)
        })
        .await?;
    d.subtest("evict guest's unused memory", async {
        let mem = evict_or_enlarge(&vm, 512).await?;
        let dropped = (full.total_kib - mem.total_kib) / 1024;
        if dropped.abs_diff(256) > 16 {
            bail!("evicting 256 MiB lowered MemTotal by {dropped} MiB");
        }
        Ok(())
    })
    .await?;
    d.subtest("enlarge guest's memory", async {
        let mem = evict_or_enlarge(&vm, GUEST_MIB).await?;
        if mem.total_kib.abs_diff(full.total_kib) > 4096 {
            bail!(
                "MemTotal is {} kB after enlarging back, {} kB at boot",
                mem.total_kib,
                full.total_kib
            );
        }
        Ok(())
    })
    .await?;
    d.subtest("evict then enlarge guest's memory", async {
        evict_or_enlarge(&vm, 384).await?;
        evict_or_enlarge(&vm, 640).await.map(drop)
    })
    .await?;
    for (ratio, label) in [(0.5, "0.5"), (0.75, "0.75"), (0.8, "0.8")] {
        let mib = (GUEST_MIB as f64 * ratio) as u64;
        d.subtest(
            &format!("balloon to {label} of guest memory ({mib} MiB)"),
            evict_or_enlarge(&vm, mib).map(|r| r.map(drop)),
        )
        .await?;
    }
    d.subtest("balloon stats basic test", async {
        // A report already held (the guest's first, sent when its driver came up, in a restored
        // machine at the snapshot's boot) shows the memory of an earlier balloon size: only one
        // stamped after this second, when polling starts, shows the balloon as it is now.
        let polling =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
        vm.set_balloon_stats_interval(2).await?;
        let first = expect_stats_match_meminfo(&vm, polling).await?;
        // The statistics follow the balloon: after enlarging, the next report's total rises.
        evict_or_enlarge(&vm, GUEST_MIB).await?;
        // QEMU stamps a report with the host's time in whole seconds: one stamped after this
        // second was taken after the balloon had grown (an earlier one may show it half way).
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
        let second = expect_stats_match_meminfo(&vm, now.max(first.last_update)).await?;
        let (a, b) = (first.total_memory.unwrap_or(0), second.total_memory.unwrap_or(0));
        if b <= a + (100 << 20) {
            bail!(
                "stat-total-memory went from {} MiB to only {} MiB when the balloon grew by {} MiB",
                a >> 20,
                b >> 20,
                GUEST_MIB - 614
            );
        }
        vm.set_balloon_stats_interval(0).await
    })
    .await?;
    d.subtest(
        "reset memory size to illegal value during runtime (0 and negative refused)",
        async {
            let q = expect_generic_error(
                &vm,
                vm.balloon_request_bytes(0).await,
                "a balloon of 0 bytes",
            )?;
            if !q.desc.contains("value") {
                bail!("the refusal does not name the parameter: {}", q.desc);
            }
            expect_generic_error(
                &vm,
                vm.balloon_request_bytes(-(1 << 20)).await,
                "a negative balloon",
            )?;
            expect_actual(&vm, GUEST_MIB).await?;
            expect_alive(&vm).await
        },
    )
    .await?;
    d.subtest("reset memory size to value more than the max (clamped to guest memory)", async {
        let before = vm.memory_stats().await?;
        vm.balloon_request(2 * GUEST_MIB).await?;
        // QEMU clamps the target to the machine's memory: nothing to move, the size stays.
        tokio::time::sleep(Duration::from_secs(2)).await;
        expect_actual(&vm, GUEST_MIB).await?;
        let after = vm.memory_stats().await?;
        if after.total_kib != before.total_kib {
            bail!("MemTotal changed from {} to {} kB", before.total_kib, after.total_kib);
        }
        expect_alive(&vm).await
    })
    .await?;
    for (label, from, to) in [("evict", GUEST_MIB, 256), ("enlarge", 256, GUEST_MIB)] {
        d.subtest(&format!("stop/cont guest during {label} memory"), async {
            expect_actual(&vm, from).await?;
            let mark = vm.qmp().await?.event_count();
            start_change(&vm, to).await?;
            vm.pause().await?;
            let held = expect_balloon_still(&vm).await?;
            if held == to << 20 {
                log::line(&format!(
                    "{}: the balloon reached its target before the pause took effect",
                    vm.name()
                ));
            }
            vm.resume().await?;
            vm.wait_for_balloon(to << 20, true, mark, crate::machine::balloon_timeout()).await?;
            let mem = vm.memory_stats().await?;
            expect_mem_total_near(&vm, &mem, to)
        })
        .await?;
    }
    Ok(())
}

/// Waits until the balloon stops moving (the same size over 3 s); returns the size.
async fn wait_until_settled(vm: &Machine, timeout: Duration) -> Result<u64> {
    // The size last seen and since when it has not changed.
    let seen = std::sync::Mutex::new((vm.balloon_actual().await?, Instant::now()));
    let settled = |_| {
        let seen = &seen;
        async move {
            let now = vm.balloon_actual().await?;
            let mut seen = seen.lock().unwrap();
            if now != seen.0 {
                *seen = (now, Instant::now());
            }
            Ok((seen.1.elapsed() >= Duration::from_secs(3)).then_some(now))
        }
    };
    match poll::until(timeout, Pace::every(Duration::from_millis(500)), settled).await? {
        Polled::Done(now) => Ok(now),
        Polled::TimedOut(waited) => Err(vm.timeout_error(
            "waiting for the balloon to settle".into(),
            format!("still moving at {} MiB", seen.into_inner().unwrap().0 >> 20),
            waited,
        )),
    }
}

async fn cmdline(d: &Driver) -> Result<()> {
    let vm = d.machine("vm1")?;
    d.subtest("boot multi balloon device (QEMU refuses the second)", async {
        let second = ["-device".to_string(), "virtio-balloon-pci,id=balloon1".to_string()];
        let Err(e) = vm.start_with_args(&second).await else {
            bail!("QEMU started with two balloon devices");
        };
        let text = format!("{e:#}");
        if !text.contains("Only one balloon device is supported") {
            bail!("QEMU failed to start, but not for the second balloon: {text}");
        }
        if vm.is_up().await {
            bail!("the machine runs after QEMU refused it");
        }
        Ok(())
    })
    .await?;
    vm.wait_for_agent().await?;
    d.subtest("disable virtio balloon driver in command line", async {
        // The kernel said so at boot; a restored machine's console never shows that boot, dmesg does.
        vm.wait_for_kernel_message("Module virtio_balloon is blacklisted", Duration::from_secs(5))
            .await?;
        if vm.guest_balloon_bound().await? {
            bail!("virtio_balloon is bound although the kernel command line disables it");
        }
        let qmp = vm.qmp().await?;
        let mark = qmp.event_count();
        let before = vm.memory_stats().await?;
        // QEMU has the device and takes the request; no driver answers it.
        vm.balloon_request(384).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        expect_actual(&vm, GUEST_MIB).await?;
        let changes: Vec<_> =
            qmp.events_since(mark).into_iter().filter(|e| e.name == "BALLOON_CHANGE").collect();
        if !changes.is_empty() {
            bail!("BALLOON_CHANGE without a driver: {changes:?}");
        }
        let after = vm.memory_stats().await?;
        if after.total_kib != before.total_kib {
            bail!(
                "MemTotal changed from {} to {} kB without a balloon driver",
                before.total_kib,
                after.total_kib
            );
        }
        vm.balloon_request(GUEST_MIB).await?;
        expect_alive(&vm).await
    })
    .await?;
    d.subtest("hot-plug multi balloon device (QEMU refuses the second)", async {
        let q = expect_generic_error(
            &vm,
            vm.device_add_balloon("balloon1", Balloon { deflate_on_oom: false }).await,
            "a second balloon",
        )?;
        if !q.desc.contains("balloon") {
            bail!("the refusal does not say why: {}", q.desc);
        }
        let listed = vm.qemu_pci_address("balloon1").await;
        if listed.is_ok() {
            bail!("QEMU lists the refused balloon1 on the PCI bus: {listed:?}");
        }
        expect_actual(&vm, GUEST_MIB).await?;
        expect_alive(&vm).await
    })
    .await
}

/// Requests `to`, waits until the change is under way, then runs `power` (a reboot, or a
/// shutdown and a start); the balloon must work afterwards.
async fn power_during(vm: &Machine, from: u64, to: u64, shutdown: bool) -> Result<()> {
    vm.balloon(from).await?;
    start_change(vm, to).await?;
    if shutdown {
        vm.shutdown().await?;
        if vm.is_up().await {
            bail!("QEMU still runs after the shutdown");
        }
        vm.wait_for_agent().await?;
        // A new QEMU process starts with the balloon deflated.
        expect_actual(vm, GUEST_MIB).await?;
    } else {
        vm.reboot().await?;
        log::line(&format!(
            "{}: after the reboot query-balloon says {} MiB",
            vm.name(),
            vm.balloon_actual().await? >> 20
        ));
    }
    // The balloon works after it: evict and enlarge.
    evict_or_enlarge(vm, 512).await?;
    evict_or_enlarge(vm, GUEST_MIB).await.map(drop)
}

async fn power(d: &Driver) -> Result<()> {
    d.start_all().await?;
    let vm = d.machine("vm1")?;
    d.subtest("reboot guest with balloon driver enabled", async {
        vm.reboot().await?;
        if !vm.guest_balloon_bound().await? {
            bail!("no balloon driver after the reboot");
        }
        evict_or_enlarge(&vm, 512).await?;
        evict_or_enlarge(&vm, GUEST_MIB).await.map(drop)
    })
    .await?;
    d.subtest("shutdown guest with balloon driver enabled", async {
        vm.shutdown().await?;
        vm.wait_for_agent().await?;
        expect_actual(&vm, GUEST_MIB).await
    })
    .await?;
    d.subtest("reboot guest during evicting memory", power_during(&vm, GUEST_MIB, 256, false))
        .await?;
    d.subtest("shutdown guest during evict memory", power_during(&vm, GUEST_MIB, 256, true))
        .await?;
    d.subtest("reboot guest during enlarging memory", power_during(&vm, 256, GUEST_MIB, false))
        .await?;
    d.subtest("shutdown guest during enlarging memory", power_during(&vm, 256, GUEST_MIB, true))
        .await
}

const PLAIN: Balloon = Balloon { deflate_on_oom: false };

async fn hotplug(d: &Driver) -> Result<()> {
    d.start_all().await?;
    let vm = d.machine("vm1")?;
    d.subtest("hot-unplug balloon device", vm.hot_remove_balloon()).await?;
    d.subtest("guest reboot after hotunplug balloon", async {
        vm.reboot().await?;
        vm.expect_no_balloon().await?;
        if vm.guest_balloon_bound().await? {
            bail!("the guest has a balloon after the reboot");
        }
        Ok(())
    })
    .await?;
    d.subtest("guest shutdown after hotunplug balloon (boots without it)", async {
        vm.shutdown().await?;
        vm.wait_for_agent().await?;
        vm.expect_no_balloon().await
    })
    .await?;
    d.subtest("hotplug balloon device", async {
        vm.hot_add_balloon(PLAIN).await?;
        expect_actual(&vm, GUEST_MIB).await?;
        evict_or_enlarge(&vm, 512).await.map(drop)
    })
    .await?;
    d.subtest("reboot guest after hotplug balloon", async {
        vm.reboot().await?;
        if !vm.guest_balloon_bound().await? {
            bail!("no balloon driver after the reboot");
        }
        evict_or_enlarge(&vm, GUEST_MIB).await?;
        evict_or_enlarge(&vm, 512).await.map(drop)
    })
    .await?;
    d.subtest("shutdown guest after hotplug balloon (boots with it)", async {
        vm.shutdown().await?;
        vm.wait_for_agent().await?;
        expect_actual(&vm, GUEST_MIB).await?;
        evict_or_enlarge(&vm, 512).await?;
        evict_or_enlarge(&vm, GUEST_MIB).await.map(drop)
    })
    .await?;
    d.subtest("hotplug/hot-unplug balloon device in a loop (3 rounds)", async {
        for round in 1..=3 {
            log::line(&format!("round {round}"));
            vm.hot_remove_balloon().await?;
            vm.hot_add_balloon(PLAIN).await?;
            evict_or_enlarge(&vm, 512).await?;
        }
        evict_or_enlarge(&vm, GUEST_MIB).await.map(drop)
    })
    .await?;
    d.subtest("hot-plug with deflate-on-oom: QMP follows the balloon, MemTotal does not", async {
        vm.hot_remove_balloon().await?;
        let before = vm.memory_stats().await?;
        vm.hot_add_balloon(Balloon { deflate_on_oom: true }).await?;
        let mem = vm.balloon(384).await?;
        // The driver holds the pages without lowering the managed page count.
        if mem.total_kib.abs_diff(before.total_kib) > 4096 {
            bail!(
                "MemTotal went from {} to {} kB with deflate-on-oom",
                before.total_kib,
                mem.total_kib
            );
        }
        if before.free_kib < mem.free_kib + (200 << 10) {
            bail!(
                "MemFree went only from {} to {} kB although the balloon took 384 MiB",
                before.free_kib,
                mem.free_kib
            );
        }
        vm.balloon(GUEST_MIB).await.map(drop)
    })
    .await?;
    // Without deflate-on-oom a Linux guest asked to go below what it needs inflates until it
    // panics ("System is deadlocked on memory", seen here): the row runs on the balloon that
    // lets the guest take pages back under pressure.
    d.subtest("reset memory size to value less than min value (deflate-on-oom: the guest keeps its floor, alive)", async {
        let floor_mib = 16;
        vm.balloon_request(floor_mib).await?;
        let settled = wait_until_settled(&vm, Duration::from_secs(60)).await?;
        if settled <= floor_mib << 20 {
            bail!("the balloon reached {} MiB, at or below the {floor_mib} MiB asked for", settled >> 20);
        }
        log::line(&format!("{}: the guest kept {} MiB of the {floor_mib} MiB asked for", vm.name(), settled >> 20));
        expect_alive(&vm).await?;
        vm.balloon(GUEST_MIB).await?;
        expect_alive(&vm).await
    })
    .await
}

async fn migrate_and_check(vm: &Machine, mib: u64) -> Result<()> {
    let pid = vm.pid().await;
    let boot_id = vm.succeed("cat /proc/sys/kernel/random/boot_id").await?;
    vm.migrate().await?;
    if vm.pid().await == pid {
        bail!("the machine runs in the same QEMU process after the migration");
    }
    if vm.succeed("cat /proc/sys/kernel/random/boot_id").await? != boot_id {
        bail!("the guest rebooted during the migration");
    }
    expect_actual(vm, mib).await?;
    let mem = vm.memory_stats().await?;
    expect_mem_total_near(vm, &mem, mib)
}

async fn migrate(d: &Driver) -> Result<()> {
    d.start_all().await?;
    let vm = d.machine("vm1")?;
    d.subtest("migration guest when balloon driver enabled", async {
        migrate_and_check(&vm, GUEST_MIB).await?;
        evict_or_enlarge(&vm, 512).await.map(drop)
    })
    .await?;
    d.subtest("migration after evict memory", async {
        evict_or_enlarge(&vm, 384).await?;
        migrate_and_check(&vm, 384).await
    })
    .await?;
    d.subtest("migration after enlarge memory", async {
        evict_or_enlarge(&vm, 640).await?;
        migrate_and_check(&vm, 640).await
    })
    .await?;
    d.subtest("migrate after hot-unplug memory balloon device", async {
        vm.hot_remove_balloon().await?;
        vm.migrate().await?;
        vm.expect_no_balloon().await?;
        expect_alive(&vm).await
    })
    .await?;
    d.subtest("migrate after hot plug memory balloon device", async {
        vm.hot_add_balloon(PLAIN).await?;
        migrate_and_check(&vm, GUEST_MIB).await?;
        evict_or_enlarge(&vm, 512).await.map(drop)
    })
    .await?;
    d.subtest("migrate guest during balloon memory in a loop (3 rounds)", async {
        for (round, mib) in [(1, 384), (2, 640), (3, 448)] {
            log::line(&format!("round {round}"));
            start_change(&vm, mib).await?;
            vm.migrate().await?;
            // The change finishes on the new QEMU, which may have nothing left to announce.
            vm.wait_for_balloon(mib << 20, false, 0, crate::machine::balloon_timeout()).await?;
            let mem = vm.memory_stats().await?;
            expect_mem_total_near(&vm, &mem, mib)?;
        }
        Ok(())
    })
    .await
}
