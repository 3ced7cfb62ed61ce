//! `vmcheck bench`: what the driver costs over bare QEMU, measured, not asserted.
//!
//! - boot until the guest agent answers: vmcheck (`start` + `wait_for_agent`) beside a bare
//!   `qemu-system-x86_64` of the same kernel, initramfs and devices with qemu-ga talked to
//!   directly (`guest-ping` until it answers);
//! - the round trip of `succeed("true")` beside a bare `guest-exec` of `/bin/true` with tight
//!   `guest-exec-status` polling (median and p90);
//! - test-network throughput through the driver's switch beside a direct QEMU-to-QEMU link.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::config::{NodeSpec, Role};
use crate::driver::{Driver, DriverOptions};
use crate::poll::{Pace, Polled};
use crate::qapi_stream::JsonReader;
use crate::qemu::{Console, QemuProcess, QemuSpec};

/// Options of a bench run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub boots: usize,
    pub execs: usize,
    pub transfer_mib: u64,
}

/// Median and 90th percentile of `samples`, in seconds.
pub fn median_p90(samples: &mut [f64]) -> (f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.9))
}

/// The bare command line: vmcheck's own, less the QMP monitor (whose wait=on holds QEMU until a
/// client connects).
fn bare_args(spec: &QemuSpec) -> Result<Vec<String>> {
    let args = spec.kernel_boot_args()?;
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let pair = args.get(i + 1).map(String::as_str).unwrap_or("");
        if (args[i] == "-chardev" && pair.contains("id=qmp0")) || (args[i] == "-mon" && pair.contains("qmp0")) {
            i += 2;
            continue;
        }
        out.push(args[i].clone());
        i += 1;
    }
    Ok(out)
}

/// A bare QEMU with a raw agent connection.
struct Bare {
    _process: QemuProcess,
    reader: JsonReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Bare {
    async fn boot(spec: &QemuSpec) -> Result<(Bare, Duration)> {
        let _ = std::fs::remove_file(&spec.qga_socket);
        for nic in &spec.nics {
            let _ = std::fs::remove_file(&nic.local);
        }
        let mut cmd = tokio::process::Command::new(&spec.qemu);
        cmd.args(bare_args(spec)?)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let started = Instant::now();
        let child = crate::process::spawn(cmd).await?;
        let process = QemuProcess::adopt(child, Console::new(&spec.name, None));
        let stream = crate::qmp::connect_unix(&spec.qga_socket, crate::timeouts::request()).await?;
        let (r, w) = stream.into_split();
        let bare = Bare { _process: process, reader: JsonReader::new(r), writer: w };
        // guest-ping every 100 ms; pings written before the agent runs are answered when it starts.
        let bare = tokio::sync::Mutex::new(bare);
        let answered = crate::poll::until(crate::timeouts::boot(), Pace::every(Duration::ZERO), |_| async {
            let mut bare = bare.lock().await;
            bare.send(json!({"execute": "guest-ping"})).await?;
            match tokio::time::timeout(Duration::from_millis(100), bare.reader.next()).await {
                Ok(reply) => reply.map(|_| Some(())),
                Err(_) => Ok(None),
            }
        })
        .await?;
        if let Polled::TimedOut(waited) = answered {
            bail!("bare boot: no agent answer in {waited:?}");
        }
        let mut bare = bare.into_inner();
        let boot = started.elapsed();
        // Drain the answers to the other pings.
        while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(300), bare.reader.next()).await {}
        Ok((bare, boot))
    }

    async fn send(&mut self, v: Value) -> Result<()> {
        let mut line = serde_json::to_vec(&v)?;
        line.push(b'\n');
        self.writer.write_all(&line).await?;
        Ok(())
    }

    async fn call(&mut self, v: Value) -> Result<Value> {
        self.send(v).await?;
        let reply = self.reader.next().await?;
        reply.get("return").cloned().with_context(|| format!("agent error: {reply}"))
    }

