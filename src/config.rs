//! What a test's machines are: the node specs a scenario declares, and the driver configuration
//! JSON that `nix/` writes for NixOS-built machines (`vmcheck run --config FILE`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::recipe::Recipe;

/// The default test subnet (RFC 5737 TEST-NET-1): never routed, never the host's.
pub const TEST_SUBNET_PREFIX: [u8; 3] = [192, 0, 2];
/// The test subnet's prefix length.
pub const TEST_SUBNET_LEN: u8 = 24;

/// What a machine is for: it picks the NixOS module and, unless `NodeSpec::with_recipe` says
/// otherwise, the default image's recipe (`Recipe::for_role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs nvmet and `vmcheck-target`.
    Target,
    /// Runs nvme-cli and fio.
    Initiator,
}

impl Role {
    /// The role's name (`target`, `initiator`), as NixOS modules and JSON name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Target => "target",
            Role::Initiator => "initiator",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An emulated NVMe disk (its own controller), backed by a raw file in the run directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpec {
    /// QEMU device id; also the handle for hot-remove.
    pub id: String,
    /// Size in MiB (a sparse raw file).
    pub size_mib: u64,
    /// The controller serial the guest sees.
    pub serial: String,
    /// virtio-blk instead of NVMe (the guest sees /dev/vdX).
    #[serde(default)]
    pub virtio: bool,
    /// What the device does when a read of its image fails (QEMU's `rerror`); `None`: QEMU's
    /// default (`auto`: report the error to the guest). virtio-blk only (see [`DiskSpec::check`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerror: Option<OnError>,
    /// What the device does when a write fails (QEMU's `werror`); `None`: QEMU's default (`auto`:
    /// stop the VM on ENOSPC, report anything else). `stop` pauses the VM (QMP `BLOCK_IO_ERROR`
    /// and `STOP`, run state `io-error`) and retries the write on `cont`. virtio-blk only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub werror: Option<OnError>,
}

/// An error policy of a disk device (QEMU's `BlockdevOnError`: report, ignore, enospc, stop,
/// auto).
pub use qapi::qmp::BlockdevOnError as OnError;

impl DiskSpec {
    /// An NVMe disk `id` of `size_mib` MiB, serial `vmcheck-<id>` ([`crate::Machine::disk_device`] finds it by that).
    pub fn nvme(id: &str, size_mib: u64) -> Self {
        DiskSpec {
            id: id.to_string(),
            size_mib,
            serial: format!("vmcheck-{id}"),
            virtio: false,
            rerror: None,
            werror: None,
        }
    }
    /// A virtio-blk disk `id` of `size_mib` MiB (the guest sees `/dev/vdX`), serial `vmcheck-<id>`.
    pub fn virtio(id: &str, size_mib: u64) -> Self {
        DiskSpec { virtio: true, ..Self::nvme(id, size_mib) }
    }
    /// Sets the read error policy (`rerror`).
    pub fn with_rerror(mut self, policy: OnError) -> Self {
        self.rerror = Some(policy);
        self
    }
    /// Sets the write error policy (`werror`).
    pub fn with_werror(mut self, policy: OnError) -> Self {
        self.werror = Some(policy);
        self
    }
    /// Refuses what QEMU would refuse less clearly: an error policy on an NVMe disk (QEMU's `nvme`
    /// device has no `rerror`/`werror`: it always completes a failed command with an error
    /// status, Unrecovered Read Error or Write Fault), an empty id or size.
    pub fn check(&self) -> Result<()> {
        if self.id.is_empty() || self.size_mib == 0 {
            bail!("disk {:?}: an id and a size above 0 MiB are needed", self.id);
        }
        if !self.virtio && (self.rerror.is_some() || self.werror.is_some()) {
            bail!(
                "disk {}: QEMU's nvme device has no rerror/werror (it reports every failed I/O to the guest \
                 as an NVMe error status); an error policy needs a virtio-blk disk (DiskSpec::virtio)",
                self.id
            );
        }
        Ok(())
    }
}

/// The virtio balloon a machine boots with.
///
/// The default is a balloon without `deflate-on-oom`: with that feature Linux's virtio_balloon
/// holds inflated pages without lowering the guest's MemTotal (it must be able to give them back
/// under memory pressure), so "guest memory follows the balloon" only holds without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BalloonSpec {
    /// No balloon device.
    None,
    /// `virtio-balloon-pci` without deflate-on-oom: MemTotal follows the balloon.
    #[default]
    Plain,
    /// `virtio-balloon-pci,deflate-on-oom=on`: the guest deflates under OOM; MemTotal stays.
    DeflateOnOom,
}

