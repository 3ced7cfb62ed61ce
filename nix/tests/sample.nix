# A sample test definition through the pure driver-configuration function, as makeTest calls it
# (with stand-ins for the store paths of the NixOS VMs, which need nixpkgs to build).
# tests/nix_config.rs feeds the JSON of this to the driver's parser; nix/check.sh writes it out.
import ../driver-config.nix {
  name = "sample_fio";
  scenario = "fio_nvme_basic";
  globalTimeout = 900;
  machines = {
    target = {
      startScript = "/nix/store/00000000000000000000000000000000-nixos-vm/bin/run-target-vm";
      address = "192.0.2.1";
    };
    initiator = {
      startScript = "/nix/store/11111111111111111111111111111111-nixos-vm/bin/run-initiator-vm";
      address = null;
    };
  };
}
