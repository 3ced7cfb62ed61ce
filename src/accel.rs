//! Choosing the accelerator: KVM only when a short, bounded probe boot shows it really works.
//!
//! `/dev/kvm` existing proves little: on this project's CI machines it exists and KVM hangs, or
//! aborts with `-cpu host`. Seen here: a boot sector runs fine under KVM, but the Linux kernel
//! hangs early ("Probing EDD"). So the probe has two steps, with the CPU model vmcheck would use:
//! a 512-byte boot sector that writes to `isa-debug-exit` (catches aborts at once), then the real
//! kernel booted without a root file system, which panics and, with `-no-reboot`, makes QEMU exit
//! (well under a second where KVM works). The verdict is cached per host boot
//! (`/proc/sys/kernel/random/boot_id`) and kernel.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{bail, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// The QEMU accelerator a machine runs under.
pub enum Accel {
    /// Hardware virtualization through `/dev/kvm`.
    Kvm,
    /// Emulation (QEMU's TCG): slower; timeouts scale with [`crate::timeouts::factor`].
    Tcg,
}

impl Accel {
    /// QEMU arguments for this accelerator.
    pub fn qemu_args(self) -> Vec<String> {
        match self {
            Accel::Kvm => vec!["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()],
            // One translation thread per vCPU; `max` gives the guest the most features TCG has,
            // less the fast-string flags (ERMS, FSRM): with them the guest kernel copies and
            // clears memory with `rep movsb`/`stosb`, which TCG runs a byte per iteration.
            // Measured in a restored initiator, 125 MiB through a pipe (`dd | cat`): 2.24 s with
            // them, 0.71 s without.
            Accel::Tcg => vec![
                "-accel".into(),
                "tcg,thread=multi,tb-size=256".into(),
                "-cpu".into(),
                TCG_CPU.into(),
            ],
        }
    }
    /// `"kvm"` or `"tcg"`, as in logs and reports.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The CPU model under TCG (see [`Accel::qemu_args`]).
pub const TCG_CPU: &str = "max,-erms,-fsrm";

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
    let key = format!(
        "{} {}",
        host_boot_id(),
        kernel.map(|k| k.display().to_string()).unwrap_or_default()
    );
    let cache = cache_dir.map(|d| d.join("accel-probe"));
    if let Some(verdict) = cache.as_deref().and_then(|c| read_cached(c, &key)) {
        return Ok(if verdict == "kvm" { Accel::Kvm } else { Accel::Tcg });
    }
    let verdict = probe_verdict(qemu, kernel).await;
    if let Some(c) = cache {
        write_cached(&c, &key, verdict.name());
    }
    Ok(verdict)
}

/// This boot of the host (`/proc/sys/kernel/random/boot_id`): what the host-probe caches are
/// valid for.
fn host_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The value cached in `file` for `key` (its first line), if `key` is what it was cached for.
fn read_cached(file: &Path, key: &str) -> Option<String> {
    let cached = std::fs::read_to_string(file).ok()?;
    let (k, value) = cached.split_once('\n')?;
    (k == key.trim()).then(|| value.trim().to_string())
}

/// Caches `value` for `key` in `file`, written aside and renamed: a run side by side never
/// reads half of it. A cache that cannot be written is only a cache.
fn write_cached(file: &Path, key: &str, value: &str) {
    let dir = file.parent().unwrap_or(Path::new("."));
    let _ = std::fs::create_dir_all(dir);
    if let Ok(mut tmp) = tempfile::NamedTempFile::new_in(dir) {
        use std::io::Write;
        if write!(tmp, "{}\n{value}\n", key.trim()).is_ok() {
            let _ = tmp.persist(file);
        }
    }
}

/// The kernel parameters that choose the guest's clock under `accel`.
///
/// Under TCG, QEMU hands the guest the host's own TSC (it reads the host's counter, stopped
/// while the machine is stopped, carried across a snapshot's save and restore), so a guest told
/// the host's TSC rate keeps time with the TSC without calibrating it at boot, the step that
/// starved vCPUs upset (ARCHITECTURE.md, "Under TCG"). The kernel still refines the rate against
/// the HPET a second after boot and keeps the given one if the two differ by more than 1 %. A
/// TSC read costs the guest one instruction; the HPET is an emulated device, each read an exit
/// to QEMU, and the guest reads its clock on every I/O (fio's IOPS 21 % higher on the TSC,
/// fio_nvme_basic's machines up 0.5 s sooner). The HPET stays where the host does not keep time
/// with its own TSC (its kernel's clock source is not `tsc`: the rate is then not trusted), under
/// KVM (unchanged), and on other architectures. The host's rate is measured once per host boot
/// and cached in `cache_dir`.
pub fn guest_clock_params(accel: Accel, cache_dir: Option<&Path>) -> String {
    const HPET: &str = "clocksource=hpet";
    if accel != Accel::Tcg {
        return HPET.into();
    }
    let cache = cache_dir.map(|d| d.join("host-tsc-khz"));
    let key = host_boot_id();
    let khz = match cache.as_deref().and_then(|c| read_cached(c, &key)) {
        Some(cached) => cached.parse::<u64>().ok().filter(|k| *k > 0),
        None => {
            let khz = host_tsc_khz();
            if let Some(c) = &cache {
                write_cached(c, &key, &khz.unwrap_or(0).to_string());
            }
            khz
        }
    };
    match khz {
        Some(khz) => format!("clocksource=tsc tsc_early_khz={khz}"),
        None => HPET.into(),
    }
}

/// The host's TSC rate in kHz, rounded to whole MHz (so that measurements on one host agree,
/// and so do the kernel command lines snapshots are keyed by; the guest's kernel refines the
/// rate itself). None when the host's kernel does not keep time with the TSC.
#[cfg(target_arch = "x86_64")]
fn host_tsc_khz() -> Option<u64> {
    let source =
        std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .ok()?;
    if source.trim() != "tsc" {
        return None;
    }
    // A TSC reading and the time between two TSC reads, from the closest of a few tries: a
    // preemption between the reads would put the time anywhere in the gap.
    let reading = || {
        (0..32)
            .map(|_| {
                // SAFETY: RDTSC has no preconditions on x86-64.
                let before = unsafe { std::arch::x86_64::_rdtsc() };
                let at = Instant::now();
                let after = unsafe { std::arch::x86_64::_rdtsc() };
                (after.wrapping_sub(before), before / 2 + after / 2, at)
            })
            .min_by_key(|(gap, _, _)| *gap)
            .map(|(_, tsc, at)| (tsc, at))
    };
    let (tsc0, t0) = reading()?;
    std::thread::sleep(std::time::Duration::from_millis(100));
    let (tsc1, t1) = reading()?;
    let hz = tsc1.checked_sub(tsc0)? as f64 / (t1 - t0).as_secs_f64();
    let mhz = (hz / 1e6).round() as u64;
    (mhz > 0).then_some(mhz * 1000)
}

/// Off x86-64 there is no TSC to give the guest.
#[cfg(not(target_arch = "x86_64"))]
fn host_tsc_khz() -> Option<u64> {
    None
}

/// Both probe steps under KVM, uncached: KVM only when the boot sector and then `kernel` (when
/// there is one) finish in time; TCG, with the reason logged, otherwise.
pub async fn probe_verdict(qemu: &Path, kernel: Option<&Path>) -> Accel {
    let works = match probe(qemu, Accel::Kvm).await {
        Err(e) => Err(e),
        Ok(_) => match kernel {
            Some(k) => probe_kernel(qemu, k, Accel::Kvm).await,
            None => Ok(std::time::Duration::ZERO),
        },
    };
    match works {
        Ok(_) => Accel::Kvm,
        Err(e) => {
            crate::log::line(&format!("KVM does not work here, using TCG: {e:#}"));
            Accel::Tcg
        }
    }
}

/// The kernel a NixOS start script (`run-<name>-vm`) boots, for the probe: the word after
/// `-kernel`. nixpkgs' qemu-vm.nix writes it as `${NIXPKGS_QEMU_KERNEL_<name>:-/nix/store/...}`,
/// a shell default that the environment can override; that form is resolved the way the
/// script's shell resolves it, with this process's environment (the driver starts the script
/// with it). A plain path works too. None when there is no `-kernel`, its word has another form,
/// or the file does not exist.
pub fn start_script_kernel(script: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(script).ok()?;
    let path = PathBuf::from(kernel_of_script(&text, |var| std::env::var(var).ok())?);
    path.exists().then_some(path)
}

/// The `-kernel` word of a start script's text, with `${VAR:-default}` and `${VAR-default}`
/// resolved through `env`.
fn kernel_of_script(text: &str, env: impl Fn(&str) -> Option<String>) -> Option<String> {
    let mut words = text.split_whitespace();
    words.find(|w| *w == "-kernel")?;
    let word = words.next()?.trim_matches(|c| c == '\'' || c == '"');
    let Some(inner) = word.strip_prefix("${").and_then(|w| w.strip_suffix('}')) else {
        return (!word.contains('$')).then(|| word.to_string());
    };
    let name_end =
        inner.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(inner.len());
    let (var, rest) = inner.split_at(name_end);
    if var.is_empty() {
        return None;
    }
    let value = env(var);
    let (default, empty_counts_as_unset) = if let Some(d) = rest.strip_prefix(":-") {
        (d, true)
    } else if let Some(d) = rest.strip_prefix('-') {
        (d, false)
    } else if rest.is_empty() {
        return value.filter(|v| !v.is_empty());
    } else {
        return None;
    };
    let chosen = match value {
        Some(v) if !(empty_counts_as_unset && v.is_empty()) => v,
        _ => default.to_string(),
    };
    (!chosen.is_empty() && !chosen.contains('$')).then_some(chosen)
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
    let args = [
        "-kernel",
        &kernel,
        "-append",
        "console=ttyS0 panic=-1 quiet",
        "-no-reboot",
        "-serial",
        "stdio",
    ];
    let started = Instant::now();
    let (status, console) = run_probe(qemu, accel, &args, "kernel").await?;
    if status.success() && console.contains("Kernel panic") {
        Ok(started.elapsed())
    } else {
        bail!("{} kernel probe exited with {status} without reaching its panic", accel.name())
    }
}

/// Runs a probe QEMU with `args` within the probe timeout; its exit status and stdout.
async fn run_probe(
    qemu: &Path,
    accel: Accel,
    args: &[&str],
    what: &str,
) -> Result<(std::process::ExitStatus, String)> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn under_tcg_the_guest_keeps_time_with_the_tsc_at_the_hosts_measured_rate() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(guest_clock_params(Accel::Kvm, Some(dir.path())), "clocksource=hpet");
        let tcg = guest_clock_params(Accel::Tcg, Some(dir.path()));
        let cached = std::fs::read_to_string(dir.path().join("host-tsc-khz")).unwrap();
        let (boot, khz) = cached.split_once('\n').unwrap();
        assert_eq!(boot, host_boot_id());
        let khz: u64 = khz.trim().parse().unwrap();
        if khz == 0 {
            // This host does not keep time with its TSC.
            assert_eq!(tcg, "clocksource=hpet");
        } else {
            assert_eq!(tcg, format!("clocksource=tsc tsc_early_khz={khz}"));
            assert!(
                khz.is_multiple_of(1000) && khz >= 100_000,
                "{khz} kHz: whole MHz, at least 100"
            );
        }
        // Later runs read the cache; a rate of 0 is "not trusted"; another boot's is measured again.
        let write = |boot: &str, value: &str| {
            std::fs::write(dir.path().join("host-tsc-khz"), format!("{boot}\n{value}\n")).unwrap()
        };
        write(&host_boot_id(), "1234000");
        assert_eq!(
            guest_clock_params(Accel::Tcg, Some(dir.path())),
            "clocksource=tsc tsc_early_khz=1234000"
        );
        write(&host_boot_id(), "0");
        assert_eq!(guest_clock_params(Accel::Tcg, Some(dir.path())), "clocksource=hpet");
        write("another-boot", "1234000");
        assert_ne!(
            guest_clock_params(Accel::Tcg, Some(dir.path())),
            "clocksource=tsc tsc_early_khz=1234000"
        );
    }

    /// A start script in the shape nixpkgs' qemu-vm.nix writes (direct boot, the default): the
    /// kernel is a shell default the environment may override.
    fn nixos_start_script(kernel: &str) -> String {
        format!(
            "#! /nix/store/0000-bash-5.2p37/bin/bash\n\
             export PATH=/nix/store/0000-coreutils-9.5/bin${{PATH:+:}}$PATH\n\
             set -e\n\
             cd \"$TMPDIR\"\n\
             # Start QEMU.\n\
             exec /nix/store/0000-qemu-host-cpu-only-9.2.3/bin/qemu-system-x86_64 -machine type=q35,accel=kvm:tcg -cpu max \\\n    \
             -name target \\\n    -m 1024 \\\n    -smp 1 \\\n    -device virtio-rng-pci \\\n    \
             -net nic,netdev=user.0,model=virtio -netdev user,id=user.0,\"$QEMU_NET_OPTS\" \\\n    \
             -virtfs local,path=/nix/store,security_model=none,mount_tag=nix-store \\\n    \
             -kernel ${{NIXPKGS_QEMU_KERNEL_target:-{kernel}}} \\\n    \
             -initrd /nix/store/0000-initrd-linux-6.12.30/initrd \\\n    \
             -append \"$(cat /nix/store/0000-nixos-system-target/kernel-params) init=/nix/store/0000-nixos-system-target/init \
             console=tty0 console=ttyS0,115200n8 $QEMU_KERNEL_PARAMS\" \\\n    \
             -nographic \\\n    $QEMU_OPTS \\\n    \"$@\"\n"
        )
    }

    #[test]
    fn the_kernel_word_of_a_nixos_start_script_is_resolved_as_its_shell_would() {
        let text = nixos_start_script("/nix/store/0000-nixos-system-target/kernel");
        let unset = |_: &str| None;
        assert_eq!(
            kernel_of_script(&text, unset).as_deref(),
            Some("/nix/store/0000-nixos-system-target/kernel")
        );
        let set =
            |v: &str| (v == "NIXPKGS_QEMU_KERNEL_target").then(|| "/tmp/other-kernel".to_string());
        assert_eq!(kernel_of_script(&text, set).as_deref(), Some("/tmp/other-kernel"));
        // `:-` takes the default for an empty value too; `-` only for an unset one.
        let empty = |_: &str| Some(String::new());
        assert_eq!(
            kernel_of_script(&text, empty).as_deref(),
            Some("/nix/store/0000-nixos-system-target/kernel")
        );
        assert_eq!(kernel_of_script("-kernel ${K-/k}", empty), None);
        assert_eq!(kernel_of_script("-kernel ${K-/k}", unset).as_deref(), Some("/k"));
        // Older start scripts: a plain, possibly quoted, path.
        assert_eq!(
            kernel_of_script("exec qemu -kernel '/nix/store/x/kernel' -initrd /i", unset)
                .as_deref(),
            Some("/nix/store/x/kernel")
        );
        // Forms the shell would resolve differently, or not at all here: no guess.
        for text in [
            "exec qemu -drive file=x",
            "-kernel",
            "-kernel $KERNEL",
            "-kernel ${K:?no}",
            "-kernel ${:-/k}",
            "-kernel ${K:-$OTHER}",
        ] {
            assert_eq!(kernel_of_script(text, unset), None, "{text}");
        }
    }

    #[test]
    fn the_kernel_of_a_start_script_file_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("kernel");
        let script = dir.path().join("run-target-vm");
        std::fs::write(&script, nixos_start_script(&kernel.display().to_string())).unwrap();
        assert_eq!(start_script_kernel(&script), None, "the kernel does not exist yet");
        std::fs::write(&kernel, "").unwrap();
        assert_eq!(start_script_kernel(&script), Some(kernel));
        assert_eq!(start_script_kernel(&dir.path().join("missing")), None);
    }

    /// A stand-in for QEMU: exits as the boot-sector probe expects, and for `-kernel` does what
    /// `kernel_step` says.
    fn fake_qemu(dir: &Path, name: &str, kernel_step: &str) -> PathBuf {
        let path = dir.join(name);
        let script = format!("#!/bin/sh\ncase \" $* \" in\n  *\" -kernel \"*) {kernel_step} ;;\n  *) exit {PROBE_EXIT_STATUS} ;;\nesac\n");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[tokio::test]
    async fn kvm_that_runs_a_boot_sector_but_hangs_the_start_scripts_kernel_falls_back_to_tcg() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("kernel");
        std::fs::write(&kernel, "").unwrap();
        let script = dir.path().join("run-target-vm");
        std::fs::write(&script, nixos_start_script(&kernel.display().to_string())).unwrap();
        let probe_kernel = start_script_kernel(&script);
        assert_eq!(
            probe_kernel.as_deref(),
            Some(kernel.as_path()),
            "the probe gets the start script's kernel"
        );

        let hangs = fake_qemu(dir.path(), "hangs", "exec sleep 30");
        assert_eq!(probe_verdict(&hangs, probe_kernel.as_deref()).await, Accel::Tcg);
        // Without the kernel step, the same QEMU would have been taken for a working KVM.
        assert_eq!(probe_verdict(&hangs, None).await, Accel::Kvm);

        let panics = fake_qemu(
            dir.path(),
            "panics",
            "echo 'Kernel panic - not syncing: VFS: Unable to mount root fs'; exit 0",
        );
        assert_eq!(probe_verdict(&panics, probe_kernel.as_deref()).await, Accel::Kvm);
        let aborts = fake_qemu(dir.path(), "aborts", "exit 1");
        assert_eq!(probe_verdict(&aborts, probe_kernel.as_deref()).await, Accel::Tcg);
    }
}
