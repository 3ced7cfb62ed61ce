# The initiator role (./roles/initiator.nix: nvme_tcp, nvme-cli with the machine's NVMe host
# identity, fio, lsblk) with vmcheck's guest contract (./guest.nix), for a machine vmcheck's
# driver starts.
{
  imports = [./guest.nix ./roles/initiator.nix];
}
