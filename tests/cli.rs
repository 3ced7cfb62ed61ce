//! The command line without VMs: listing, usage errors and their exit status.

use std::process::Command;

fn vmcheck(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vmcheck")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn list_shows_scenarios_with_descriptions_and_hides_self_tests() {
    let (code, stdout, _) = vmcheck(&["list"]);
    assert_eq!(code, 0);
    let line =
        stdout.lines().find(|l| l.starts_with("fio_nvme_basic")).expect("fio_nvme_basic is listed");
    assert!(line.contains("NVMe-oF/TCP"), "{line}");
    assert!(!stdout.contains("selftest"), "{stdout}");
}

#[test]
fn an_unknown_scenario_is_a_usage_error_that_lists_the_known_ones() {
    let (code, _, stderr) = vmcheck(&["run", "no_such_test"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("no_such_test") && stderr.contains("fio_nvme_basic"), "{stderr}");
}

#[test]
fn bad_arguments_are_usage_errors() {
    assert_eq!(vmcheck(&["run", "--bogus"]).0, 2);
    assert_eq!(vmcheck(&["frobnicate"]).0, 2);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.json");
    std::fs::write(&config, "{ not json").unwrap();
    let (code, _, stderr) = vmcheck(&["run", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(stderr.contains("c.json"), "{stderr}");
    assert_eq!(vmcheck(&["bench", "--execs", "3"]).0, 2);
    assert_eq!(vmcheck(&["bench", "--suite", "no_such_scenario"]).0, 2);
    assert_eq!(vmcheck(&["bench", "--json", "/nonexistent-dir/out.json"]).0, 2);
    let (code, _, stderr) = vmcheck(&["run", "--shard", "3/2", "fio_nvme_basic"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("K must be 1..=N"), "{stderr}");
    let (code, _, stderr) = vmcheck(&["run", "no_such_*"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("no scenario matches") && stderr.contains("hotremove_blk_tc1"),
        "{stderr}"
    );
}

#[test]
fn jobs_must_be_a_positive_number() {
    for bad in ["0", "-1", "two", ""] {
        let (code, _, stderr) = vmcheck(&["run", &format!("--jobs={bad}"), "fio_nvme_basic"]);
        assert_eq!(code, 2, "--jobs {bad:?}: {stderr}");
        assert!(stderr.contains("--jobs"), "--jobs {bad:?}: {stderr}");
    }
}

#[test]
fn attaching_to_no_paused_run_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("repl.sock");
    let (code, _, stderr) = vmcheck(&["repl", "--attach", socket.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("cannot attach to") && stderr.contains("--pause-on-failure"),
        "{stderr}"
    );
    // --attach starts no machines: naming a scenario with it is a usage error.
    assert_eq!(vmcheck(&["repl", "fio_nvme_basic", "--attach", "x"]).0, 2);
}
