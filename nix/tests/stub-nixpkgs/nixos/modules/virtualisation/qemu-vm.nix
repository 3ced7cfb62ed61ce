# Stand-in for nixpkgs' nixos/modules/virtualisation/qemu-vm.nix: its options that the project's
# modules set or read (types and defaults as there), the definitions of its that meet the
# project's (services.qemuGuest.enable from guestAgent.enable at normal priority; predictable
# interface names off), and system.build.vm with bin/run-<system.name>-vm, whose start script
# has the shape of nixpkgs' own (direct kernel boot, $QEMU_OPTS, $QEMU_NET_OPTS,
# $QEMU_KERNEL_PARAMS), recorded as `startScript` on the vm derivation.
{
  config,
  lib,
  pkgs,
  ...
}: let
  inherit (lib) mkOption types;
  cfg = config.virtualisation;
  positive = default:
    mkOption {
      type = types.ints.positive;
      inherit default;
    };
  sanitized = builtins.replaceStrings ["-"] ["_"] config.system.name;
  qemuBinary =
    if pkgs.stdenv.hostPlatform.isx86
    then "${cfg.qemu.package}/bin/qemu-system-x86_64 -machine type=q35,accel=kvm:tcg -cpu max"
    else "${cfg.qemu.package}/bin/qemu-system-aarch64 -machine virt,gic-version=max,accel=kvm:tcg -cpu max";
  serial =
    if pkgs.stdenv.hostPlatform.isx86
    then "ttyS0"
    else "ttyAMA0";
  toplevel = config.system.build.toplevel;
  startScript = ''
    #! ${pkgs.runtimeShell}
    set -e
    if [ -z "$TMPDIR" ] || [ -z "$USE_TMPDIR" ]; then TMPDIR=$(mktemp -d nix-vm.XXXXXXXXXX --tmpdir); fi
    cd "$TMPDIR"
    exec ${qemuBinary} \
        -name ${config.system.name} \
        -m ${toString cfg.memorySize} \
        -smp ${toString cfg.cores} \
        -net nic,netdev=user.0,model=virtio -netdev user,id=user.0,"$QEMU_NET_OPTS" \
        -kernel ''${NIXPKGS_QEMU_KERNEL_${sanitized}:-${toplevel}/kernel} \
        -append "init=${toplevel}/init console=${serial},115200n8 $QEMU_KERNEL_PARAMS" \
        ${lib.concatStringsSep " \\\n    " cfg.qemu.options} \
        ${lib.optionalString (!cfg.graphics) "-nographic"} \
        $QEMU_OPTS \
        "$@"
  '';
in {
  options.virtualisation = {
    memorySize = positive 1024;
    cores = positive 1;
    diskImage = mkOption {
      type = types.nullOr types.str;
      default = "./${config.system.name}.qcow2";
    };
    graphics = mkOption {
      type = types.bool;
      default = true;
    };
    vlans = mkOption {
      type = types.listOf types.ints.unsigned;
      default = [1];
    };
    qemu = {
      package = mkOption {
        type = types.package;
        default = pkgs.qemu_kvm;
      };
      options = mkOption {
        type = types.listOf types.str;
        default = [];
      };
      guestAgent.enable = mkOption {
        type = types.bool;
        default = true;
      };
    };
  };

  config = {
    services.qemuGuest.enable = cfg.qemu.guestAgent.enable;
    services.timesyncd.enable = false;
    networking.usePredictableInterfaceNames = false;
    system.build.vm =
      pkgs.runCommand "nixos-vm" {
        passthru = {inherit startScript;};
        preferLocalBuild = true;
      } ''
        mkdir -p $out/bin
        ln -s ${pkgs.writeScript "run-nixos-vm" startScript} $out/bin/run-${config.system.name}-vm
      '';
  };
}
