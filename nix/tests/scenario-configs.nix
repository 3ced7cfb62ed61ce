# For every scenario of nix/scenarios.nix, the driver configuration that the flake's check for it
# writes, with a stand-in for each VM's start script (building the VMs needs nixpkgs). Checks
# the scenario table on the way: known roles, and whatever nix/driver-config.nix checks.
let
  scenarios = import ../scenarios.nix;
  driverConfig = import ../driver-config.nix;
  roles = ["target" "initiator"];

  machine = scenario: name: spec:
    if builtins.elem (spec.role or null) roles
    then {
      startScript = "/nix/store/00000000000000000000000000000000-nixos-vm/bin/run-${name}-vm";
      inherit (spec) address;
    }
    else throw "nix/scenarios.nix: ${scenario}.machines.${name}.role must be one of ${builtins.toJSON roles}";
in
  builtins.mapAttrs (scenario: entry: let
    spec = {globalTimeout = 3600;} // entry;
  in
    driverConfig {
      inherit scenario;
      inherit (spec) globalTimeout;
      name = scenario;
      machines = builtins.mapAttrs (machine scenario) spec.machines;
    })
  scenarios
