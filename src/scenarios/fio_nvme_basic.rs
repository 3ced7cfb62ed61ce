//! fio_nvme_basic, as mayastor's Nix test did it (../shared/seeds/002): a target shares one disk
//! over NVMe-oF/TCP; an initiator discovers it, connects, runs fio with verify=crc32 for 15 s,
//! and disconnects.

use anyhow::{bail, Context, Result};
use futures::FutureExt;
use serde_json::json;

use super::nvmeof::{self, Share};
use super::Scenario;
use crate::config::{DiskSpec, NodeSpec, Role};
use crate::driver::Driver;
use crate::log;
use crate::scenarios::workload::IntervalLogs;
use crate::target::proto;
use crate::timeouts;
use crate::tools::fio::{Direction, Fio, FioReport};
use crate::tools::lsblk::Lsblk;
use crate::tools::nvme::{DiscoveryLog, FabricsOptions, Nvme, NvmeList};

pub const NAME: &str = "fio_nvme_basic";
/// The NVMe-oF port.
pub const PORT: u16 = super::nvmeof::NVMF_PORT;
/// fio's run time, as in the seed.
pub const FIO_RUNTIME_SECS: u64 = 15;

pub fn scenario() -> Scenario {
    Scenario::new(NAME, "share a 512 MiB disk over NVMe-oF/TCP; discover, connect, fio verify=crc32 15 s, disconnect", |d| {
        run(d).map(|r| r.map(drop)).boxed()
    })
    .machines(nodes())
}

pub fn nodes() -> Vec<NodeSpec> {
    vec![
        NodeSpec::new("target", Role::Target, 1).with_disk(DiskSpec::nvme("disk0", 512)),
        NodeSpec::new("initiator", Role::Initiator, 2).with_memory(768),
    ]
}

/// The typed results of a run, for tests to assert on.
#[derive(Debug)]
pub struct Report {
    pub bdevs: Vec<proto::Bdev>,
    pub share: Share,
    pub discovery: DiscoveryLog,
    /// `nvme list` and lsblk on the initiator while connected.
    pub connected: NvmeList,
    pub lsblk: Lsblk,
    pub device: String,
    pub fio: FioReport,
    /// `nvme list` after disconnecting.
    pub after_disconnect: NvmeList,
}

/// The bdev listing as mayastor's test printed it.
pub fn bdevs_json(bdevs: &[proto::Bdev]) -> String {
    let list: Vec<_> = bdevs
        .iter()
        .map(|b| json!({"blk_size": b.blk_size, "claimed": b.claimed, "claimed_by": b.claimed_by, "name": b.name, "num_blocks": b.num_blocks, "uuid": b.uuid}))
        .collect();
    serde_json::to_string_pretty(&json!({ "bdevs": list })).unwrap_or_default()
}

