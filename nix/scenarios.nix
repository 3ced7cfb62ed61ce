# The scenarios the flake turns into checks (`checks.<system>.<scenario>`), with the machines each
# one boots. Pure data, no nixpkgs: nix/check.sh and tests/nix_config.rs evaluate it as it is.
#
# The scenario code lives in the driver (src/scenarios); the machine names here must be the node
# names that scenario declares, or the driver refuses the configuration. Each machine gets the
# NixOS module of its role (nixosModules.target / nixosModules.initiator) and its address on the
# test network; the address is written into the driver configuration as well, so the guest and
# the driver always agree on it.
#
# To add a scenario to `nix flake check`: add an entry here with the same name as in the driver.
{
  fio_nvme_basic = {
    description = "fio with verify=crc32 over NVMe-oF/TCP against a target's 512 MiB disk";
    globalTimeout = 1800;
    machines = {
      target = {
        role = "target";
        address = "192.0.2.1";
      };
      initiator = {
        role = "initiator";
        address = "192.0.2.2";
      };
    };
  };
}
