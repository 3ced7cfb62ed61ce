# The target role: Linux nvmet with its TCP transport, configfs mounted, and the storage target
# daemon (`vmcheck-target`, gRPC on port 10124) started at boot. The driver reaches that port
# through the loopback forward it puts in $QEMU_NET_OPTS (user-mode NIC, guest port 10124).
#
# The flake's nixosModules.target sets vmcheck.target.package to its own package; this file on
# its own leaves it for the importer to set.
{
  config,
  lib,
  pkgs,
  ...
}: let
  cfg = config.vmcheck.target;
in {
  imports = [./guest.nix];

  options.vmcheck.target = {
    package = lib.mkOption {
      type = lib.types.package;
      description = "The package whose bin/vmcheck-target runs on the target (the vmcheck crate).";
    };

    listen = lib.mkOption {
      type = lib.types.str;
      default = "0.0.0.0:10124";
      description = ''
        Address and port of the gRPC service. The driver forwards a loopback port of the host to
        guest port 10124 on the user-mode NIC; change both together.
      '';
    };

    extraArgs = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [];
      description = "More command-line arguments for vmcheck-target.";
    };
  };

  config = {
    # The driver forwards a loopback port to this machine's gRPC port over qemu-vm's NIC.
    vmcheck.controlNetwork = true;

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
