//! This repository's storage tests: a suite of vmcheck scenarios, run by vmcheck's harness.
//!
//! - `cargo nextest run` (or `cargo test`): every listed scenario is a test, on QEMU machines
//!   booted from vmcheck's default images;
//! - `cargo run -- list`, `cargo run -- run disk_verify --junit junit.xml`, `cargo run -- repl`:
//!   vmcheck's command line on this suite;
//! - `nix build .#checks.disk_verify`: the same scenario on the NixOS machines of flake.nix.

use futures::FutureExt;
use vmcheck::prelude::*;

/// One machine with a 64 MiB NVMe disk: the guest finds the disk by its serial, fio writes it and
/// reads every block back against its checksum.
async fn disk_verify(d: &Driver) -> anyhow::Result<()> {
    d.start_all().await?;
    let vm = d.machine("vm")?;
    let dev = d.subtest("the guest sees its NVMe disk", vm.disk_device("data")).await?;
    d.subtest("fio writes the disk and verifies every block", async {
        let fio = format!("fio --name=verify --filename={dev} --rw=randwrite --bs=4k --size=16M --direct=1 --verify=crc32c");
        vm.succeed(&fio).await.map(drop)
    })
    .await
}

/// The suite: every scenario of this repository (public for vmcheck's own test of this template).
pub fn suite() -> Suite {
    Suite::new().with(
        Scenario::new("disk_verify", "write an NVMe disk with fio and verify every block", |d| {
            disk_verify(d).boxed()
        })
        .machine(NodeSpec::new("vm", Role::Initiator, 2).with_disk(DiskSpec::nvme("data", 64))),
    )
}

fn main() -> std::process::ExitCode {
    vmcheck::harness::main(suite())
}
