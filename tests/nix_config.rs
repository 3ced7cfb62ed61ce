//! The Nix side and the driver agree:
//!
//! - `nix/scenarios.json`, the scenario list the flake turns into checks, is exactly what
//!   `vmcheck list --json` prints (no Nix needed; the failure names the command that rewrites it);
//! - the flake's real outputs, evaluated against the nixpkgs stand-in (`nix/tests/flake-eval.nix`),
//!   have one check per listed scenario but those left out (they migrate: nixpkgs' VMs mount 9p
//!   shares), whose driver configuration the driver's own parser accepts and applies to the
//!   scenario's machines, and whose NixOS machines carry what the driver relies on (host name,
//!   addresses, test interfaces named by the driver's MACs, memory, the guest agent, ...);
//! - the other reading: one `<scenario>-nixos-test` check (nixpkgs' runNixOSTest, through the
//!   stand-in's) per scenario that runs in a guest, whose nodes are the scenario's machines with
//!   the roles alone on nixpkgs' test network, the target's disks with their serials, and whose
//!   test script runs vmcheck's guest mode inside the initiator;
//! - `.driver -I` (as nixpkgs' `.driver`) reaches vmcheck's REPL: the evaluated script runs the
//!   real binary;
//! - a user's repository made from the template (`nix/templates/storage-test`): its flake.nix,
//!   evaluated with this flake as its input, builds its own driver (`lib.buildDriver`) and runs
//!   it in its check (`lib.makeTest { driver; }`), on NixOS machines whose driver configuration
//!   the driver's parser applies to the machines of the template's own suite: the template's
//!   `src/main.rs` is compiled into this test (`mod template`), so its Rust is checked against
//!   vmcheck's API on every build;
//! - the JSON that the pure `nix/driver-config.nix` evaluates to (what `lib.makeTest` writes for
//!   `vmcheck run --config`) is fed, exactly as `nix-instantiate --eval --strict --json` prints
//!   it, to the driver's parser, and both refuse the same machine names, addresses and fields.
//!
//! Needs `nix-instantiate` (Debian: `apt-get install nix-bin`); nothing from nixpkgs. Without it
//! each Nix test prints why it is skipped and passes, unless VMCHECK_REQUIRE_NIX=1 (CI sets it),
//! which makes a missing nix-instantiate a failure.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use vmcheck::config::{
    validate_machine_name, DriverConfig, NodeSpec, Role, SCENARIO_LISTING_COMMAND,
};

