# The target role (./roles/target.nix: nvmet, configfs, the vmcheck-target daemon on port 10124,
# nvme-cli) with vmcheck's guest contract (./guest.nix), for a machine vmcheck's driver starts:
# the driver reaches the daemon through the loopback forward it puts in $QEMU_NET_OPTS
# (qemu-vm's user-mode NIC, guest port 10124), so this machine takes the control network.
{
  imports = [./guest.nix ./roles/target.nix];

  # The driver forwards a loopback port to this machine's gRPC port over qemu-vm's NIC.
  vmcheck.controlNetwork = true;
}
