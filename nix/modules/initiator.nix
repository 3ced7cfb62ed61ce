# The initiator role: the NVMe-oF/TCP host driver, nvme-cli, fio and lsblk (util-linux).
{pkgs, ...}: {
  imports = [./guest.nix];

  boot.kernelModules = ["nvme_tcp"];

  environment.systemPackages = [pkgs.nvme-cli pkgs.fio pkgs.util-linux];
}
