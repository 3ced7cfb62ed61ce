# Stand-in for nixpkgs' nixos/lib/testing/nixos-test-base.nix: every node runs qemu-vm.nix and
# the test instrumentation.
{
  imports = [
    ../../modules/virtualisation/qemu-vm.nix
    ../../modules/testing/test-instrumentation.nix
  ];
}
