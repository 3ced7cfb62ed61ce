# What the scenario list says about each scenario, read in one place. Pure: builtins only.
#
#   import ./listing.nix <nix/scenarios.json, parsed>
#
# returns
#
#   scenarios        the listing's scenarios (name -> { description; nodes; ... })
#   known NAME       whether NAME is a scenario of the list
#   runsInGuest NAME whether the scenario runs inside a machine, as the test's driver in guest
#                    mode (`vmcheck run --local ...`): it needs nothing of the host (QMP, hot-plug,
#                    the switch's link faults, the balloon, migration, power)
#   migrates NAME    whether the scenario live-migrates a machine or saves and restores it
#   leftOutOfNixChecks  name -> why, for the scenarios the flake's checks leave out
#   nixosMemoryMiB NODE the memory of a machine of the list as a NixOS VM: at least 1024 MiB (a
#                    NixOS machine runs systemd and a tmpfs root where the default images run an
#                    initramfs)
#
# `runs_in_guest` is what `vmcheck list --json` prints for each scenario (with `host_only`, why
# not, in words). Whether a scenario migrates is not printed in a form to match, so the three
# that do are named here; a `host_needs` list holding "migration", if the driver prints one, is
# read instead.
listing: let
  scenarios =
    if builtins.isAttrs listing && listing ? scenarios
    then listing.scenarios
    else throw "nix/scenarios.json has no `scenarios`; rewrite it with: cargo run --quiet --bin vmcheck -- list --json > nix/scenarios.json";

  entry = name: scenarios.${name} or (throw "nix/scenarios.json has no scenario ${builtins.toJSON name}");

  migratingBeforeTheField = ["balloon_migrate" "lifecycle_migrate_fio" "lifecycle_save_restore"];

  runsInGuest = name: (entry name).runs_in_guest or (throw "nix/scenarios.json: scenario ${name} has no runs_in_guest; rewrite it with: cargo run --quiet --bin vmcheck -- list --json > nix/scenarios.json");
  migrates = name: let
    e = entry name;
  in
    if e ? host_needs
    then builtins.elem "migration" e.host_needs
    else builtins.elem name migratingBeforeTheField;
in {
  inherit scenarios runsInGuest migrates;
  nixosMemoryMiB = node:
    if node.memory_mib > 1024
    then node.memory_mib
    else 1024;
  known = name: scenarios ? ${name};

  # Every NixOS VM of nixpkgs' qemu-vm.nix mounts 9p shares (the host's store, xchg, shared),
  # and QEMU refuses to migrate or save a machine while a 9p export is mounted; the guest module
  # asserts it (vmcheck.migrates). Taking the mounts away (the store from an image,
  # virtualisation.useNixStoreImage, and no shared directories) has not been tried with nixpkgs,
  # so these scenarios run on the default images only.
  leftOutOfNixChecks = builtins.listToAttrs (map (name: {
    inherit name;
    value = "it migrates a machine (live, or saved to a file and restored), and QEMU refuses to migrate a machine while a 9p export is mounted, which every VM of nixpkgs' qemu-vm.nix has (the host's store, xchg, shared)";
  }) (builtins.filter migrates (builtins.attrNames scenarios)));
}
