# The initiator role, on its own: the NVMe-oF/TCP host driver, nvme-cli, fio and lsblk
# (util-linux), and a host identity for `nvme connect` when it is given none, as the default
# images have one in /etc/nvme/hostnqn and /etc/nvme/hostid. Here it is derived from the host
# name: the same on every boot and every build, different between machines (two initiators of
# one test must not share it). Nothing of vmcheck's guest contract (../guest.nix): a node of
# nixpkgs' own test driver takes this as it is; ../initiator.nix is this role plus the contract.
{
  config,
  lib,
  pkgs,
  ...
}: let
  cfg = config.vmcheck.initiator;
  hash = builtins.hashString "sha256" "vmcheck host id ${config.networking.hostName}";
  hex = start: length: builtins.substring start length hash;
  # A UUID of version 4's shape, as nvme-cli's own hostid is.
  derivedHostid = "${hex 0 8}-${hex 8 4}-4${hex 13 3}-a${hex 17 3}-${hex 20 12}";
  # nvme-cli with this machine's identity. nixpkgs builds libnvme with meson's default
  # sysconfdir, inside its own store path (pkgs/by-name/me/meson/setup-hook.sh passes no
  # --sysconfdir), so its nvme-cli does not read /etc/nvme; libnvme reads LIBNVME_HOSTNQN and
  # LIBNVME_HOSTID before any file. The driver runs guest commands with an environment of its own
  # (guest-exec's env), so the variables are set by a wrapper around `nvme`, not by a unit.
  nvme = pkgs.runCommand "nvme-cli-with-host-identity" {nativeBuildInputs = [pkgs.makeWrapper];} ''
    mkdir -p $out/bin
    makeWrapper ${pkgs.nvme-cli}/bin/nvme $out/bin/nvme \
      --set-default LIBNVME_HOSTNQN ${lib.escapeShellArg cfg.hostnqn} \
      --set-default LIBNVME_HOSTID ${lib.escapeShellArg cfg.hostid}
  '';
in {
  options.vmcheck.initiator = {
    hostid = lib.mkOption {
      type = lib.types.str;
      default = derivedHostid;
      defaultText = "a UUID derived from networking.hostName";
      description = "The NVMe host ID nvme-cli uses when it is given none.";
    };
    hostnqn = lib.mkOption {
      type = lib.types.str;
      default = "nqn.2014-08.org.nvmexpress:uuid:${cfg.hostid}";
      defaultText = "nqn.2014-08.org.nvmexpress:uuid:<hostid>";
      description = "The NVMe host NQN nvme-cli uses when it is given none.";
    };
  };

  config = {
    boot.kernelModules = ["nvme_tcp"];

    environment.systemPackages = [nvme pkgs.fio pkgs.util-linux];

    # For tools that read the files, and an nvme-cli built with sysconfdir /etc.
    environment.etc = {
      "nvme/hostnqn".text = "${cfg.hostnqn}\n";
      "nvme/hostid".text = "${cfg.hostid}\n";
    };
  };
}