/// A machine of a test, as a scenario declares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// The machine's name: its handle in [`crate::driver::Driver::machine`], its host name, its files.
    pub name: String,
    /// What it is for: the NixOS module and, without a recipe of its own, the default image.
    pub role: Role,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Address on the test network (vlan 1).
    pub address: Ipv4Addr,
    /// Test networks this machine is on.
    pub vlans: Vec<u32>,
    /// The disks it boots with, in order (hot-plugged ones are added through the machine API).
    pub disks: Vec<DiskSpec>,
    /// NixOS start script (`run-<name>-vm`); `None` boots the image of `recipe`.
    #[serde(default)]
    pub start_script: Option<PathBuf>,
    /// What the machine's default image holds (`None`, as in a node written before recipes
    /// existed: the predefined recipe of `role`). Set by [`NodeSpec::new`] and
    /// [`NodeSpec::with_recipe`]; a NixOS start script replaces it.
    #[serde(default)]
    pub recipe: Option<Recipe>,
    /// Guest TCP ports the driver reaches through a loopback forward of the run (the target
    /// daemon's gRPC port on a target): the recipe's ([`Recipe::forward_port`]). The harness
    /// knows ports, not what listens on them.
    #[serde(default)]
    pub forward_ports: Vec<u16>,
    /// The balloon device it boots with.
    #[serde(default)]
    pub balloon: BalloonSpec,
    /// Extra guest kernel parameters (`module_blacklist=virtio_balloon`, say).
    #[serde(default)]
    pub kernel_params: Vec<String>,
}

impl NodeSpec {
    /// A node with the defaults: 1 CPU, 512 MiB (the initiator with fio gets more), vlan 1, the
    /// predefined recipe of `role` ([`Recipe::for_role`]).
    pub fn new(name: &str, role: Role, host: u8) -> Self {
        let [a, b, c] = TEST_SUBNET_PREFIX;
        let recipe = Recipe::for_role(role);
        NodeSpec {
            name: name.to_string(),
            role,
            memory_mib: 512,
            cpus: 1,
            address: Ipv4Addr::new(a, b, c, host),
            vlans: vec![1],
            disks: Vec::new(),
            start_script: None,
            // What a machine holds decides, here where it is declared, what it forwards.
            forward_ports: recipe.forward_ports().to_vec(),
            recipe: Some(recipe),
            balloon: BalloonSpec::default(),
            kernel_params: Vec::new(),
        }
    }
    /// Boots the image of `recipe` (instead of the role's predefined one) and forwards its
    /// ports. The role stays: it is what the NixOS side builds for this machine.
    pub fn with_recipe(mut self, recipe: Recipe) -> Self {
        self.forward_ports = recipe.forward_ports().to_vec();
        self.recipe = Some(recipe);
        self
    }
    /// The recipe of the machine's default image: its own, else its role's predefined one.
    pub fn recipe(&self) -> Recipe {
        self.recipe.clone().unwrap_or_else(|| Recipe::for_role(self.role))
    }
    /// Adds a disk.
    pub fn with_disk(mut self, disk: DiskSpec) -> Self {
        self.disks.push(disk);
        self
    }
    /// Sets the guest memory in MiB.
    pub fn with_memory(mut self, mib: u64) -> Self {
        self.memory_mib = mib;
        self
    }
    /// Sets the balloon device it boots with.
    pub fn with_balloon(mut self, balloon: BalloonSpec) -> Self {
        self.balloon = balloon;
        self
    }
    /// Adds a guest kernel parameter.
    pub fn with_kernel_param(mut self, param: &str) -> Self {
        self.kernel_params.push(param.to_string());
        self
    }
}

