# makeTest: a vmcheck scenario against NixOS machines, run in the Nix build sandbox.
#
# Modelled on nixpkgs' NixOS test framework (nixos/lib/testing/): every node is a NixOS
# configuration built as a QEMU VM by qemu-vm.nix (`system.build.vm`); a JSON driver
# configuration names their start scripts (the role of nixpkgs' driverConfiguration.json); the
# test is a derivation whose build runs the driver; `.driver` is the same driver, interactive.
# What differs: the test script is a scenario compiled into the driver (src/scenarios), chosen by
# name, and the driver, not the NixOS modules, adds the QEMU plumbing (QMP, serial console, guest
# agent port, test-network NICs, NVMe disks) through $QEMU_OPTS.
#
# The first argument comes from the flake (see flake.nix, lib.makeTest); the second is the test:
#
#   makeTest {
#     name = "my_target_fio";          # derivation and JUnit name
#     scenario = "fio_nvme_basic";     # a scenario the driver knows (`vmcheck list`); default: name
#     nodes = {                        # one NixOS module per machine the scenario declares
#       target = { imports = [ vmcheck.nixosModules.target ]; vmcheck.address = "192.0.2.1"; };
#       initiator = { imports = [ vmcheck.nixosModules.initiator ]; };
#     };
#     defaults = { };                  # a NixOS module applied to every node
#     globalTimeout = 3600;            # seconds, for the whole run
#     accel = null;                    # null: the driver probes KVM; "kvm" or "tcg" to force one
#     requiredSystemFeatures = [ "nixos-test" ];
#     extraDriverArgs = [ ];           # more arguments for `vmcheck run`
#   }
#
# Every node gets nixosModules.guest (the guest contract), `networking.hostName = <node name>`
# and, unless it sets one, `vmcheck.address = 192.0.2.<n>` (n = its place in the sorted node
# names, from 1). The address each node ends up with is written into the driver configuration.
{
  pkgs,
  vmcheck,
  guestModule,
}: {
  name,
  nodes,
  scenario ? name,
  defaults ? {},
  globalTimeout ? 3600,
  accel ? null,
  requiredSystemFeatures ? ["nixos-test"],
  extraDriverArgs ? [],
}: let
  inherit (pkgs) lib;

  evalConfig = import (pkgs.path + "/nixos/lib/eval-config.nix");

  # 1, 2, ... in the order of the sorted node names, as nixpkgs' testing/network.nix numbers nodes.
  nodeNumbers = builtins.listToAttrs (lib.imap1 (number: nodeName: {
    name = nodeName;
    value = number;
  }) (builtins.attrNames nodes));

  # One NixOS system per node, evaluated with the caller's package set, read-only, as nixpkgs'
  # tests do with `node.pkgs` (testing/nodes.nix): overlays go into `pkgs`, not into the nodes.
  evalNode = nodeName: module:
    evalConfig {
      system = null;
      modules = [
        (pkgs.path + "/nixos/modules/misc/nixpkgs/read-only.nix")
        {nixpkgs.pkgs = pkgs;}
        guestModule
        {
          networking.hostName = lib.mkDefault nodeName;
          vmcheck.address = lib.mkDefault "192.0.2.${toString nodeNumbers.${nodeName}}";
        }
        defaults
        module
      ];
    };

  evaluatedNodes = builtins.mapAttrs evalNode nodes;

  startScript = node: "${node.config.system.build.vm}/bin/run-${node.config.system.name}-vm";

  driverConfiguration = import ./driver-config.nix {
    inherit name scenario globalTimeout;
    machines =
      builtins.mapAttrs (_: node: {
        startScript = startScript node;
        inherit (node.config.vmcheck) address;
      })
      evaluatedNodes;
  };

  configFile = pkgs.writeText "vmcheck-${name}.json" (builtins.toJSON driverConfiguration);

  # The QEMU the machines run, on PATH for the driver's KVM probe.
  qemus = lib.unique (lib.mapAttrsToList (_: node: node.config.virtualisation.qemu.package) evaluatedNodes);

  accelEnv =
    if accel == null
    then ""
    else if builtins.elem accel ["kvm" "tcg"]
    then "export VMCHECK_ACCEL=${accel}"
    else throw "vmcheck makeTest ${name}: accel must be null, \"kvm\" or \"tcg\", got ${builtins.toJSON accel}";

  # `nix build .#checks.<system>.<test>.driver && ./result/bin/vmcheck-driver-<test>`
  driver = pkgs.writeShellScriptBin "vmcheck-driver-${name}" ''
    export PATH=${lib.makeBinPath qemus}''${PATH:+:$PATH}
    ${accelEnv}
    exec ${vmcheck}/bin/vmcheck repl --config ${configFile} "$@"
  '';

  test =
    pkgs.runCommand "vmcheck-test-${name}" {
      nativeBuildInputs = [vmcheck] ++ qemus;
      # Not "kvm": the driver probes KVM and falls back to TCG, so the test runs on any Linux
      # builder. Nix puts /dev/kvm into the sandbox whenever the builder has the kvm feature.
      inherit requiredSystemFeatures;
      passthru = {
        inherit driver driverConfiguration configFile;
        nodes = evaluatedNodes;
      };
      meta.timeout = globalTimeout + 600;
    } ''
      # The sandbox's HOME does not exist; the driver keeps its run state under TMPDIR.
      export HOME="$TMPDIR/home" VMCHECK_CACHE="$TMPDIR/cache"
      mkdir -p "$HOME" "$out"
      ${accelEnv}
      vmcheck run --config ${configFile} --out "$out" --junit "$out/junit.xml" ${lib.escapeShellArgs extraDriverArgs}
    '';
in
  assert lib.assertMsg (nodes != {}) "vmcheck makeTest ${name}: nodes is empty; name one NixOS module per machine of scenario ${scenario}"; test
