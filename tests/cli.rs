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

/// `cache` on a cache of its own (never the user's): lists entries, prunes what is asked, keeps
/// nothing it was not asked to remove, and refuses a prune that says nothing.
#[test]
fn cache_lists_and_prunes_a_cache_of_its_own() {
    let cache = tempfile::tempdir().unwrap();
    let image = cache.path().join("images/old-0123456789abcdef");
    std::fs::create_dir_all(&image).unwrap();
    std::fs::write(image.join("initrd"), vec![1u8; 64 << 10]).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_vmcheck"))
            .args(args)
            .env("VMCHECK_CACHE", cache.path())
            .output()
            .unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, stdout) = run(&["cache", "list", "--json"]);
    assert_eq!(code, 0, "{stdout}");
    let listed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let entries = listed["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{stdout}");
    assert_eq!(entries[0]["name"], "old-0123456789abcdef");
    // Not an image of the suite's recipes (their kernel is not in this cache).
    assert_eq!(entries[0]["current"], false);
    assert_eq!(run(&["cache", "prune"]).0, 2);
    let (code, stdout) = run(&["cache", "prune", "--older-than", "1d"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("removed 0 entries"), "{stdout}");
    let (code, stdout) = run(&["cache", "prune", "--unused", "--dry-run"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("would remove image old-0123456789abcdef"), "{stdout}");
    assert!(image.exists());
    let (code, stdout) = run(&["cache", "prune", "--unused"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("removed 1 entries"), "{stdout}");
    assert!(!image.exists());
}

#[test]
fn list_shows_where_each_scenario_runs() {
    let (code, stdout, _) = vmcheck(&["list"]);
    assert_eq!(code, 0);
    let line = |name: &str| {
        stdout.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_default().to_string()
    };
    assert!(line("fio_nvme_basic").contains(" host+guest "), "{stdout}");
    assert!(line("hotattach_tc3").contains(" host+guest "), "{stdout}");
    assert!(line("hotattach_tc4").contains(" host "), "{stdout}");
    assert!(line("balloon_basic").contains(" host "), "{stdout}");
    let (code, json, _) = vmcheck(&["list", "--json"]);
    assert_eq!(code, 0);
    let listed: serde_json::Value = serde_json::from_str(&json).unwrap();
    let s = &listed["scenarios"];
    assert_eq!(s["fio_nvme_basic"]["runs_in_guest"], true);
    assert!(s["fio_nvme_basic"].get("host_only").is_none());
    assert_eq!(s["balloon_basic"]["runs_in_guest"], false);
    assert!(s["balloon_basic"]["host_only"].as_str().unwrap().contains("balloon"));
}

/// Guest mode's usage errors (exit 2), before anything runs: a scenario that needs the host,
/// with its reason; a machine neither local nor a peer; a peer that does not resolve or that no
/// scenario has.
#[test]
fn guest_mode_refuses_what_it_cannot_run_before_anything_runs() {
    let peers = ["--peer", "target=127.0.0.1", "--peer", "vm2=127.0.0.1"];
    let (code, _, stderr) =
        vmcheck(&[&["run", "--local", "vm1"][..], &peers, &["hotattach_tc4"]].concat());
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("hotattach_tc4 needs the host") && stderr.contains("reboot"),
        "{stderr}"
    );
    let (code, _, stderr) = vmcheck(&["run", "--in-guest", "balloon_basic"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("balloon_basic needs the host: the virtio balloon (QMP)"), "{stderr}");
    let (code, _, stderr) = vmcheck(&["run", "--local", "initiator", "fio_nvme_basic"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("name target with --peer"), "{stderr}");
    let (code, _, stderr) = vmcheck(&[
        "run",
        "--local",
        "initiator",
        "--peer",
        "target=no-such-host.invalid",
        "fio_nvme_basic",
    ]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("no-such-host.invalid") && stderr.contains("does not resolve"),
        "{stderr}"
    );
    let (code, _, stderr) =
        vmcheck(&["run", "--local", "nope", "--peer", "target=127.0.0.1", "fio_nvme_basic"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--local nope: the scenario has no such machine"), "{stderr}");
    let (code, _, stderr) = vmcheck(&[
        "run",
        "--local",
        "initiator",
        "--peer",
        "target=127.0.0.1",
        "--peer",
        "other=127.0.0.1",
        "fio_nvme_basic",
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--peer other: no chosen scenario has a machine"), "{stderr}");
    assert_eq!(vmcheck(&["run", "--peer", "target=127.0.0.1", "fio_nvme_basic"]).0, 2);
}

/// Guest mode on the machine this test runs on: the self-tests' one machine is local, its
/// commands are processes here; JUnit and the transcript come out as a host run's.
#[test]
fn guest_mode_runs_commands_locally_and_reports_as_a_host_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (junit, out) = (tmp.path().join("junit.xml"), tmp.path().join("out"));
    let status = Command::new(env!("CARGO_BIN_EXE_vmcheck"))
        .args(["run", "--local", "machine", "selftest-pass", "selftest-fail", "--junit"])
        .arg(&junit)
        .arg("--out")
        .arg(&out)
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert_eq!(status.status.code(), Some(1), "one scenario fails: {stderr}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains(r#"<testsuite name="selftest-pass""#), "{xml}");
    assert!(
        xml.contains(r#"<testcase name="an assertion that fails" classname="selftest-fail""#)
            && xml.contains("expected 2, the guest said 1"),
        "{xml}"
    );
    let transcript = std::fs::read_to_string(out.join("selftest-fail/transcript.log")).unwrap();
    assert!(transcript.contains("guest mode: this is machine"), "{transcript}");
    assert!(transcript.contains("machine: must succeed: echo 1"), "{transcript}");
    assert!(stderr.contains("1 passed, 1 failed"), "{stderr}");
    // A self-test of the host side is refused, with its reason.
    let (code, _, stderr) = vmcheck(&["run", "--local", "machine", "selftest-broken-machine"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("a self-test of the driver's host side"), "{stderr}");
}
