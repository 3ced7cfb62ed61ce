# Stand-in for nixpkgs' nixos/lib/testing/nodes.nix: `nodes` (one NixOS module per machine),
# `defaults` (a module for every node), `extraBaseModules` (network.nix's), and `node.pkgs`
# (pkgs.testers.runNixOSTest sets it; the nodes' nixpkgs.* options are then read-only, as
# there). Each node is a NixOS system of nixos/lib/eval-config.nix with the test's base modules
# (nixos-test-base.nix: qemu-vm.nix and the test instrumentation), the test's QEMU, the host's
# package set, `defaults` and its own module, and the module arguments `name` (the node's name)
# and `nodes` (every node's configuration), as there.
#
# What differs: in nixpkgs `config.nodes.<name>` is the node's evaluated configuration (the option
# is typed with the NixOS system as a submodule); here `nodes` keeps the modules and `nodesCompat`
# (nixpkgs' name for what tests and `passthru.nodes` see) holds the configurations.
{
  config,
  hostPkgs,
  lib,
  ...
}: let
  inherit (lib) mkOption types;

  evalNode = qemuPackage: name: module:
    if config.node.pkgs == null || !config.node.pkgsReadOnly
    then throw "the nixpkgs stand-in evaluates nodes with a read-only node.pkgs only (what pkgs.testers.runNixOSTest sets)"
    else
      (import ../eval-config.nix {
        system = null;
        inherit lib;
        specialArgs = config.node.specialArgs // {inherit name;};
        modules = [
          ./nixos-test-base.nix
          config.extraBaseModules
          {
            _file = toString ./nodes.nix;
            _module.args.nodes = config.nodesCompat;
            virtualisation.qemu.package = qemuPackage;
            virtualisation.host.pkgs = hostPkgs;
          }
          {nixpkgs.pkgs = config.node.pkgs;}
          ../../modules/misc/nixpkgs/read-only.nix
          config.defaults
          module
        ];
      })
      .config;
  nodesFor = qemuPackage: builtins.mapAttrs (name: module: let c = evalNode qemuPackage name module; in c // {config = c;}) config.nodes;
in {
  options = {
    nodes = mkOption {
      type = types.lazyAttrsOf types.deferredModule;
      default = {};
      description = "An attribute set of NixOS configuration modules representing QEMU VMs.";
    };
    defaults = mkOption {
      type = types.deferredModule;
      default = {};
      description = "NixOS configuration that is applied to all nodes.";
    };
    extraBaseModules = mkOption {
      type = types.deferredModule;
      default = {};
      description = "NixOS configuration applied to all nodes, which specialisations cannot undo.";
    };
    node.pkgs = mkOption {
      type = types.nullOr types.pkgs;
      default = null;
      description = "The Nixpkgs to use for the nodes.";
    };
    node.pkgsReadOnly = mkOption {
      type = types.bool;
      default = config.node.pkgs != null;
      description = "Whether to make the nodes' `nixpkgs.*` options read-only.";
    };
    node.specialArgs = mkOption {
      type = types.lazyAttrsOf types.raw;
      default = {};
      description = "Module arguments available in the nodes' `imports`.";
    };
    nodesCompat = mkOption {
      type = types.raw;
      internal = true;
      default = nodesFor config.qemu.package;
    };
    # The stand-in's own: the nodes run by another QEMU (driverInteractive's).
    nodesFor = mkOption {
      type = types.raw;
      internal = true;
      default = nodesFor;
    };
  };

  config = {
    _module.args.nodes = config.nodesCompat;
    passthru.nodes = config.nodesCompat;
  };
}
