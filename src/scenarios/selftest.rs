//! Hidden scenarios that exercise the driver itself: the process-hygiene tests run them in a
//! child `vmcheck` and check that nothing of the run survives each way it can end.

use std::time::Duration;

use anyhow::{bail, Result};
use futures::FutureExt;

use super::{Scenario, ScriptFn};
use crate::config::{NodeSpec, Role};
use crate::driver::Driver;
use crate::watch::Condition;

fn one_machine() -> NodeSpec {
    NodeSpec::new("machine", Role::Target, 1)
}

pub fn scenarios() -> Vec<Scenario> {
    let s = |name, description, script: ScriptFn| {
        Scenario::new(name, description, script).machine(one_machine()).hidden()
    };
    let all = vec![
        s("selftest-pass", "boots one machine and passes", |d| pass(d).boxed()),
        s("selftest-fail", "boots one machine and fails an assertion", |d| fail(d).boxed()),
        s("selftest-timeout", "boots one machine and runs into a command timeout", |d| timeout(d).boxed()),
        s("selftest-broken-machine", "boots one machine, pulls its plug, then uses it: an error of the machine, not a failure", |d| {
            broken_machine(d).boxed()
        }),
        s("selftest-hang", "boots one machine and waits forever (for signal tests)", |d| hang(d).boxed()),
        s("selftest-kernel-warning", "provokes a kernel splat (a soft lockup) in a step: the kernel watch fails it", |d| {
            kernel_splat(d, false).boxed()
        }),
        s("selftest-kernel-warning-allowed", "the same splat, allowed for its step: passes, the allowance shown", |d| {
            kernel_splat(d, true).boxed()
        }),
        s("selftest-daemon-dies", "kills the target's daemon mid-step: the daemon watch fails it", |d| {
            daemon_dies(d).boxed()
        }),
        s("selftest-invariant-broken", "declares invariants (a guest process alive, the daemon's Health); the process killed mid-step fails it", |d| {
            invariant_broken(d).boxed()
        }),
    ];
    // What needs the machine's host side (QEMU's pid, power, the daemon's console and its
    // forwarded port) is host-only; the rest runs in guest mode too, where the CLI tests run it
    // on the machine they run on.
    let guest = ["selftest-pass", "selftest-fail", "selftest-timeout", "selftest-hang"];
    all.into_iter()
        .map(|s| match guest.contains(&s.name()) {
            true => s,
            false => {
                s.host_only("a self-test of the driver's host side (QEMU, its console, the daemon)")
            }
        })
        .collect()
}

/// The step that breaks the declared invariant.
pub const INVARIANT_STEP: &str = "kill the watched process, then carry on";

/// Two invariants polled every second: a guest process (`sleep`) alive and the target daemon's
/// `Health` answer. The step kills the process and carries on with commands that succeed: only
/// the invariant's watch can fail it, naming the invariant.
async fn invariant_broken(d: &Driver) -> Result<()> {
    d.start_all().await?;
    let m = d.machine("machine")?;
    m.target_client().await?;
    let _sleeper = m.spawn(&["/bin/sleep".into(), "100000".into()]).await?;
    m.wait_until_succeeds("pidof sleep", Duration::from_secs(10)).await?;
    let period = Duration::from_secs(1);
    d.watch("the daemon answers Health", period, Condition::TargetHealthy { machine: m.clone() });
    d.watch(
        "sleep runs",
        period,
        Condition::ProcessAlive { machine: m.clone(), name: "sleep".into() },
    );
    d.subtest("the invariants hold for 5 s", async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok(())
    })
    .await?;
    d.subtest(INVARIANT_STEP, async {
        m.succeed("kill $(pidof sleep)").await?;
        for _ in 0..30 {
            m.succeed("true").await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Ok(())
    })
    .await
}

/// The step that provokes the splat.
pub const SPLAT_STEP: &str = "freeze a busy guest for 6 s";

/// The step that kills the daemon.
pub const KILL_STEP: &str = "kill the target daemon, then carry on";

/// Provokes a real kernel splat without a kernel module of its own (Debian's kernel has no
/// lkdtm): the soft-lockup detector's threshold lowered to 2 s, the guest's vCPU kept busy in a
/// shell loop (an idle vCPU touches the detector when it wakes), and QEMU stopped (SIGSTOP) for
/// 6 s: the guest's clocks run on, so when it resumes the detector sees its CPU stuck for 6 s
/// and prints `BUG: soft lockup` with registers and a call trace. The step itself would pass:
/// only the kernel watch can fail it.
async fn kernel_splat(d: &Driver, allow: bool) -> Result<()> {
    d.start_all().await?;
    let m = d.machine("machine")?;
    if allow {
        d.allow_kernel_message(SPLAT_STEP, r"soft lockup")?;
    }
    d.subtest(SPLAT_STEP, async {
        m.succeed("echo 1 > /proc/sys/kernel/watchdog_thresh").await?;
        let busy = m.spawn(&["/bin/sh".into(), "-c".into(), "while :; do :; done".into()]).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let pid =
            m.pid().await.ok_or_else(|| m.harness_error("no QEMU pid", "it is not running"))?;
        let qemu = nix::unistd::Pid::from_raw(pid as i32);
        nix::sys::signal::kill(qemu, nix::sys::signal::Signal::SIGSTOP)?;
        tokio::time::sleep(Duration::from_secs(6)).await;
        nix::sys::signal::kill(qemu, nix::sys::signal::Signal::SIGCONT)?;
        // Carry on for a while: a step that would pass but for the splat.
        for _ in 0..10 {
            m.succeed("true").await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        busy.kill().await;
        m.succeed("echo 10 > /proc/sys/kernel/watchdog_thresh").await.map(drop)
    })
    .await?;
    d.subtest("the machine still answers", async { m.succeed("true").await.map(drop) }).await
}

/// Kills `vmcheck-target` (SIGKILL) mid-step and carries on with commands that succeed: only
/// the daemon watch can fail the step (the console says `vmcheck: service vmcheck-target exited
/// with status 137` with its last lines at once).
async fn daemon_dies(d: &Driver) -> Result<()> {
    d.start_all().await?;
    let m = d.machine("machine")?;
    m.target_client().await?;
    d.subtest(KILL_STEP, async {
        m.succeed("kill -9 $(pidof vmcheck-target)").await?;
        for _ in 0..30 {
            m.succeed("true").await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Ok(())
    })
    .await
}

async fn pass(d: &Driver) -> Result<()> {
    d.start_all().await?;
    d.machine("machine")?.succeed("true").await?;
    Ok(())
}

async fn fail(d: &Driver) -> Result<()> {
    d.start_all().await?;
    let m = d.machine("machine")?;
    d.subtest("an assertion that fails", async {
        let out = m.succeed("echo 1").await?;
        if out.trim() != "2" {
            bail!("expected 2, the guest said {}", out.trim());
        }
        Ok(())
    })
    .await
}

async fn broken_machine(d: &Driver) -> Result<()> {
    d.start_all().await?;
    let m = d.machine("machine")?;
    m.crash().await?;
    d.subtest("a command on a machine that is gone", async { m.succeed("true").await.map(drop) })
        .await
}

async fn timeout(d: &Driver) -> Result<()> {
    d.start_all().await?;
    d.machine("machine")?.succeed_with_timeout("sleep 600", Duration::from_secs(2)).await?;
    Ok(())
}

async fn hang(d: &Driver) -> Result<()> {
    d.start_all().await?;
    crate::log::line("selftest: machines up, hanging");
    std::future::pending::<()>().await;
    Ok(())
}
