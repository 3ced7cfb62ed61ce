//! Guest mode on real VMs, without Nix: `vmcheck run --in-guest` boots a scenario's machines on
//! the default images, puts vmcheck itself (binary and libraries) into the initiator and runs
//! the scenario there (`--local initiator --peer target=192.0.2.1`), then reports what that run
//! reported. Checked here: fio_nvme_basic and the hot-attach chain (cases 1-3, the part that
//! runs in guest mode) pass, with every JUnit test case passed, fio's verify clean as the
//! in-guest run's own fio report says, and the in-guest run's transcript and artifacts copied
//! out; and a host-only scenario is refused with exit 2 and its reason before anything boots.

use std::path::Path;
use std::process::{Command, Stdio};

use vmcheck::tools::fio::FioReport;

/// `vmcheck run --in-guest NAMES --junit --out` in `dir`; its exit status and stderr.
fn in_guest(dir: &Path, names: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vmcheck"))
        .arg("run")
        .arg("--in-guest")
        .args(names)
        .arg("--junit")
        .arg(dir.join("junit.xml"))
        .arg("--out")
        .arg(dir.join("out"))
        .env("TMPDIR", dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The JUnit's test cases of `suite`: (name, passed).
fn cases(junit: &str, suite: &str) -> Vec<(String, bool)> {
    let report = quick_junit::Report::deserialize_from_str(junit).unwrap();
    let suite = report.test_suites.iter().find(|s| &*s.name == suite).unwrap_or_else(|| {
        panic!("no test suite {suite} in {junit}");
    });
    suite
        .test_cases
        .iter()
        .map(|c| {
            (c.name.to_string(), matches!(c.status, quick_junit::TestCaseStatus::Success { .. }))
        })
        .collect()
}

#[test]
fn fio_nvme_basic_runs_inside_the_initiator() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, stderr) = in_guest(tmp.path(), &["fio_nvme_basic"]);
    assert_eq!(code, Some(0), "{stderr}");
    // The host's log shows the copy and the in-guest run's own lines, relayed.
    assert!(stderr.contains("put in on a read-only disk"), "{stderr}");
    assert!(
        stderr.contains("run --local initiator --peer target=192.0.2.1"),
        "the guest-mode command line: {stderr}"
    );
    assert!(stderr.contains("target: a peer at 192.0.2.1 (guest mode)"), "{stderr}");
    assert!(stderr.contains("the in-guest run ended with status 0"), "{stderr}");

    let junit = std::fs::read_to_string(tmp.path().join("junit.xml")).unwrap();
    let steps = cases(&junit, "fio_nvme_basic");
    assert_eq!(steps.len(), 6, "{steps:?}");
    assert!(steps.iter().all(|(_, ok)| *ok), "{steps:?}");
    assert!(steps.iter().any(|(n, _)| n == "should be able to run FIO with verify=crc32"));

    // fio's own report, written in the guest: verify clean, both directions, its full run.
    let out = tmp.path().join("out/fio_nvme_basic");
    let guest = out.join("in-guest");
    let fio =
        FioReport::parse(&std::fs::read_to_string(guest.join("fio_nvme_basic/fio.json")).unwrap())
            .unwrap();
    assert!(fio.problems().is_empty(), "{:?}", fio.problems());
    assert_eq!((fio.errors(), fio.verify_failures()), (0, 0));
    assert!(fio.io_bytes(vmcheck::tools::fio::Direction::Read) > 0, "{}", fio.summary_line());
    // The in-guest run's transcript (a host run's format: its subtests, its summary) and the
    // host's own, which boots, copies and relays.
    let transcript = std::fs::read_to_string(guest.join("transcript.log")).unwrap();
    assert!(transcript.contains("subtest: should be able to discover the target"), "{transcript}");
    assert!(transcript.contains("1 passed, 0 failed"), "{transcript}");
    let host = std::fs::read_to_string(out.join("transcript.log")).unwrap();
    assert!(host.contains("start all VMs") && host.contains("ended with status 0"), "{host}");
    // The host kept both consoles while the guest ran.
    assert!(
        out.join("target.console.log").is_file() && out.join("initiator.console.log").is_file()
    );
}

#[test]
fn the_hot_attach_chain_runs_inside_an_initiator_and_host_only_cases_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // Refused up front, nothing booted: tc4 reboots the VMs.
    let (code, stderr) = in_guest(tmp.path(), &["hotattach_tc4"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("hotattach_tc4 needs the host") && stderr.contains("reboots both VMs"),
        "{stderr}"
    );
    assert!(!tmp.path().join("out").exists(), "nothing ran");

    // Cases 1-3: vmcheck in vm1, the target and vm2 its peers.
    let (code, stderr) = in_guest(tmp.path(), &["hotattach_tc3"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("run --local vm1 --peer target=192.0.2.1 --peer vm2=192.0.2.3"),
        "{stderr}"
    );
    let junit = std::fs::read_to_string(tmp.path().join("junit.xml")).unwrap();
    for case in ["hotattach_tc1", "hotattach_tc2", "hotattach_tc3"] {
        let steps = cases(&junit, case);
        assert!(!steps.is_empty() && steps.iter().all(|(_, ok)| *ok), "{case}: {steps:?}");
    }
    let tc3 = cases(&junit, "hotattach_tc3");
    assert!(
        tc3.iter().any(|(n, _)| n == "during fio, attach NVMe to ctrlr-2")
            && tc3.iter().any(|(n, _)| n == "fio under the attach finished clean")
            && tc3.iter().any(|(n, _)| n == "run fio integrity on all 3 devices"),
        "{tc3:?}"
    );
    let transcript =
        std::fs::read_to_string(tmp.path().join("out/hotattach/in-guest/transcript.log")).unwrap();
    assert!(transcript.contains("3 passed, 0 failed"), "{transcript}");
}