pub async fn run(d: &Driver) -> Result<Report> {
    d.start_all().await?;
    let target = d.machine("target")?;
    let initiator = d.machine("initiator")?;
    let mut client = target.target_client().await?;

    let bdevs = d
        .subtest("the bdev of the target should be listed", async {
            nvmeof::create_disk_bdev(&target, &mut client, "disk0").await?;
            let bdevs = client
                .list_bdevs(proto::ListBdevsRequest {})
                .await
                .context("ListBdevs")?
                .into_inner()
                .bdevs;
            log::line(&bdevs_json(&bdevs));
            match bdevs.as_slice() {
                [b] if b.num_blocks * u64::from(b.blk_size) == 512 << 20 => Ok(bdevs),
                _ => bail!("expected one 512 MiB bdev, the target lists {bdevs:?}"),
            }
        })
        .await?;
    let bdev = bdevs[0].name.clone();

    let share = d
        .subtest("the bdev should be shared over NVMe-oF/TCP", async {
            let share = nvmeof::share_bdev(&target, &mut client, &bdev, None, PORT).await?;
            let listed = client.list_bdevs(proto::ListBdevsRequest {}).await?.into_inner().bdevs;
            log::line(&bdevs_json(&listed));
            if !listed.iter().any(|b| b.name == bdev && b.claimed) {
                bail!("the shared bdev is not claimed: {listed:?}");
            }
            Ok(share)
        })
        .await?;

    let fabrics = FabricsOptions::scaled_timeouts();
    let discovery = d
        .subtest("should be able to discover the target", async {
            let out = initiator
                .succeed(&Nvme::discover(&share.addr.to_string(), share.port).command_line())
                .await?;
            d.artifact("nvme-discover.json", &out);
            let log = DiscoveryLog::parse(&out)?;
            for r in &log.records {
                log::line(&format!(
                    "discovered {} {}:{} ({})",
                    r.subnqn, r.traddr, r.trsvcid, r.subtype
                ));
            }
            if log.find(&share.nqn).is_none() {
                bail!("the discovery log does not list {}: {log:?}", share.nqn);
            }
            Ok(log)
        })
        .await?;

    let (connected, lsblk, device) = d
        .subtest("should be able to connect to the target", async {
            initiator
                .succeed(
                    &Nvme::connect_all(&share.addr.to_string(), share.port)
                        .options(fabrics.clone())
                        .command_line(),
                )
                .await?;
            // Parsed, not grepped: nvme-cli 2.11 (nixpkgs') prints `list -o json` in its
            // detailed format, without the simple format's keys.
            let listed =
                initiator.retry("nvme list shows a namespace", timeouts::request(), || async {
                    let text = initiator.succeed(&Nvme::list()).await?;
                    let list = NvmeList::parse(&text)?;
                    Ok((!list.devices.is_empty()).then_some((text, list)))
                });
            // lsblk beside it (each about 0.2 s under TCG, much of it waiting: 0.27 s together
            // against 0.37 s in turn on the initiator's one vCPU), and
            // again below if it ran before the namespace showed.
            let (listed, shown) = tokio::join!(listed, initiator.succeed(Lsblk::command()));
            let (text, list) = listed?;
            d.artifact("nvme-list.json", &text);
            let device = match list.devices.as_slice() {
                [one] => one.device_path.clone(),
                other => {
                    bail!("expected one NVMe namespace on the initiator, nvme list shows {other:?}")
                }
            };
            let shows = |out: &str| Lsblk::parse(out).is_ok_and(|l| l.find(&device).is_some());
            let out = match shown {
                Ok(out) if shows(&out) => out,
                _ => initiator.succeed(Lsblk::command()).await?,
            };
            d.artifact("lsblk.json", &out);
            let lsblk = Lsblk::parse(&out)?;
            let seen =
                lsblk.find(&device).with_context(|| format!("lsblk does not show {device}"))?;
            if seen.size != 512 << 20 {
                bail!("lsblk shows {device} with {} bytes, expected 512 MiB", seen.size);
            }
            log::line(&format!("connected: {device} ({} bytes)", seen.size));
            Ok((list, lsblk, device))
        })
        .await?;

    let fio = d
        .subtest("should be able to run FIO with verify=crc32", async {
            let seed = Fio::seed_randrw_verify(&device, FIO_RUNTIME_SECS);
            // fio's IOPS and latency per second, for the scenario's timeline.
            let (job, logs) = IntervalLogs::add_to(&seed, &device);
            let line = job.command_line();
            let run = initiator.execute_with_timeout(&line, timeouts::command());
            let runtime = std::time::Duration::from_secs(FIO_RUNTIME_SECS);
            let out = crate::progress::fio(&initiator, &device, runtime, run).await?;
            d.artifact("fio.json", &out.stdout);
            let report = FioReport::parse_with_stderr(&out.stdout, &out.stderr);
            logs.record(&initiator, out.status, report.as_ref().ok()).await;
            let report = report
                .with_context(|| format!("fio exited {}; stderr:\n{}", out.status, out.stderr))?;
            log::line(&report.summary_line());
            let problems = report.problems();
            if out.status != 0 || !problems.is_empty() {
                bail!(
                    "fio exited {} with problems: {problems:?}\nstderr:\n{}",
                    out.status,
                    out.stderr
                );
            }
            if report.iops(Direction::Read) <= 0.0 || report.iops(Direction::Write) <= 0.0 {
                bail!("fio did not both read and write: {}", report.summary_line());
            }
            Ok(report)
        })
        .await?;

    let after_disconnect = d
        .subtest("should be able to disconnect from the target", async {
            initiator.succeed(&Nvme::disconnect_all()).await?;
            initiator.wait_until_fails(&format!("test -e {device}"), timeouts::hotplug()).await?;
            let list = NvmeList::parse(&initiator.succeed(&Nvme::list()).await?)?;
            if !list.devices.is_empty() {
                bail!("after disconnect-all, nvme list still shows {:?}", list.devices);
            }
            Ok(list)
        })
        .await?;

    Ok(Report { bdevs, share, discovery, connected, lsblk, device, fio, after_disconnect })
}