    /// guest-exec of argv, then guest-exec-status as fast as answers come.
    async fn exec(&mut self, argv: &[&str]) -> Result<Value> {
        let pid = self
            .call(json!({"execute": "guest-exec", "arguments": {"path": argv[0], "arg": &argv[1..], "capture-output": true}}))
            .await?["pid"]
            .clone();
        // Back to back, bounded like every wait of the driver.
        let this = tokio::sync::Mutex::new(self);
        let polled = crate::poll::until(
            crate::timeouts::command(),
            Pace::every(Duration::ZERO).after_tight(crate::timeouts::command()),
            |_| async {
                let status = this.lock().await.call(json!({"execute": "guest-exec-status", "arguments": {"pid": pid}})).await?;
                Ok((status["exited"] == true).then_some(status))
            },
        )
        .await?;
        match polled {
            Polled::Done(status) => Ok(status),
            Polled::TimedOut(waited) => bail!("bare exec of {argv:?}: not ended after {waited:?}"),
        }
    }
}

fn one_node(name: &str, host: u8) -> NodeSpec {
    NodeSpec::new(name, Role::Target, host)
}

/// Runs the benchmark and prints a report.
pub async fn run(options: &BenchOptions) -> Result<String> {
    let mut report = String::new();
    let mut line = |s: String| {
        crate::log::line(&s);
        report.push_str(&s);
        report.push('\n');
    };
    crate::log::set_echo_console(false);
    let driver = Driver::new(vec![one_node("bench", 1), one_node("peer", 2)], DriverOptions::default()).await?;
    line(format!("accelerator: {}", driver.accel.name()));
    let m = driver.machine("bench")?;
    let spec = m.qemu_spec();
    let bare_dir = driver.run_dir().join("bare");
    std::fs::create_dir_all(&bare_dir)?;
    // The same devices as vmcheck's machine; only the QMP monitor is left out.
    let mut bare_spec = spec.clone();
    bare_spec.qga_socket = bare_dir.join("qga.sock");
    for nic in &mut bare_spec.nics {
        nic.local = bare_dir.join("net.sock");
    }

    // Boot to agent, alternating so that drift in host load hits both alike.
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    let mut bare_vm = None;
    for _ in 0..options.boots {
        let started = Instant::now();
        m.wait_for_agent().await?;
        ours.push(started.elapsed().as_secs_f64());
        m.kill().await;
        // The previous bare VM goes before the next boots: one VM at a time.
        drop(bare_vm.take());
        let (vm, t) = Bare::boot(&bare_spec).await?;
        bare.push(t.as_secs_f64());
        bare_vm = Some(vm);
    }
    let (om, _) = median_p90(&mut ours);
    let (bm, _) = median_p90(&mut bare);
    line(format!("boot to agent (median of {}): vmcheck {om:.2} s, bare {bm:.2} s, ratio {:.3}", options.boots, om / bm));

    // Exec round trip: the bare VM is still up; boot ours again beside it.
    let mut bare_vm = bare_vm.context("no bare VM")?;
    // Both VMs get the same settling time after boot and the same warm-up calls: a guest just
    // booted still finishes start-up work (the daemon, the network), which skews the first calls.
    const SETTLE: Duration = Duration::from_secs(5);
    const WARM_UP: usize = 10;
    let (mut ours, mut bare, mut bare_sh) = (Vec::new(), Vec::new(), Vec::new());
    tokio::time::sleep(SETTLE).await;
    for _ in 0..WARM_UP {
        bare_vm.exec(&["/bin/true"]).await?;
    }
    // succeed() runs its command with `sh -c`: this shows what the shell itself costs.
    for _ in 0..options.execs {
        let t = Instant::now();
        bare_vm.exec(&["/bin/sh", "-c", "true"]).await?;
        bare_sh.push(t.elapsed().as_secs_f64());
    }
    for _ in 0..options.execs {
        let t = Instant::now();
        let status = bare_vm.exec(&["/bin/true"]).await?;
        bare.push(t.elapsed().as_secs_f64());
        if status["exitcode"] != 0 {
            bail!("bare /bin/true: {status}");
        }
    }
    drop(bare_vm);
    m.wait_for_agent().await?;
    tokio::time::sleep(SETTLE).await;
    for _ in 0..WARM_UP {
        m.execute("true").await?;
    }
    crate::log::set_echo_console(false);
    for _ in 0..options.execs {
        let t = Instant::now();
        m.execute("true").await?;
        ours.push(t.elapsed().as_secs_f64());
    }
    let (om, o90) = median_p90(&mut ours);
    let (bm, b90) = median_p90(&mut bare);
    let (sm, s90) = median_p90(&mut bare_sh);
    line(format!(
        "succeed(\"true\") round trip over {} calls: vmcheck median {:.1} ms p90 {:.1} ms; bare guest-exec median {:.1} ms p90 {:.1} ms; ratio {:.3}",
        options.execs,
        om * 1e3,
        o90 * 1e3,
        bm * 1e3,
        b90 * 1e3,
        om / bm
    ));
    line(format!(
        "  (bare guest-exec of `sh -c true`: median {:.1} ms p90 {:.1} ms; vmcheck over it: ratio {:.3})",
        sm * 1e3,
        s90 * 1e3,
        om / sm
    ));

    // Throughput: through the switch, then over a direct link between two bare QEMUs.
    let peer = driver.machine("peer")?;
    peer.wait_for_agent().await?;
    let switched = transfer(&m, &peer, options.transfer_mib).await?;
    m.kill().await;
    peer.kill().await;
    let direct = direct_transfer(&driver, options.transfer_mib).await?;
    line(format!(
        "test network, {} MiB over TCP (busybox httpd, wget): switch {:.1} MiB/s, direct QEMU-to-QEMU link {:.1} MiB/s, ratio {:.3}",
        options.transfer_mib,
        switched,
        direct,
        switched / direct
    ));
    driver.kill_all().await;
    Ok(report)
}

