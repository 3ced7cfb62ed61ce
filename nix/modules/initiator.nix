# The initiator role: the NVMe-oF/TCP host driver, nvme-cli, fio and lsblk (util-linux), and
# the host identity nvme-cli reads when `nvme connect` is given none (/etc/nvme/hostnqn and
# /etc/nvme/hostid), as the default images have it. Here the identity is derived from the host
# name, so it is the same on every boot and every build, and differs between machines.
{
  config,
  lib,
  pkgs,
  ...
}: let
  hash = builtins.hashString "sha256" "vmcheck host id ${config.networking.hostName}";
  hex = start: length: builtins.substring start length hash;
  # A UUID of version 4's shape (nvme-cli's own hostid is a random one).
  hostid = "${hex 0 8}-${hex 8 4}-4${hex 13 3}-a${hex 17 3}-${hex 20 12}";
in {
  imports = [./guest.nix];

  boot.kernelModules = ["nvme_tcp"];

  environment.systemPackages = [pkgs.nvme-cli pkgs.fio pkgs.util-linux];

  environment.etc = {
    "nvme/hostnqn".text = lib.mkDefault "nqn.2014-08.org.nvmexpress:uuid:${hostid}\n";
    "nvme/hostid".text = lib.mkDefault "${hostid}\n";
  };
}
