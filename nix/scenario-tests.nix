# The flake's checks, from the scenario list the driver prints (nix/scenarios.json, written by
# `vmcheck list --json`; tests/nix_config.rs fails when the file and the driver disagree, and
# names the command that rewrites it). Pure: builtins only.
#
#   import ./scenario-tests.nix { listing = <nix/scenarios.json, parsed>; modules = <role -> module>; }
#
# returns, for every scenario but those nix/listing.nix leaves out of the Nix checks (the ones
# that migrate a machine: nixpkgs' VMs mount 9p shares, which QEMU does not migrate), the
# arguments of makeTest (nix/make-test.nix): the scenario's name, and for each machine it
# declares, a NixOS module of its role with the machine's address, its test networks (vlans: the
# guest module names one test interface per vlan, eth1, eth2, ..., by the MAC the driver gives
# that NIC), its CPUs and its memory (at least 1024 MiB: a NixOS machine runs systemd and a
# tmpfs root where the default images run an initramfs; a node may set more).
{
  listing,
  modules,
}: let
  scenarioList = import ./listing.nix listing;

  machine = scenario: node: let
    where = "nix/scenarios.json: scenario ${scenario}, machine ${node.name or "?"}";
    role =
      modules.${node.role}
      or (throw "${where}: role ${builtins.toJSON (node.role or null)} has no NixOS module; known roles: ${builtins.toJSON (builtins.attrNames modules)}");
  in {
    inherit (node) name;
    value = {lib, ...}: {
      imports = [role];
      vmcheck.address = node.address;
      vmcheck.vlans = node.vlans;
      virtualisation.memorySize = lib.mkDefault (scenarioList.nixosMemoryMiB node);
      virtualisation.cores = lib.mkDefault node.cpus;
    };
  };
in
  builtins.mapAttrs (scenario: entry: {
    name = scenario;
    inherit scenario;
    nodes = builtins.listToAttrs (map (machine scenario) entry.nodes);
  })
  (builtins.removeAttrs scenarioList.scenarios (builtins.attrNames scenarioList.leftOutOfNixChecks))