/// A throughput run: the receiver serves a file of `mib` MiB over HTTP (busybox httpd), the
/// sender fetches it and counts the bytes, so a transfer that broke off cannot pass for a fast one.
fn transfer_commands(mib: u64) -> (String, String) {
    (
        format!("mkdir -p /tmp/www && dd if=/dev/zero of=/tmp/www/f bs=1M count={mib} 2>/dev/null && httpd -p 8080 -h /tmp/www"),
        format!("test $(wget -q -O - http://192.0.2.2:8080/f | wc -c) -eq {}", mib << 20),
    )
}

async fn transfer(from: &crate::Machine, to: &crate::Machine, mib: u64) -> Result<f64> {
    let (serve, fetch) = transfer_commands(mib);
    to.succeed(&serve).await?;
    to.wait_for_open_port(8080, crate::timeouts::request()).await?;
    let t = Instant::now();
    from.succeed(&fetch).await?;
    Ok(mib as f64 / t.elapsed().as_secs_f64())
}

/// The same transfer between two bare QEMUs whose NICs point at each other.
async fn direct_transfer(driver: &Driver, mib: u64) -> Result<f64> {
    let dir = driver.run_dir().join("direct");
    std::fs::create_dir_all(&dir)?;
    let mut a = driver.machine("bench")?.qemu_spec();
    let mut b = driver.machine("peer")?.qemu_spec();
    for (spec, n) in [(&mut a, "a"), (&mut b, "b")] {
        spec.qga_socket = dir.join(format!("{n}-qga.sock"));
        spec.control = None;
        spec.nics[0].local = dir.join(format!("{n}-net.sock"));
    }
    a.nics[0].remote = b.nics[0].local.clone();
    b.nics[0].remote = a.nics[0].local.clone();
    let (mut va, _) = Bare::boot(&a).await?;
    let (mut vb, _) = Bare::boot(&b).await?;
    let (serve, fetch) = transfer_commands(mib);
    let served = vb.exec(&["/bin/sh", "-c", &serve]).await?;
    if served["exitcode"] != 0 {
        bail!("direct link: serving failed: {served}");
    }
    let t = Instant::now();
    let status = va.exec(&["/bin/sh", "-c", &fetch]).await?;
    if status["exitcode"] != 0 {
        bail!("direct link: the transfer failed: {status}");
    }
    Ok(mib as f64 / t.elapsed().as_secs_f64())
}
