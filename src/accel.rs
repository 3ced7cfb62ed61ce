//! Choosing the accelerator: KVM only when a short, bounded probe boot shows it really works.
//!
//! `/dev/kvm` existing proves little: on this project's CI machines it exists and KVM hangs, or
//! aborts with `-cpu host`. Seen here: a boot sector runs fine under KVM, but the Linux kernel
//! hangs early ("Probing EDD"). So the probe has two steps, with the CPU model vmcheck would use:
//! a 512-byte boot sector that writes to `isa-debug-exit` (catches aborts at once), then the real
//! kernel booted without a root file system, which panics and, with `-no-reboot`, makes QEMU exit
//! (well under a second where KVM works). The verdict is cached per host boot
//! (`/proc/sys/kernel/random/boot_id`) and kernel.

use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use anyhow::{bail, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// QEMU arguments for this accelerator.
    pub fn qemu_args(self) -> Vec<String> {
        match self {
            Accel::Kvm => vec!["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()],
            // One translation thread per vCPU; `max` gives the guest the most features TCG has.
            Accel::Tcg => vec!["-accel".into(), "tcg,thread=multi,tb-size=256".into(), "-cpu".into(), "max".into()],
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// `mov al, 0x31; out 0xf4, al; hlt; jmp $-1`, padded, with the boot signature.
fn probe_boot_sector() -> Vec<u8> {
    let mut sector = vec![0u8; 512];
    sector[..7].copy_from_slice(&[0xb0, 0x31, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd]);
    sector[510] = 0x55;
    sector[511] = 0xaa;
    sector
}
/// isa-debug-exit turns the written 0x31 into exit status (0x31 << 1) | 1.
const PROBE_EXIT_STATUS: i32 = 0x63;

/// The accelerator to use: `VMCHECK_ACCEL=kvm|tcg` if set, else the (cached) probe's verdict.
pub async fn choose(qemu: &Path, kernel: Option<&Path>, cache_dir: Option<&Path>) -> Result<Accel> {
    match std::env::var("VMCHECK_ACCEL").ok().as_deref() {
        Some("kvm") => return Ok(Accel::Kvm),
        Some("tcg") => return Ok(Accel::Tcg),
        Some("") | None => {}
        Some(other) => bail!("VMCHECK_ACCEL={other:?}: expected kvm or tcg"),
    }
    if !Path::new("/dev/kvm").exists() {
        return Ok(Accel::Tcg);
    }
    let boot_id = format!(
        "{} {}",
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default().trim(),
        kernel.map(|k| k.display().to_string()).unwrap_or_default()
    );
    let cache = cache_dir.map(|d| d.join("accel-probe"));
    if let Some(cached) = cache.as_ref().and_then(|c| std::fs::read_to_string(c).ok()) {
        if let Some((id, verdict)) = cached.split_once('\n') {
            if id == boot_id.trim() {
                return Ok(if verdict.trim() == "kvm" { Accel::Kvm } else { Accel::Tcg });
            }
        }
    }
    let works = match probe(qemu, Accel::Kvm).await {
        Err(e) => Err(e),
        Ok(_) => match kernel {
            Some(k) => probe_kernel(qemu, k, Accel::Kvm).await,
            None => Ok(std::time::Duration::ZERO),
        },
    };
    let verdict = match works {
        Ok(_) => Accel::Kvm,
        Err(e) => {
            crate::log::line(&format!("KVM does not work here, using TCG: {e:#}"));
            Accel::Tcg
        }
    };
    if let Some(c) = cache {
        let _ = std::fs::create_dir_all(c.parent().unwrap_or(Path::new(".")));
        let _ = std::fs::write(c, format!("{}\n{}\n", boot_id.trim(), verdict.name()));
    }
    Ok(verdict)
}

/// Boots the probe sector under `accel`; Ok when QEMU exits with the probe's status in time.
pub async fn probe(qemu: &Path, accel: Accel) -> Result<std::time::Duration> {
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("probe.img");
    std::fs::write(&disk, probe_boot_sector())?;
    let drive = format!("file={},format=raw,if=ide", disk.display());
    let args = ["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-drive", &drive];
    let started = Instant::now();
    let (status, _) = run_probe(qemu, accel, &args, "boot sector").await?;
    match status.code() {
        Some(PROBE_EXIT_STATUS) => Ok(started.elapsed()),
        _ => bail!("{} boot-sector probe exited with {status}", accel.name()),
    }
}

/// Boots `kernel` with no root file system under `accel`: Ok when it reaches its panic in time.
pub async fn probe_kernel(qemu: &Path, kernel: &Path, accel: Accel) -> Result<std::time::Duration> {
    let kernel = kernel.display().to_string();
    let args = ["-kernel", &kernel, "-append", "console=ttyS0 panic=-1 quiet", "-no-reboot", "-serial", "stdio"];
    let started = Instant::now();
    let (status, console) = run_probe(qemu, accel, &args, "kernel").await?;
    if status.success() && console.contains("Kernel panic") {
        Ok(started.elapsed())
    } else {
        bail!("{} kernel probe exited with {status} without reaching its panic", accel.name())
    }
}

/// Runs a probe QEMU with `args` within the probe timeout; its exit status and stdout.
async fn run_probe(qemu: &Path, accel: Accel, args: &[&str], what: &str) -> Result<(std::process::ExitStatus, String)> {
    let mut cmd = tokio::process::Command::new(qemu);
    cmd.args(["-nodefaults", "-no-user-config", "-display", "none", "-M", "pc", "-m", "128"])
        .args(accel.qemu_args())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = crate::process::spawn(cmd).await?;
    let timeout = crate::timeouts::kvm_probe();
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        // Dropping the child on timeout kills it.
        Err(_) => bail!("{} {what} probe did not finish within {timeout:?}", accel.name()),
        Ok(out) => {
            let out = out?;
            Ok((out.status, String::from_utf8_lossy(&out.stdout).into_owned()))
        }
    }
}
