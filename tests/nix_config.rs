//! The Nix side and the driver agree on the driver configuration: the JSON that the pure
//! `nix/driver-config.nix` evaluates to (what `lib.makeTest` writes for `vmcheck run --config`)
//! is fed, exactly as `nix-instantiate --eval --strict --json` prints it, to the driver's parser.
//!
//! Needs `nix-instantiate` (Debian: `apt-get install nix-bin`); nothing from nixpkgs. Without it
//! each test prints why it is skipped and passes, unless VMCHECK_REQUIRE_NIX=1 (CI sets it), which
//! makes a missing nix-instantiate a failure.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use vmcheck::config::{validate_machine_name, DriverConfig, NodeSpec, Role};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Whether nix-instantiate can run; prints the reason when a test is skipped.
fn have_nix(test: &str) -> bool {
    match Command::new("nix-instantiate").arg("--version").output() {
        Ok(out) if out.status.success() => true,
        result => {
            let why = match result {
                Ok(out) => format!("`nix-instantiate --version` failed: {}", String::from_utf8_lossy(&out.stderr)),
                Err(err) => format!("nix-instantiate is not on PATH ({err}); Debian: apt-get install -y nix-bin"),
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
    let json = nix_eval(Eval::File("nix/tests/sample.nix")).expect("nix/tests/sample.nix evaluates");
    let config = DriverConfig::from_json(&json).unwrap_or_else(|err| panic!("{err:#}\nJSON: {json}"));

    assert_eq!(config.name, "sample_fio");
    assert_eq!(config.scenario, "fio_nvme_basic");
    assert_eq!(config.global_timeout, 900);
    assert_eq!(config.machines.keys().map(String::as_str).collect::<Vec<_>>(), ["initiator", "target"]);
    let target = &config.machines["target"];
    assert_eq!(target.start_script, PathBuf::from("/nix/store/00000000000000000000000000000000-nixos-vm/bin/run-target-vm"));
    assert_eq!(target.address, Some(Ipv4Addr::new(192, 0, 2, 1)));
    let initiator = &config.machines["initiator"];
    assert_eq!(initiator.start_script, PathBuf::from("/nix/store/11111111111111111111111111111111-nixos-vm/bin/run-initiator-vm"));
    assert_eq!(initiator.address, None, "address = null is left out, so the scenario's address stays");

    // And it lands on the scenario's nodes.
    let mut nodes = [NodeSpec::new("target", Role::Target, 10), NodeSpec::new("initiator", Role::Initiator, 20)];
    config.apply(&mut nodes).expect("the sample's machines are the scenario's nodes");
    assert_eq!(nodes[0].start_script.as_deref(), Some(target.start_script.as_path()));
    assert_eq!(nodes[0].address, Ipv4Addr::new(192, 0, 2, 1));
    assert_eq!(nodes[1].start_script.as_deref(), Some(initiator.start_script.as_path()));
    assert_eq!(nodes[1].address, Ipv4Addr::new(192, 0, 2, 20));
}

#[test]
fn every_flake_scenario_has_a_driver_configuration_the_driver_parses() {
    if !have_nix("every_flake_scenario_has_a_driver_configuration_the_driver_parses") {
        return;
    }
    let json = nix_eval(Eval::File("nix/tests/scenario-configs.nix")).expect("nix/tests/scenario-configs.nix evaluates");
    let all: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&json).expect("an object of scenarios");
    assert!(all.contains_key("fio_nvme_basic"), "the flake checks fio_nvme_basic: {json}");

    for (scenario, value) in &all {
        let text = value.to_string();
        let config = DriverConfig::from_json(&text).unwrap_or_else(|err| panic!("{scenario}: {err:#}\nJSON: {text}"));
        assert_eq!(&config.name, scenario);
        assert_eq!(&config.scenario, scenario);
        assert!(!config.machines.is_empty(), "{scenario} boots no machine");
        for (name, machine) in &config.machines {
            assert!(machine.start_script.ends_with(format!("bin/run-{name}-vm")), "{scenario}.{name}: {machine:?}");
            assert!(machine.address.is_some(), "{scenario}.{name}: the flake gives every machine its address");
        }
    }

    let fio = DriverConfig::from_json(&all["fio_nvme_basic"].to_string()).unwrap();
    assert_eq!(fio.global_timeout, 1800);
    assert_eq!(fio.machines["target"].address, Some(Ipv4Addr::new(192, 0, 2, 1)));
    assert_eq!(fio.machines["initiator"].address, Some(Ipv4Addr::new(192, 0, 2, 2)));
    let mut nodes = [NodeSpec::new("target", Role::Target, 1), NodeSpec::new("initiator", Role::Initiator, 2)];
    fio.apply(&mut nodes).expect("fio_nvme_basic's machines are target and initiator");
}

#[test]
fn nix_and_the_driver_accept_and_refuse_the_same_machine_names() {
    if !have_nix("nix_and_the_driver_accept_and_refuse_the_same_machine_names") {
        return;
    }
    let long_ok = format!("n{}", "x".repeat(31));
    let too_long = format!("n{}", "x".repeat(32));
    let names = ["target", "a", "node_1-b", "B2", long_ok.as_str(), "9lives", "_x", "-x", "a b", "a.b", "é", "", too_long.as_str()];
    for name in names {
        let rust = validate_machine_name(name).is_ok();
        let quoted = serde_json::to_string(name).unwrap();
        let nix = driver_config(&format!(r#"name = "t"; scenario = "s"; machines.{quoted}.startScript = "/nix/store/x-vm/bin/run-vm";"#));
        assert_eq!(nix.is_ok(), rust, "machine name {quoted}: driver says {rust}, Nix says {nix:?}");
        if let Ok(json) = nix {
            DriverConfig::from_json(&json).unwrap_or_else(|err| panic!("{quoted}: {err:#}"));
        } else if let Err(err) = nix {
            assert!(err.contains("machine name"), "{quoted}: Nix's error should name the field: {err}");
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
        assert_eq!(nix.is_ok(), rust, "address {quoted}: Rust's Ipv4Addr says {rust}, Nix says {nix:?}");
        match nix {
            Ok(json) => {
                let config = DriverConfig::from_json(&json).unwrap_or_else(|err| panic!("{quoted}: {err:#}"));
                assert_eq!(config.machines["m"].address, Some(address.parse().unwrap()));
            }
            Err(err) => assert!(err.contains("address"), "{quoted}: Nix's error should name the field: {err}"),
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
        ("startScript", r#"name = "t"; scenario = "s"; machines.m = { startScript = "run-m-vm"; };"#),
        ("startScript", r#"name = "t"; scenario = "s"; machines.m = { };"#),
        ("unknown attribute", r#"name = "t"; scenario = "s"; machines.m = { startScript = "/x"; vlans = [ 1 ]; };"#),
        ("name", r#"name = ""; scenario = "s"; machines = { };"#),
        ("scenario", r#"name = "t"; scenario = 3; machines = { };"#),
    ];
    for (field, args) in cases {
        let err = driver_config(args).expect_err(args);
        assert!(err.contains(field), "{{ {args} }} was refused without naming {field}: {err}");
    }

    // The limits, accepted by both.
    let json = driver_config(r#"name = "t"; scenario = "s"; globalTimeout = 1; machines = { };"#).unwrap();
    let config = DriverConfig::from_json(&json).unwrap();
    assert_eq!((config.global_timeout, config.machines.len()), (1, 0));
    // The default timeout is the driver's default.
    let json = driver_config(r#"name = "t"; scenario = "s"; machines = { };"#).unwrap();
    assert_eq!(DriverConfig::from_json(&json).unwrap().global_timeout, 3600);
}

#[test]
fn the_flake_outputs_have_the_promised_shape() {
    if !have_nix("the_flake_outputs_have_the_promised_shape") {
        return;
    }
    let json = nix_eval(Eval::File("nix/tests/flake-shape.nix")).unwrap_or_else(|err| panic!("{err}"));
    let shape: serde_json::Value = serde_json::from_str(&json).unwrap();
    for system in ["x86_64-linux", "aarch64-linux"] {
        let checks = shape["checks"][system].as_array().unwrap_or_else(|| panic!("no checks for {system}: {json}"));
        assert!(checks.iter().any(|c| c == "fio_nvme_basic"), "{system}: {json}");
    }
    assert_eq!(shape["nixosModules"].as_object().unwrap().len(), 3, "{json}");
}