/// Machine names become file names, QEMU ids, REPL words and, on NixOS machines, the host name
/// (`networking.hostName`, whose type refuses a name that ends in '-' or '_'): keep them plain.
/// A letter first, a letter or digit last, letters, digits, '-' and '_' between, at most 32.
pub fn validate_machine_name(name: &str) -> Result<()> {
    let plain = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let ok = name.len() <= 32
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(plain);
    if !ok {
        bail!(
            "machine name {name:?} must start with a letter, end with a letter or digit, and hold only letters, digits, '-' and '_' \
             (at most 32; NixOS host names refuse a trailing '-' or '_')"
        );
    }
    Ok(())
}

/// The command that writes `nix/scenarios.json`, the scenario list the flake turns into checks.
pub const SCENARIO_LISTING_COMMAND: &str =
    "cargo run --quiet --bin vmcheck -- list --json > nix/scenarios.json";

/// A scenario as `vmcheck list --json` lists it ([`scenario_listing_json`]).
#[derive(Debug, Clone)]
pub struct Listed<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its one-line description.
    pub description: &'a str,
    /// The machines it declares.
    pub nodes: Vec<NodeSpec>,
    /// Why it needs the host, when guest mode refuses it (`Scenario::host_only`).
    pub host_only: Option<&'a str>,
}

impl<'a> From<(&'a str, &'a str, Vec<NodeSpec>)> for Listed<'a> {
    /// A scenario that runs in guest mode too.
    fn from((name, description, nodes): (&'a str, &'a str, Vec<NodeSpec>)) -> Listed<'a> {
        Listed { name, description, nodes, host_only: None }
    }
}

/// `vmcheck list --json`: every listed scenario with the machines it declares and where it runs
/// (`runs_in_guest`, and `host_only` with the reason when guest mode refuses it), as the flake
/// reads it from `nix/scenarios.json` (pretty-printed, keys sorted, a trailing newline, so the
/// checked-in file diffs line by line). A scenario whose machine names the driver would refuse,
/// or that names two machines alike, is an error here rather than a broken flake check.
/// `generated_by` is the command that writes the file ([`SCENARIO_LISTING_COMMAND`] for
/// vmcheck's own).
pub fn scenario_listing_json<'a>(
    scenarios: &[impl Into<Listed<'a>> + Clone],
    generated_by: &str,
) -> Result<String> {
    let mut listing = serde_json::Map::new();
    for scenario in scenarios {
        let Listed { name, description, nodes, host_only } = scenario.clone().into();
        let nodes = &nodes;
        if nodes.is_empty() {
            bail!("scenario {name} declares no machine");
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut machines = Vec::new();
        for node in nodes {
            validate_machine_name(&node.name).with_context(|| format!("scenario {name}"))?;
            if !seen.insert(node.name.as_str()) {
                bail!("scenario {name} declares two machines named {}", node.name);
            }
            machines.push(serde_json::json!({
                "name": node.name,
                "role": node.role,
                "address": node.address.to_string(),
                "memory_mib": node.memory_mib,
                "cpus": node.cpus,
                "vlans": node.vlans,
                "disks": node.disks,
            }));
        }
        let mut entry = serde_json::json!({
            "description": description,
            "nodes": machines,
            "runs_in_guest": host_only.is_none(),
        });
        if let Some(why) = host_only {
            entry["host_only"] = why.into();
        }
        if listing.insert(name.to_string(), entry).is_some() {
            bail!("two scenarios are named {name}");
        }
    }
    let document = serde_json::json!({
        "generated_by": generated_by,
        "scenarios": listing,
    });
    Ok(serde_json::to_string_pretty(&document)? + "\n")
}

/// The driver configuration `nix/` writes (`vmcheck run --config FILE`, and the `.driver` script).
///
/// Shape: `{"name": "...", "scenario": "...", "global_timeout": 3600,
/// "machines": {"target": {"start_script": "/nix/store/.../bin/run-target-vm"}, ...}}`.
/// Machines named here replace the default image of the scenario's node of the same name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriverConfig {
    /// The test's name (the Nix check's name); used for logs and JUnit.
    pub name: String,
    /// The registered scenario to run.
    pub scenario: String,
    /// Seconds the whole test may take.
    #[serde(default = "default_global_timeout")]
    pub global_timeout: u64,
    /// The NixOS machines, by the scenario's machine names.
    pub machines: BTreeMap<String, MachineConfig>,
}

