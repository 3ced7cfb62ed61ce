# The shape of flake.nix's outputs, evaluated without nixpkgs (which is not needed for it: the
# systems, the check names and the module names are plain builtins). Anything that would need
# nixpkgs is a stand-in that throws if it is ever forced, so a mistake in the wiring shows here.
# Fails (an assertion) when the shape is not what the README promises.
let
  flake = import ../../flake.nix;
  nixpkgs = throw "flake-shape.nix: nixpkgs was forced; the shape of the outputs must not need it";
  outputs = flake.outputs {
    self = outputs // {outPath = toString ../..;};
    inherit nixpkgs;
  };
  names = builtins.attrNames;
  perSystem = builtins.mapAttrs (_: names);
  systems = ["aarch64-linux" "x86_64-linux"];
  scenarios = names (import ../scenarios.nix);

  shape = {
    nixpkgs = flake.inputs.nixpkgs.url;
    packages = perSystem outputs.packages;
    checks = perSystem outputs.checks;
    devShells = perSystem outputs.devShells;
    formatter = names outputs.formatter;
    nixosModules = builtins.mapAttrs (_: builtins.typeOf) outputs.nixosModules;
    lib = names outputs.lib;
  };

  expect = what: actual: wanted:
    if actual == wanted
    then true
    else throw "flake-shape.nix: ${what} is ${builtins.toJSON actual}, expected ${builtins.toJSON wanted}";
in
  assert expect "the systems of packages" (names outputs.packages) systems;
  assert expect "the systems of checks" (names outputs.checks) systems;
  assert expect "the systems of devShells" (names outputs.devShells) systems;
  assert expect "the systems of formatter" shape.formatter systems;
  assert builtins.all (s: expect "packages.${s}" shape.packages.${s} ["default" "vmcheck" "vmcheck-alejandra"]) systems;
  assert builtins.all (s: expect "checks.${s}" shape.checks.${s} scenarios) systems;
  assert builtins.all (s: expect "devShells.${s}" shape.devShells.${s} ["default"]) systems;
  assert expect "nixosModules" shape.nixosModules {
    guest = "set";
    initiator = "set";
    target = "lambda";
  };
  assert expect "lib" shape.lib ["driverConfig" "makeTest"];
  assert expect "the nixpkgs input" (builtins.match "github:NixOS/nixpkgs/nixos-[0-9]{2}\\.[0-9]{2}" shape.nixpkgs) []; shape
