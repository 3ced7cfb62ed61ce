# The target role, on its own: Linux nvmet with its TCP transport, configfs mounted, and the
# storage target daemon (`vmcheck-target`, gRPC on `listen`, port 10124) started at boot, with
# nvme-cli beside it. Nothing of vmcheck's guest contract (../guest.nix: the static addresses,
# the agent, the control network): a machine that vmcheck's driver does not start, such as a
# node of nixpkgs' own test driver (the flake's `<scenario>-nixos-test` checks), takes this as
# it is. ../target.nix is this role plus the contract, for machines vmcheck's driver starts.
#
# Reaching it: the driver (or a peer) connects to the daemon's port and to the nvmet ports the
# scenario chooses at run time, so whoever sets the machine up opens them or turns the firewall
# off (the guest contract and the nixos-test checks turn it off).
#
# The flake's nixosModules.target-role and nixosModules.target set vmcheck.target.package to its
# own package; this file on its own leaves it for the importer to set.
{
  config,
  lib,
  pkgs,
  ...
}: let
  cfg = config.vmcheck.target;
in {
  options.vmcheck.target = {
    package = lib.mkOption {
      type = lib.types.package;
      description = "The package whose bin/vmcheck-target runs on the target (the vmcheck crate).";
    };

    listen = lib.mkOption {
      type = lib.types.str;
      default = "0.0.0.0:10124";
      description = ''
        Address and port of the gRPC service. vmcheck's driver reaches port 10124: on the host,
        through a loopback port it forwards to guest port 10124 on the user-mode NIC; in guest
        mode, on the peer's address. Change both together.
      '';
    };

    extraArgs = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [];
      description = "More command-line arguments for vmcheck-target.";
    };
  };

  config = {
    boot.kernelModules = ["configfs" "nvmet" "nvmet_tcp"];

    # nvme-cli beside the daemon, for looking at the target by hand from the REPL.
    environment.systemPackages = [cfg.package pkgs.nvme-cli];

    systemd.services.vmcheck-target = {
      description = "vmcheck storage target (gRPC over Linux nvmet)";
      wantedBy = ["multi-user.target"];
      wants = ["sys-kernel-config.mount"];
      after = ["sys-kernel-config.mount" "systemd-modules-load.service" "network.target"];
      path = [pkgs.kmod pkgs.util-linux];
      # Belt and braces: the modules and the configfs mount the daemon works through are there
      # before it starts, whichever unit would have provided them.
      preStart = ''
        modprobe -a configfs nvmet nvmet_tcp
        mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config
      '';
      serviceConfig = {
        ExecStart = lib.escapeShellArgs (["${cfg.package}/bin/vmcheck-target" "--listen" cfg.listen] ++ cfg.extraArgs);
        Restart = "on-failure";
        RestartSec = 1;
      };
    };
  };
}