fn default_global_timeout() -> u64 {
    3600
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
/// One NixOS machine of a driver configuration.
pub struct MachineConfig {
    /// NixOS `system.build.vm`'s `bin/run-<name>-vm`.
    pub start_script: PathBuf,
    /// The machine's address on the test network, when it differs from the scenario's.
    #[serde(default)]
    pub address: Option<Ipv4Addr>,
}

impl DriverConfig {
    /// Parses a driver configuration, refusing a zero global timeout and bad machine names.
    pub fn from_json(text: &str) -> Result<Self> {
        let config: DriverConfig =
            serde_json::from_str(text).context("driver configuration is not valid")?;
        if config.global_timeout == 0 {
            bail!("driver configuration: global_timeout must be above 0 seconds");
        }
        for name in config.machines.keys() {
            validate_machine_name(name).context("driver configuration")?;
        }
        Ok(config)
    }

    /// Reads and parses the driver configuration at `path`.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading driver configuration {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Puts the configured start scripts and addresses onto the scenario's nodes; a configured
    /// machine the scenario does not have is an error, not silently ignored.
    pub fn apply(&self, nodes: &mut [NodeSpec]) -> Result<()> {
        for (name, machine) in &self.machines {
            let Some(node) = nodes.iter_mut().find(|n| &n.name == name) else {
                let known: Vec<_> = nodes.iter().map(|n| n.name.as_str()).collect();
                bail!("driver configuration names machine {name:?}, but scenario {} has only {known:?}", self.scenario);
            };
            node.start_script = Some(machine.start_script.clone());
            if let Some(address) = machine.address {
                node.address = address;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_policy_needs_a_virtio_disk_and_is_left_out_of_json_when_unset() {
        let nvme = DiskSpec::nvme("d0", 64).with_werror(OnError::stop);
        let err = nvme.check().unwrap_err().to_string();
        assert!(err.contains("nvme device has no rerror/werror"), "{err}");
        let virtio = DiskSpec::virtio("d0", 64).with_werror(OnError::stop);
        assert!(virtio.check().is_ok());
        assert_eq!(serde_json::to_value(&virtio).unwrap()["werror"], "stop");
        // A disk without a policy serializes as before (nix/scenarios.json is unchanged by it).
        let plain = serde_json::to_value(DiskSpec::nvme("d0", 64)).unwrap();
        assert!(plain.get("werror").is_none() && plain.get("rerror").is_none());
        assert!(DiskSpec::nvme("d0", 0).check().is_err());
    }

    #[test]
    fn parses_and_applies_driver_config() {
        let json = r#"{"name":"fio_nvme_basic","scenario":"fio_nvme_basic","global_timeout":900,
            "machines":{"target":{"start_script":"/nix/store/x-target/bin/run-target-vm"}}}"#;
        let config = DriverConfig::from_json(json).unwrap();
        let mut nodes = vec![
            NodeSpec::new("target", Role::Target, 1),
            NodeSpec::new("initiator", Role::Initiator, 2),
        ];
        config.apply(&mut nodes).unwrap();
        assert_eq!(
            nodes[0].start_script.as_deref(),
            Some(std::path::Path::new("/nix/store/x-target/bin/run-target-vm"))
        );
        assert_eq!(nodes[1].start_script, None);
    }

    #[test]
    fn machines_boot_the_balloon_without_deflate_on_oom_unless_told() {
        let node = NodeSpec::new("vm1", Role::Initiator, 2);
        assert_eq!(node.balloon, BalloonSpec::Plain);
        // A node written before the option existed reads as the default.
        let mut v = serde_json::to_value(&node).unwrap();
        v.as_object_mut().unwrap().remove("balloon");
        assert_eq!(serde_json::from_value::<NodeSpec>(v).unwrap().balloon, BalloonSpec::Plain);
        let oom = node
            .with_balloon(BalloonSpec::DeflateOnOom)
            .with_kernel_param("module_blacklist=virtio_balloon");
        assert_eq!(serde_json::to_value(&oom).unwrap()["balloon"], "deflate-on-oom");
        assert_eq!(oom.kernel_params, ["module_blacklist=virtio_balloon"]);
    }

    #[test]
    fn a_node_boots_its_recipe_and_forwards_its_ports() {
        let target = NodeSpec::new("t", Role::Target, 1);
        assert_eq!(target.recipe(), Recipe::target());
        assert_eq!(target.forward_ports, [crate::target::GRPC_PORT]);
        let initiator = NodeSpec::new("i", Role::Initiator, 2);
        assert!(initiator.forward_ports.is_empty());
        let mine =
            initiator.clone().with_recipe(Recipe::initiator().named("web").forward_port(8080));
        assert_eq!(mine.forward_ports, [8080]);
        assert_eq!(mine.recipe().name(), "web");
        assert_eq!(mine.role, Role::Initiator);
        // A node written before recipes existed reads with none: its role's.
        let mut v = serde_json::to_value(&initiator).unwrap();
        v.as_object_mut().unwrap().remove("recipe");
        let old: NodeSpec = serde_json::from_value(v).unwrap();
        assert_eq!(old.recipe, None);
        assert_eq!(old.recipe(), Recipe::initiator());
        assert_eq!(
            serde_json::from_value::<NodeSpec>(serde_json::to_value(&mine).unwrap()).unwrap(),
            mine
        );
    }

    #[test]
    fn rejects_unknown_machine_and_fields() {
        let config = DriverConfig::from_json(
            r#"{"name":"t","scenario":"s","machines":{"ghost":{"start_script":"/x"}}}"#,
        )
        .unwrap();
        let err = config.apply(&mut [NodeSpec::new("target", Role::Target, 1)]).unwrap_err();
        assert!(err.to_string().contains("ghost"), "{err}");
        assert!(DriverConfig::from_json(r#"{"name":"t","scenario":"s","machines":{},"bogus":1}"#)
            .is_err());
        assert!(DriverConfig::from_json(
            r#"{"name":"t","scenario":"s","machines":{"9bad":{"start_script":"/x"}}}"#
        )
        .is_err());
    }

    #[test]
    fn machine_names_are_what_networking_host_name_accepts() {
        for ok in ["a", "target", "node_1-b", "B2", "x9"] {
            validate_machine_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in
            ["", "9lives", "_x", "a-", "a_", "a b", "a.b", "é", &format!("n{}", "x".repeat(32))]
        {
            let err = validate_machine_name(bad).expect_err(bad).to_string();
            assert!(err.contains("machine name"), "{err}");
        }
    }

    #[test]
    fn the_scenario_listing_holds_each_machine_and_refuses_bad_names() {
        let nodes = vec![
            NodeSpec::new("target", Role::Target, 1).with_disk(DiskSpec::virtio("d1", 64)),
            NodeSpec::new("initiator", Role::Initiator, 2).with_memory(768),
        ];
        let text =
            scenario_listing_json(&[("s", "one line", nodes.clone())], SCENARIO_LISTING_COMMAND)
                .unwrap();
        assert!(text.ends_with("}\n"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["generated_by"], SCENARIO_LISTING_COMMAND);
        let s = &v["scenarios"]["s"];
        assert_eq!(s["description"], "one line");
        assert_eq!(s["nodes"][0]["name"], "target");
        assert_eq!(s["nodes"][0]["role"], "target");
        assert_eq!(s["nodes"][0]["address"], "192.0.2.1");
        assert_eq!(s["nodes"][0]["disks"][0]["virtio"], true);
        assert_eq!(s["nodes"][1]["memory_mib"], 768);
        assert_eq!(s["nodes"][1]["vlans"], serde_json::json!([1]));

        let bad = |nodes: Vec<NodeSpec>| {
            scenario_listing_json(&[("s", "d", nodes)], SCENARIO_LISTING_COMMAND).unwrap_err()
        };
        assert!(format!("{:#}", bad(vec![NodeSpec::new("node-", Role::Target, 1)]))
            .contains("machine name"));
        assert!(bad(vec![
            NodeSpec::new("a", Role::Target, 1),
            NodeSpec::new("a", Role::Initiator, 2)
        ])
        .to_string()
        .contains("two machines"));
        assert!(bad(vec![]).to_string().contains("no machine"));
        let twice = scenario_listing_json(
            &[("s", "d", nodes.clone()), ("s", "d", nodes)],
            SCENARIO_LISTING_COMMAND,
        )
        .unwrap_err();
        assert!(twice.to_string().contains("two scenarios"), "{twice}");
    }
}