/// The template's driver, compiled here: its suite is what the template's flake.nix must match.
#[allow(dead_code)]
#[path = "../nix/templates/storage-test/src/main.rs"]
mod template;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Whether nix-instantiate can run; prints the reason when a test is skipped.
fn have_nix(test: &str) -> bool {
    match Command::new("nix-instantiate").arg("--version").output() {
        Ok(out) if out.status.success() => true,
        result => {
            let why = match result {
                Ok(out) => format!(
                    "`nix-instantiate --version` failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
                Err(err) => format!(
                    "nix-instantiate is not on PATH ({err}); Debian: apt-get install -y nix-bin"
                ),
            };
            if std::env::var("VMCHECK_REQUIRE_NIX").as_deref() == Ok("1") {
                panic!("{test}: VMCHECK_REQUIRE_NIX=1 but {why}");
            }
            println!("SKIPPED {test}: {why}");
            false
        }
    }
}

/// `nix-instantiate --eval --strict --json` of a file or an expression, in the repository, with
/// the dummy store (writes nothing under /nix, runs as any user). Ok(stdout) or Err(stderr).
/// The exit status decides: on an error Nix may already have printed part of the JSON.
fn nix_eval(what: Eval) -> Result<String, String> {
    let mut cmd = Command::new("nix-instantiate");
    cmd.current_dir(repo()).args(["--option", "store", "dummy://", "--eval", "--strict", "--json"]);
    match what {
        Eval::File(file) => cmd.arg(file),
        Eval::Expr(expr) => cmd.args(["--expr", expr]),
    };
    let out = cmd.output().expect("running nix-instantiate");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).expect("nix-instantiate printed UTF-8"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

enum Eval<'a> {
    File(&'a str),
    Expr(&'a str),
}

/// The pure function applied to `args` (a Nix attribute-set body).
fn driver_config(args: &str) -> Result<String, String> {
    nix_eval(Eval::Expr(&format!("import ./nix/driver-config.nix {{ {args} }}")))
}

#[test]
fn sample_definition_evaluates_to_json_the_driver_parses() {
    if !have_nix("sample_definition_evaluates_to_json_the_driver_parses") {
        return;
    }
    let json =
        nix_eval(Eval::File("nix/tests/sample.nix")).expect("nix/tests/sample.nix evaluates");
    let config =
        DriverConfig::from_json(&json).unwrap_or_else(|err| panic!("{err:#}\nJSON: {json}"));

    assert_eq!(config.name, "sample_fio");
    assert_eq!(config.scenario, "fio_nvme_basic");
    assert_eq!(config.global_timeout, 900);
    assert_eq!(
        config.machines.keys().map(String::as_str).collect::<Vec<_>>(),
        ["initiator", "target"]
    );
    let target = &config.machines["target"];
    assert_eq!(
        target.start_script,
        PathBuf::from("/nix/store/00000000000000000000000000000000-nixos-vm/bin/run-target-vm")
    );
    assert_eq!(target.address, Some(Ipv4Addr::new(192, 0, 2, 1)));
    let initiator = &config.machines["initiator"];
    assert_eq!(
        initiator.start_script,
        PathBuf::from("/nix/store/11111111111111111111111111111111-nixos-vm/bin/run-initiator-vm")
    );
    assert_eq!(
        initiator.address, None,
        "address = null is left out, so the scenario's address stays"
    );

    // And it lands on the scenario's nodes.
    let mut nodes = [
        NodeSpec::new("target", Role::Target, 10),
        NodeSpec::new("initiator", Role::Initiator, 20),
    ];
    config.apply(&mut nodes).expect("the sample's machines are the scenario's nodes");
    assert_eq!(nodes[0].start_script.as_deref(), Some(target.start_script.as_path()));
    assert_eq!(nodes[0].address, Ipv4Addr::new(192, 0, 2, 1));
    assert_eq!(nodes[1].start_script.as_deref(), Some(initiator.start_script.as_path()));
    assert_eq!(nodes[1].address, Ipv4Addr::new(192, 0, 2, 20));
}

#[test]
fn nix_and_the_driver_accept_and_refuse_the_same_machine_names() {
    if !have_nix("nix_and_the_driver_accept_and_refuse_the_same_machine_names") {
        return;
    }
    let long_ok = format!("n{}", "x".repeat(31));
    let too_long = format!("n{}", "x".repeat(32));
    let names = [
        "target",
        "a",
        "node_1-b",
        "B2",
        long_ok.as_str(),
        "9lives",
        "_x",
        "-x",
        "a-",
        "target_",
        "a b",
        "a.b",
        "é",
        "",
        too_long.as_str(),
    ];
    for name in names {
        let rust = validate_machine_name(name).is_ok();
        let quoted = serde_json::to_string(name).unwrap();
        let nix = driver_config(&format!(
            r#"name = "t"; scenario = "s"; machines.{quoted}.startScript = "/nix/store/x-vm/bin/run-vm";"#
        ));
        assert_eq!(
            nix.is_ok(),
            rust,
            "machine name {quoted}: driver says {rust}, Nix says {nix:?}"
        );
        if let Ok(json) = nix {
            DriverConfig::from_json(&json).unwrap_or_else(|err| panic!("{quoted}: {err:#}"));
        } else if let Err(err) = nix {
            assert!(
                err.contains("machine name"),
                "{quoted}: Nix's error should name the field: {err}"
            );
        }
    }
}

#[test]
fn nix_and_the_driver_accept_and_refuse_the_same_addresses() {
    if !have_nix("nix_and_the_driver_accept_and_refuse_the_same_addresses") {
        return;
    }
    let addresses = [
        "192.0.2.1",
        "0.0.0.0",
        "255.255.255.255",
        "10.0.2.15",
        "192.0.2.256",
        "192.0.2",
        "192.0.2.1.1",
        "01.0.2.1",
        "192.0.2.-1",
        " 192.0.2.1",
        "::1",
        "",
    ];
    for address in addresses {
        let rust = address.parse::<Ipv4Addr>().is_ok();
        let quoted = serde_json::to_string(address).unwrap();
        let nix = driver_config(&format!(
            r#"name = "t"; scenario = "s"; machines.m = {{ startScript = "/x/bin/run-m-vm"; address = {quoted}; }};"#
        ));
        assert_eq!(
            nix.is_ok(),
            rust,
            "address {quoted}: Rust's Ipv4Addr says {rust}, Nix says {nix:?}"
        );
        match nix {
            Ok(json) => {
                let config = DriverConfig::from_json(&json)
                    .unwrap_or_else(|err| panic!("{quoted}: {err:#}"));
                assert_eq!(config.machines["m"].address, Some(address.parse().unwrap()));
            }
            Err(err) => assert!(
                err.contains("address"),
                "{quoted}: Nix's error should name the field: {err}"
            ),
        }
    }
}

#[test]
fn nix_refuses_what_the_driver_would_refuse_naming_the_field() {
    if !have_nix("nix_refuses_what_the_driver_would_refuse_naming_the_field") {
        return;
    }
    let cases = [
        ("globalTimeout", r#"name = "t"; scenario = "s"; globalTimeout = 0; machines = { };"#),
        ("globalTimeout", r#"name = "t"; scenario = "s"; globalTimeout = "60"; machines = { };"#),
        (
            "startScript",
            r#"name = "t"; scenario = "s"; machines.m = { startScript = "run-m-vm"; };"#,
        ),
        ("startScript", r#"name = "t"; scenario = "s"; machines.m = { };"#),
        (
            "unknown attribute",
            r#"name = "t"; scenario = "s"; machines.m = { startScript = "/x"; vlans = [ 1 ]; };"#,
        ),
        ("name", r#"name = ""; scenario = "s"; machines = { };"#),
        ("scenario", r#"name = "t"; scenario = 3; machines = { };"#),
    ];
    for (field, args) in cases {
        let err = driver_config(args).expect_err(args);
        assert!(err.contains(field), "{{ {args} }} was refused without naming {field}: {err}");
    }

    // The limits, accepted by both.
    let json =
        driver_config(r#"name = "t"; scenario = "s"; globalTimeout = 1; machines = { };"#).unwrap();
    let config = DriverConfig::from_json(&json).unwrap();
    assert_eq!((config.global_timeout, config.machines.len()), (1, 0));
    // The default timeout is the driver's default.
    let json = driver_config(r#"name = "t"; scenario = "s"; machines = { };"#).unwrap();
    assert_eq!(DriverConfig::from_json(&json).unwrap().global_timeout, 3600);
}

/// `vmcheck list --json`, from the binary under test.
fn driver_listing() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_vmcheck"))
        .args(["list", "--json"])
        .output()
        .expect("running vmcheck list --json");
    assert!(
        out.status.success(),
        "vmcheck list --json failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[test]
fn nix_scenarios_json_is_what_the_driver_lists() {
    let printed = driver_listing();
    let path = repo().join("nix/scenarios.json");
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    // Like Cargo.lock: a developer's test run brings the generated listing up to date (a
    // scenario added to `builtin()` is a flake check with nothing else to do but commit the
    // file); CI, which tests what was committed, refuses a stale one.
    if printed != checked_in && std::env::var_os("CI").is_none() {
        std::fs::write(&path, &printed).unwrap();
        eprintln!("nix/scenarios.json rewritten from `vmcheck list --json`: commit it");
        return;
    }
    assert!(
        printed == checked_in,
        "nix/scenarios.json differs from what `vmcheck list --json` prints, so the flake's checks would not be the driver's \
         scenarios. Rewrite it (in {}) with:\n\n    {SCENARIO_LISTING_COMMAND}\n\nand commit it.\n--- printed ---\n{printed}\n--- checked in ---\n{checked_in}",
        repo().display()
    );
    // And it is what it says: every listed scenario, with the machines it declares.
    let listing: Value = serde_json::from_str(&printed).unwrap();
    let suite = vmcheck::scenarios::builtin();
    let listed: Vec<_> = suite.listed().collect();
    assert!(!listed.is_empty());
    assert_eq!(listing["scenarios"].as_object().unwrap().len(), listed.len(), "{printed}");
    for s in listed {
        let nodes = s.nodes();
        let entry = &listing["scenarios"][s.name()];
        let names: Vec<_> = entry["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
            "{}",
            s.name()
        );
        for (json, node) in entry["nodes"].as_array().unwrap().iter().zip(nodes) {
            assert_eq!(json["role"], node.role.as_str());
            assert_eq!(json["address"], node.address.to_string());
            assert_eq!(json["memory_mib"], node.memory_mib);
            assert_eq!(json["disks"].as_array().unwrap().len(), node.disks.len());
        }
    }
}

#[test]
fn vmcheck_without_arguments_prints_its_help() {
    // `nix run` runs the package's mainProgram, vmcheck, with no arguments.
    let out = Command::new(env!("CARGO_BIN_EXE_vmcheck")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("Usage: vmcheck <COMMAND>") && text.contains("list") && text.contains("repl"),
        "{text}"
    );
    assert!(text.contains("Commands:"), "the whole help, not just a usage error: {text}");
}

/// The summary of the flake's real outputs against the nixpkgs stand-in.
fn flake_summary() -> Value {
    let json = nix_eval(Eval::Expr("(import ./nix/tests/flake-eval.nix).summary"))
        .unwrap_or_else(|err| panic!("{err}"));
    serde_json::from_str(&json).unwrap()
}

#[test]
fn every_listed_scenario_is_a_flake_check_whose_machines_are_the_scenarios() {
    if !have_nix("every_listed_scenario_is_a_flake_check_whose_machines_are_the_scenarios") {
        return;
    }
    let summary = flake_summary();
    let listing: Value = serde_json::from_str(&driver_listing()).unwrap();
    let checks = summary["checks"].as_object().expect("checks");
    let left_out = summary["leftOutOfNixChecks"].as_object().expect("leftOutOfNixChecks");
    let mut listed: Vec<_> = listing["scenarios"].as_object().unwrap().keys().cloned().collect();
    let mut checked: Vec<_> = checks.keys().chain(left_out.keys()).cloned().collect();
    listed.sort();
    checked.sort();
    assert_eq!(
        checked, listed,
        "one flake check per listed scenario, but those left out of the Nix checks"
    );
    for (name, why) in left_out {
        assert!(!checks.contains_key(name), "{name} is left out and a check");
        // nixpkgs' VMs mount 9p shares, which QEMU does not migrate (nix/listing.nix).
        assert!(why.as_str().unwrap().contains("9p export is mounted"), "{name}: {why}");
    }

    let suite = vmcheck::scenarios::builtin();
    for (name, check) in checks {
        let scenario = suite.find(name).unwrap();
        let mut nodes = scenario.nodes().to_vec();
        assert_eq!(check["scenario"], name.as_str());

        // The configuration the driver reads: parsed and applied by the driver's own code.
        let config = DriverConfig::from_json(&check["driverConfiguration"].to_string())
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(&config.scenario, name);
        assert_eq!(
            config,
            DriverConfig::from_json(check["configFile"]["text"].as_str().unwrap()).unwrap(),
            "{name}: the file is the value"
        );
        config.apply(&mut nodes).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(
            config.machines.len(),
            nodes.len(),
            "{name}: every machine of the scenario is a NixOS machine"
        );

        for node in &nodes {
            let n = &check["nodes"][&node.name];
            let machine = &config.machines[&node.name];
            let vm = n["vm"].as_str().unwrap();
            assert_eq!(
                machine.start_script,
                PathBuf::from(format!("{vm}/bin/run-{}-vm", node.name)),
                "{name}.{}",
                node.name
            );
            assert_eq!(n["hostName"], node.name.as_str());
            assert_eq!(n["systemName"], node.name.as_str());
            assert_eq!(
                n["address"],
                node.address.to_string(),
                "{name}.{}: the scenario's address, in the guest",
                node.name
            );
            assert_eq!(
                machine.address,
                Some(node.address),
                "{name}.{}: and in the driver configuration",
                node.name
            );
            // One test NIC per vlan, after qemu-vm's own eth0, each with the machine's address,
            // named in the initrd by the MAC the driver gives it (as nixpkgs' test network
            // names its own), not by the order in which the kernel finds the NICs.
            let expected: Vec<String> = (1..=node.vlans.len()).map(|i| format!("eth{i}")).collect();
            assert_eq!(n["testInterfaces"], serde_json::json!(expected), "{name}.{}", node.name);
            assert_eq!(n["vlans"], serde_json::json!(node.vlans), "{name}.{}", node.name);
            let rules: String = node
                .vlans
                .iter()
                .zip(&expected)
                .map(|(vlan, nic)| {
                    format!(
                        "SUBSYSTEM==\"net\",ACTION==\"add\",ATTR{{address}}==\"{}\",NAME=\"{nic}\"\n",
                        vmcheck::qemu::test_mac(*vlan, node.address)
                    )
                })
                .collect();
            assert_eq!(n["initrdUdevRules"], rules.as_str(), "{name}.{}", node.name);
            for interface in &expected {
                assert_eq!(
                    n["interfaces"][interface],
                    serde_json::json!([format!("{}/24", node.address)]),
                    "{name}.{}",
                    node.name
                );
            }
            let memory = n["memorySize"].as_u64().unwrap();
            assert!(
                memory >= node.memory_mib && memory >= 1024,
                "{name}.{}: {memory} MiB",
                node.name
            );
            assert_eq!(n["cores"], node.cpus);
            assert_eq!(n["qemuGuestAgent"], true);
            // The checks' scenarios do not migrate: their machines keep nixpkgs' 9p shares.
            assert_eq!(n["migrates"], false, "{name}.{}", node.name);
            assert_eq!(
                n["mounted9p"],
                serde_json::json!(["/nix/.ro-store", "/tmp/shared", "/tmp/xchg"]),
                "{name}.{}",
                node.name
            );
            assert_eq!(n["agentPath"], serde_json::json!(["/run/current-system/sw"]));
            assert_eq!(
                (&n["graphics"], &n["diskImage"]),
                (&Value::Bool(false), &Value::Null),
                "serial console, tmpfs root"
            );
            let script = n["startScript"].as_str().unwrap();
            assert!(
                script.contains("$QEMU_OPTS") && script.contains("-kernel ${NIXPKGS_QEMU_KERNEL_"),
                "{script}"
            );
            // QEMU's pc machine, as the default images, whatever machine nixpkgs starts with:
            // the last `-machine type=` before the driver's $QEMU_OPTS.
            let machine = script.rfind("-machine type=").map(|i| &script[i..]).unwrap_or_default();
            assert!(
                machine.starts_with("-machine type=pc ") && machine.contains("$QEMU_OPTS"),
                "{script}"
            );

            match node.role {
                Role::Target => {
                    assert_eq!(n["controlNetwork"], true);
                    let control = format!("{}/24", vmcheck::qemu::CONTROL_GUEST_ADDR);
                    assert_eq!(
                        n["interfaces"]["eth0"],
                        serde_json::json!([control]),
                        "{name}.{}",
                        node.name
                    );
                    let exec = n["units"]["vmcheck-target"]["ExecStart"].as_str().unwrap();
                    let listen = format!("'--listen' '0.0.0.0:{}'", vmcheck::target::GRPC_PORT);
                    assert!(
                        exec.contains("/bin/vmcheck-target'") && exec.contains(&listen),
                        "{exec}"
                    );
                    assert!(n["kernelModules"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|m| m == "nvmet_tcp"));
                }
                Role::Initiator => {
                    assert_eq!(n["controlNetwork"], false);
                    assert!(
                        n["interfaces"].get("eth0").is_none(),
                        "{name}.{}: the initiator has no control NIC: {n}",
                        node.name
                    );
                    let hostid = n["etc"]["nvme/hostid"].as_str().unwrap().trim();
                    assert_eq!(hostid.len(), 36, "{hostid}");
                    let hostnqn = format!("nqn.2014-08.org.nvmexpress:uuid:{hostid}");
                    assert_eq!(n["etc"]["nvme/hostnqn"].as_str().unwrap(), format!("{hostnqn}\n"));
                    // nixpkgs' libnvme does not look in /etc/nvme but reads LIBNVME_HOSTNQN and
                    // LIBNVME_HOSTID first: `nvme` on PATH is nvme-cli wrapped with them.
                    let wrapper = n["nvmeWrapper"].as_array().unwrap();
                    assert_eq!(wrapper.len(), 1, "{name}.{}: one nvme on PATH: {n}", node.name);
                    let wrapper = wrapper[0].as_str().unwrap();
                    assert!(wrapper.contains("-nvme-cli/bin/nvme $out/bin/nvme"), "{wrapper}");
                    assert!(
                        wrapper.contains(&format!("--set-default LIBNVME_HOSTNQN '{hostnqn}'")),
                        "{wrapper}"
                    );
                    assert!(
                        wrapper.contains(&format!("--set-default LIBNVME_HOSTID '{hostid}'")),
                        "{wrapper}"
                    );
                    for package in ["nvme-cli-with-host-identity", "fio", "util-linux"] {
                        assert!(
                            n["packages"].as_array().unwrap().iter().any(|p| p == package),
                            "{name}.{}: {package}",
                            node.name
                        );
                    }
                    assert!(n["kernelModules"].as_array().unwrap().iter().any(|m| m == "nvme_tcp"));
                }
            }
        }

        // The test runs the driver on that file; $out gets only what every passing run writes.
        let config_path = check["configFile"]["path"].as_str().unwrap();
        let build = check["buildCommand"].as_str().unwrap();
        assert!(
            build.contains(&format!("vmcheck run --config {config_path} --global-timeout")),
            "{build}"
        );
        assert!(
            build.contains("export VMCHECK_TIMEOUT_FACTOR=3")
                && build.contains("[ ! -e /dev/kvm ]"),
            "{build}"
        );
        assert!(
            build.contains("--out \"$artifacts\"") && !build.contains("--out \"$out\""),
            "{build}"
        );
        assert!(
            build.contains(&format!("echo \"{name}: scenario {name} passed\" >\"$out/passed\"")),
            "{build}"
        );
        assert_eq!(check["requiredSystemFeatures"], serde_json::json!(["nixos-test"]));
        let inputs = check["nativeBuildInputs"].as_array().unwrap();
        assert!(
            inputs.iter().any(|p| p == "vmcheck")
                && inputs.iter().any(|p| p.as_str().unwrap().starts_with("qemu")),
            "{inputs:?}"
        );
        // .driver runs the test (or the REPL, given -I: the test below runs it), and
        // .driverInteractive opens the REPL, on the same file.
        let driver = check["driver"]["text"].as_str().unwrap();
        let interactive = check["driverInteractive"]["text"].as_str().unwrap();
        assert!(
            driver.contains(&format!(
                "/bin/vmcheck \"$command\" --config {config_path} \"${{args[@]}}\""
            )) && driver.contains("command=run\n"),
            "{driver}"
        );
        assert!(
            interactive.contains(&format!("/bin/vmcheck repl --config {config_path} \"$@\"")),
            "{interactive}"
        );
        assert_eq!(
            (&check["driver"]["name"], &check["driverInteractive"]["name"]),
            (&"vmcheck-driver".into(), &"vmcheck-driver".into())
        );
        // vmcheck's own checks run vmcheck's own driver.
        assert!(
            check["driverPackage"].as_str().unwrap().starts_with("vmcheck-"),
            "{}",
            check["driverPackage"]
        );
    }
}

/// The other reading of the card: for every scenario that runs in a guest, a check
/// `<scenario>-nixos-test` built with nixpkgs' runNixOSTest (here the stand-in's, which evaluates
/// the nodes through the module system as nixpkgs does): nixpkgs' driver starts one node per
/// machine of the scenario, with its role alone (no guest contract) on nixpkgs' test network,
/// and the test script runs vmcheck inside the first initiator with every other machine as a
/// peer by name. Checked against the scenario as the driver declares it.
#[test]
fn every_scenario_that_runs_in_a_guest_is_a_nixos_test_check() {
    if !have_nix("every_scenario_that_runs_in_a_guest_is_a_nixos_test_check") {
        return;
    }
    let summary = flake_summary();
    let listing: Value = serde_json::from_str(&driver_listing()).unwrap();
    let tests = summary["nixosTests"].as_object().expect("nixosTests");
    let in_guest: Vec<&str> =
        summary["runsInGuest"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert!(in_guest.contains(&"fio_nvme_basic"), "{in_guest:?}");
    // nix/listing.nix reads where each scenario runs from the driver's listing.
    for (name, entry) in listing["scenarios"].as_object().unwrap() {
        let runs = entry["runs_in_guest"].as_bool().unwrap_or_else(|| panic!("{name}: {entry}"));
        assert_eq!(runs, in_guest.contains(&name.as_str()), "{name}");
    }
    let mut expected: Vec<String> = in_guest.iter().map(|s| format!("{s}-nixos-test")).collect();
    let mut checks: Vec<String> = tests.keys().cloned().collect();
    expected.sort();
    checks.sort();
    assert_eq!(checks, expected, "one nixos-test check per scenario that runs in a guest");

    let suite = vmcheck::scenarios::builtin();
    for scenario_name in in_guest {
        let check = format!("{scenario_name}-nixos-test");
        let t = &tests[&check];
        let nodes = suite.find(scenario_name).unwrap().nodes();
        // nixpkgs numbers the nodes 1, 2, ... in the order of their sorted names.
        let mut names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        names.sort();
        let number = |name: &str| names.iter().position(|n| *n == name).unwrap() + 1;
        assert_eq!(
            t["nodes"].as_object().unwrap().keys().map(String::as_str).collect::<Vec<_>>(),
            names,
            "{check}: a node per machine of the scenario"
        );
        for node in nodes {
            let n = &t["nodes"][&node.name];
            let k = number(&node.name);
            let what = format!("{check}.{}", node.name);
            assert_eq!(n["guestContract"], false, "{what}: the role alone");
            assert_eq!(n["hostName"], node.name.as_str(), "{what}");
            assert_eq!(n["nodeNumber"], k, "{what}");
            assert_eq!(n["vlans"], serde_json::json!(node.vlans), "{what}");
            assert_eq!(n["firewall"], false, "{what}: nvmet's ports are chosen at run time");
            let memory = n["memorySize"].as_u64().unwrap();
            assert!(memory >= node.memory_mib && memory >= 1024, "{what}: {memory} MiB");
            assert_eq!(n["cores"], node.cpus, "{what}");
            // nixpkgs' test network: ethI on the I-th vlan V, 192.168.V.k, named by the MAC
            // 52:54:00:12:V:k, which is vmcheck's own scheme for a machine whose host byte is k.
            let rules = n["initrdUdevRules"].as_str().unwrap();
            for (i, vlan) in node.vlans.iter().enumerate() {
                let interface = format!("eth{}", i + 1);
                let address = Ipv4Addr::new(192, 168, *vlan as u8, k as u8);
                assert_eq!(
                    n["interfaces"][&interface],
                    serde_json::json!([format!("{address}/24")]),
                    "{what}"
                );
                let rule = format!(
                    "ATTR{{address}}==\"{}\",NAME=\"{interface}\"",
                    vmcheck::qemu::test_mac(*vlan, address)
                );
                assert!(rules.contains(&rule), "{what}: {rule} in {rules}");
            }
            // Every machine's /etc/hosts names every machine: the peers resolve by name.
            let hosts = n["extraHosts"].as_str().unwrap();
            for other in nodes {
                let line =
                    format!("192.168.{}.{} {}\n", other.vlans[0], number(&other.name), other.name);
                assert!(hosts.contains(&line), "{what}: {line:?} in {hosts:?}");
            }
            let options: Vec<&str> =
                n["qemuOptions"].as_array().unwrap().iter().map(|o| o.as_str().unwrap()).collect();
            let has_module =
                |m: &str| n["kernelModules"].as_array().unwrap().iter().any(|x| x == m);
            let has_package = |p: &str| n["packages"].as_array().unwrap().iter().any(|x| x == p);
            match node.role {
                Role::Target => {
                    let exec = n["units"]["vmcheck-target"]["ExecStart"].as_str().unwrap();
                    let listen = format!("'--listen' '0.0.0.0:{}'", vmcheck::target::GRPC_PORT);
                    assert!(
                        exec.contains("/bin/vmcheck-target'") && exec.contains(&listen),
                        "{exec}"
                    );
                    assert!(has_module("nvmet_tcp"), "{what}");
                    // The scenario's disks, by serial, NVMe or virtio as declared, of their size.
                    for disk in &node.disks {
                        let model = if disk.virtio { "virtio-blk-pci" } else { "nvme" };
                        let device = format!(
                            "-device {model},id={0},drive=vmcheck-{0},serial={1}",
                            disk.id, disk.serial
                        );
                        assert!(options.iter().any(|o| o.starts_with(&device)), "{what}: {device}");
                        let drive = format!(
                            "-drive if=none,id=vmcheck-{},format=raw,file=null-co://,file.size={},",
                            disk.id,
                            disk.size_mib << 20
                        );
                        assert!(options.iter().any(|o| o.starts_with(&drive)), "{what}: {drive}");
                    }
                }
                Role::Initiator => {
                    assert!(has_package("vmcheck"), "{what}: vmcheck installed");
                    assert!(has_module("nvme_tcp"), "{what}");
                    for p in ["nvme-cli-with-host-identity", "fio", "util-linux"] {
                        assert!(has_package(p), "{what}: {p}");
                    }
                }
            }
        }
        // The script: vmcheck in the first initiator, every other machine a peer by its name.
        let script = t["testScript"].as_str().unwrap();
        let local = nodes.iter().find(|n| n.role == Role::Initiator).unwrap();
        let peers: String = nodes
            .iter()
            .filter(|n| n.name != local.name)
            .map(|n| format!(" --peer {0}={0}", n.name))
            .collect();
        let command = format!(
            "vmcheck run --local {}{peers} --global-timeout 3000 --out /tmp/vmcheck-out --junit /tmp/vmcheck-out/junit.xml {scenario_name}",
            local.name
        );
        assert!(
            script.contains(&format!("{}.execute(\"{command} 2>&1\", timeout=", local.name)),
            "{check}: {script}"
        );
        assert!(
            script.contains(&format!("{}.copy_from_vm(\"/tmp/vmcheck-out\", \"\")", local.name)),
            "{script}"
        );
        // What pyflakes and mypy would say in nixpkgs' driver build: every call is on a machine
        // of the test (the names the driver defines) and is a method of its Machine class.
        const MACHINE_API: [&str; 5] =
            ["wait_for_unit", "wait_for_open_port", "execute", "copy_from_vm", "succeed"];
        let machines = t["driver"]["pythonizedNames"].as_array().unwrap();
        let mut calls = 0;
        for line in script.lines().filter(|l| !l.trim_start().starts_with('#')) {
            // The code without its string literals, then every `name.method(`.
            let code: String = line.split('"').step_by(2).collect::<Vec<_>>().join("\"\"");
            for (dot, _) in code.match_indices('.') {
                let object: String = code[..dot]
                    .chars()
                    .rev()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                let method = code[dot + 1..].split('(').next().unwrap();
                assert!(machines.iter().any(|m| *m == object), "{check}: {object} in {line}");
                assert!(MACHINE_API.contains(&method), "{check}: {method} in {line}");
                calls += 1;
            }
        }
        assert!(calls >= 2 + nodes.len(), "{check}: {calls} machine calls in {script}");
        assert!(script.starts_with("start_all()\n"), "{script}");
        // nixpkgs' own drivers and test derivation.
        assert_eq!(t["name"], format!("vm-test-run-{check}"));
        assert_eq!(t["requiredSystemFeatures"], serde_json::json!(["nixos-test", "kvm"]));
        assert_eq!(t["driver"]["mainProgram"], "nixos-test-driver");
        assert_eq!(t["driverInteractive"]["mainProgram"], "nixos-test-driver");
        assert!(t["driverInteractive"]["buildCommand"]
            .as_str()
            .unwrap()
            .contains("'--interactive'"));
        assert_eq!(
            t["driver"]["vlans"],
            serde_json::json!(names
                .iter()
                .map(|n| nodes.iter().find(|x| x.name == *n).unwrap().vlans.clone())
                .collect::<Vec<_>>()),
            "{check}"
        );
        assert_eq!(
            (&t["driver"]["skipLint"], &t["driver"]["skipTypeCheck"]),
            (&false.into(), &false.into())
        );
    }
}

/// `.driver -I` as nixpkgs' is: the evaluated script of check fio_nvme_basic, with the real
/// vmcheck binary for its program and the evaluated driver configuration for its file, reaches
/// the REPL (which answers `help` and, at the end of its input, stops); without -I, the same
/// arguments go to `vmcheck run`. Nothing is booted: the REPL starts machines on `start`.
#[test]
fn the_driver_script_given_dash_i_opens_the_repl() {
    if !have_nix("the_driver_script_given_dash_i_opens_the_repl") {
        return;
    }
    let summary = flake_summary();
    let check = &summary["checks"]["fio_nvme_basic"];
    let text = check["driver"]["text"].as_str().unwrap();
    let program = text
        .split_whitespace()
        .find(|w| w.ends_with("/bin/vmcheck"))
        .unwrap_or_else(|| panic!("the script runs no .../bin/vmcheck: {text}"));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(&config, check["configFile"]["text"].as_str().unwrap()).unwrap();
    let script = dir.path().join("vmcheck-driver");
    std::fs::write(
        &script,
        text.replace(program, env!("CARGO_BIN_EXE_vmcheck"))
            .replace(check["configFile"]["path"].as_str().unwrap(), config.to_str().unwrap()),
    )
    .unwrap();
    let driver = |args: &[&str], input: &str| {
        use std::io::Write;
        let mut child = Command::new("bash")
            .arg(&script)
            .args(args)
            .env("VMCHECK_ACCEL", "tcg")
            .env("VMCHECK_CACHE", dir.path().join("cache"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status, text)
    };
    for flag in ["-I", "--interactive"] {
        let (status, out) = driver(&[flag], "help\n");
        assert!(status.success(), ".driver {flag}: {status}\n{out}");
        assert!(
            out.contains("vmcheck repl: machines target, initiator (not started)")
                && out.contains("commands (<m> is a machine name):")
                && out.contains("vmcheck repl: stopping every machine"),
            ".driver {flag}: {out}"
        );
    }
    // Without it, the arguments are the run's: `vmcheck run` refuses one it does not know.
    let (status, out) = driver(&["--no-such-flag"], "");
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(out.contains("Usage: vmcheck run"), "{out}");
}

#[test]
fn a_repository_made_from_the_template_runs_its_own_driver_on_its_own_machines() {
    if !have_nix("a_repository_made_from_the_template_runs_its_own_driver_on_its_own_machines") {
        return;
    }
    let json = nix_eval(Eval::Expr("(import ./nix/tests/flake-eval.nix).template"))
        .unwrap_or_else(|err| panic!("{err}"));
    let t: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        t["inputs"],
        serde_json::json!({"vmcheck": "github:OWNER/vmcheck", "nixpkgs": "follows vmcheck/nixpkgs"})
    );
    assert_eq!(
        t["outputs"],
        serde_json::json!({"checks": ["x86_64-linux"], "legacyPackages": ["x86_64-linux"], "packages": ["x86_64-linux"]})
    );
    assert_eq!(t["legacyChecks"], t["checkPaths"], "`nix build .#checks.<name>` builds the check");

    // The driver: the template's [[bin]], alone, from its Cargo.toml and Cargo.lock.
    let driver = &t["driver"];
    assert_eq!(
        (driver["pname"].as_str(), driver["version"].as_str()),
        (Some("storage-tests"), Some("0.1.0"))
    );
    assert_eq!(driver["mainProgram"], "storage-tests");
    assert_eq!(driver["cargoBuildFlags"], serde_json::json!(["--bin", "storage-tests"]));
    assert_eq!(driver["doCheck"], false, "the scenarios boot machines: not in the package's build");
    let vmcheck = driver["crates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "vmcheck")
        .expect("vmcheck is vendored");
    assert_eq!(
        vmcheck["fetch"], "builtins.fetchGit",
        "a git dependency without a hash to maintain: {vmcheck}"
    );
    let manifest: Value = serde_json::from_str(
        &nix_eval(Eval::Expr(
            "builtins.fromTOML (builtins.readFile ./nix/templates/storage-test/Cargo.toml)",
        ))
        .unwrap(),
    )
    .unwrap();
    let bin = &manifest["bin"][0];
    assert_eq!(
        (&bin["name"], &bin["path"], &bin["harness"]),
        (&manifest["package"]["name"], &"src/main.rs".into(), &false.into()),
        "{manifest}"
    );
    assert!(
        manifest["dependencies"]["vmcheck"]["git"].as_str().unwrap().ends_with("/vmcheck"),
        "{manifest}"
    );

    // The check: the template's own suite, its scenario by name, its machines from flake.nix.
    let suite = template::suite();
    suite.check().unwrap();
    let checks = t["checks"].as_object().unwrap();
    assert_eq!(
        checks.keys().collect::<Vec<_>>(),
        suite.listed().map(|s| s.name()).collect::<Vec<_>>(),
        "a check per scenario"
    );
    for (name, check) in checks {
        let mut nodes = suite.find(name).unwrap().nodes().to_vec();
        let config = DriverConfig::from_json(&check["driverConfiguration"].to_string())
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let declared: Vec<_> = nodes.iter().map(|n| (n.name.clone(), n.address)).collect();
        config.apply(&mut nodes).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(
            config.machines.len(),
            nodes.len(),
            "{name}: every machine of the scenario is a NixOS machine"
        );
        let applied: Vec<_> = nodes.iter().map(|n| (n.name.clone(), n.address)).collect();
        assert_eq!(
            applied, declared,
            "{name}: flake.nix gives the machines the addresses src/main.rs declares"
        );
        for node in &nodes {
            assert_eq!(check["nodes"][&node.name]["hostName"], node.name.as_str());
            assert_eq!(check["nodes"][&node.name]["qemuGuestAgent"], true);
        }
        // The driver runs in the build, in `.driver` and in `.driverInteractive`; vmcheck's does not.
        let config_path = check["configFile"]["path"].as_str().unwrap();
        let build = check["buildCommand"].as_str().unwrap();
        assert!(
            build.contains(&format!("\nstorage-tests run --config {config_path} --global-timeout")),
            "{build}"
        );
        let exe = "-storage-tests-0.1.0/bin/storage-tests";
        assert!(
            check["driver"]["text"]
                .as_str()
                .unwrap()
                .contains(&format!("{exe} \"$command\" --config {config_path} \"${{args[@]}}\"")),
            "{check}"
        );
        assert!(check["driverInteractive"]["text"]
            .as_str()
            .unwrap()
            .contains(&format!("{exe} repl --config {config_path} \"$@\"")));
        assert_eq!(check["driverPackage"], "storage-tests-0.1.0");
        assert_eq!(check["nativeBuildInputs"][0], "storage-tests", "the driver first on PATH");
        let all =
            format!("{build}{}{}", check["driver"]["text"], check["driverInteractive"]["text"]);
        assert!(
            !all.contains("vmcheck run")
                && !all.contains("vmcheck repl")
                && !all.contains("bin/vmcheck "),
            "{all}"
        );
    }
}

#[test]
fn build_driver_warns_when_cargo_lock_and_the_flake_input_pin_different_vmchecks() {
    if !have_nix("build_driver_warns_when_cargo_lock_and_the_flake_input_pin_different_vmchecks") {
        return;
    }
    let eval = |rev: &str| {
        let expr = format!(
            r#"((import ./nix/tests/flake-eval.nix).templateWith {{ vmcheckRev = "{rev}"; }}).driver.name"#
        );
        let out = Command::new("nix-instantiate")
            .current_dir(repo())
            .args([
                "--option", "store", "dummy://", "--eval", "--strict", "--json", "--expr", &expr,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // The template's stand-in Cargo.lock pins vmcheck at 0123...4567.
    let same = eval("0123456789abcdef0123456789abcdef01234567");
    assert!(!same.contains("vmcheck buildDriver"), "{same}");
    let other = eval("fedcba9876543210fedcba9876543210fedcba98");
    assert!(
        other.contains("built from vmcheck 0123456789abcdef0123456789abcdef01234567 (Cargo.lock) but the flake input vmcheck is fedcba9876543210fedcba9876543210fedcba98")
            && other.contains("cargo update -p vmcheck --precise fedcba9876543210fedcba9876543210fedcba98")
            && other.contains(r#"--override-input vmcheck "git+https://github.com/OWNER/vmcheck?rev=0123456789abcdef0123456789abcdef01234567""#),
        "{other}"
    );
}

#[test]
fn the_flake_offers_x86_64_linux_with_the_promised_outputs() {
    if !have_nix("the_flake_offers_x86_64_linux_with_the_promised_outputs") {
        return;
    }
    let summary = flake_summary();
    let x86 = serde_json::json!(["x86_64-linux"]);
    for output in ["packages", "checks", "devShells", "formatter"] {
        assert_eq!(
            summary["systems"][output], x86,
            "{output}: the driver runs x86_64 machines only"
        );
    }
    assert_eq!(
        summary["packages"]["x86_64-linux"],
        serde_json::json!(["default", "vmcheck", "vmcheck-alejandra"])
    );
    assert_eq!(summary["vmcheck"]["mainProgram"], "vmcheck", "nix run runs the driver");
    assert_eq!(summary["formatter"], "vmcheck-alejandra");
    assert_eq!(
        summary["nixosModules"],
        serde_json::json!({
            "guest": "set",
            "initiator": "set",
            "initiator-role": "set",
            "target": "lambda",
            "target-role": "lambda"
        })
    );
    assert_eq!(summary["lib"], serde_json::json!(["buildDriver", "driverConfig", "makeTest"]));
    // `nix flake init -t`: a path with the template's files, and a description.
    let templates = summary["templates"].as_object().unwrap();
    assert_eq!(templates.keys().collect::<Vec<_>>(), ["default", "storage-test"]);
    assert_eq!(templates["default"], templates["storage-test"]);
    let template = &templates["default"];
    assert_eq!(template["path"], repo().join("nix/templates/storage-test").to_str().unwrap());
    assert!(template["description"].as_str().unwrap().contains("vmcheck"), "{template}");
    for file in [".gitignore", "Cargo.toml", "README.md", "flake.nix", "rustfmt.toml", "src"] {
        assert!(
            template["files"].as_array().unwrap().iter().any(|f| f == file),
            "{file}: {template}"
        );
    }
    let shell: Vec<_> =
        summary["devShell"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    for tool in ["nix", "deadnix", "statix", "vmcheck-alejandra", "cargo", "qemu"] {
        assert!(
            shell.contains(&tool),
            "the dev shell lacks {tool} (nix/check.sh runs inside it): {shell:?}"
        );
    }
    let url = summary["nixpkgsInput"].as_str().unwrap();
    assert!(url.starts_with("github:NixOS/nixpkgs/nixos-"), "{url}");
}

#[test]
fn scenario_machines_get_a_test_interface_per_vlan_their_cpus_and_enough_memory() {
    if !have_nix("scenario_machines_get_a_test_interface_per_vlan_their_cpus_and_enough_memory") {
        return;
    }
    // A scenario as `vmcheck list --json` would print it, with two test networks.
    let nodes = [
        NodeSpec {
            vlans: vec![1, 2],
            cpus: 2,
            ..NodeSpec::new("target", Role::Target, 7).with_memory(2048)
        },
        NodeSpec { vlans: vec![2], ..NodeSpec::new("initiator", Role::Initiator, 8) },
    ];
    let listing = vmcheck::config::scenario_listing_json(
        &[("two_nets", "two test networks", nodes.to_vec())],
        SCENARIO_LISTING_COMMAND,
    )
    .unwrap();
    let expr = format!(
        "let f = import ./nix/tests/flake-eval.nix; in (f.testSummary (f.scenarioTests (builtins.fromJSON {})).two_nets).nodes",
        serde_json::to_string(&listing).unwrap()
    );
    let json = nix_eval(Eval::Expr(&expr)).unwrap_or_else(|err| panic!("{err}"));
    let evaluated: Value = serde_json::from_str(&json).unwrap();
    let target = &evaluated["target"];
    assert_eq!(target["testInterfaces"], serde_json::json!(["eth1", "eth2"]));
    for interface in ["eth1", "eth2"] {
        assert_eq!(target["interfaces"][interface], serde_json::json!(["192.0.2.7/24"]), "{json}");
    }
    assert_eq!((target["memorySize"].as_u64(), target["cores"].as_u64()), (Some(2048), Some(2)));
    let initiator = &evaluated["initiator"];
    assert_eq!(initiator["testInterfaces"], serde_json::json!(["eth1"]));
    assert_eq!(
        initiator["memorySize"], 1024,
        "512 MiB in the scenario, raised to a NixOS machine's minimum"
    );
    let other = nix_eval(Eval::Expr(
        r#"(import ./nix/tests/flake-eval.nix).testSummary { name = "t"; scenario = "fio_nvme_basic"; nodes.client = { imports = [ (import ./nix/tests/flake-eval.nix).modules.initiator ]; }; nodes.initiator = { imports = [ (import ./nix/tests/flake-eval.nix).modules.initiator ]; vmcheck.testInterfaces = [ "eth0" ]; }; }"#,
    ))
    .unwrap_or_else(|err| panic!("{err}"));
    let other: Value = serde_json::from_str(&other).unwrap();
    let node = &other["nodes"]["initiator"];
    // Any interface name, eth0 included where the driver forwards nothing, makes no duplicate
    // attribute and gets the address.
    assert_eq!(node["interfaces"]["eth0"], serde_json::json!(["192.0.2.2/24"]), "{other}");
    // The NVMe host identity comes from the host name: the same for the same name in another
    // test, different for another machine.
    assert_eq!(node["etc"]["nvme/hostid"], initiator["etc"]["nvme/hostid"]);
    assert_ne!(
        other["nodes"]["client"]["etc"]["nvme/hostid"], node["etc"]["nvme/hostid"],
        "{other}"
    );
}
