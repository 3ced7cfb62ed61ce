# Stand-in for nixpkgs' nixos/lib/testing/default.nix: a NixOS test is a module of its own
# module system (name, nodes, defaults, testScript, globalTimeout, ...), evaluated with the
# framework's modules; `runTest` gives its `test`, the derivation that runs it, whose passthru
# holds `driver`, `driverInteractive`, `nodes` and `config`. The modules here mirror nixpkgs'
# files of the same names, with the options a test sets or reads (types and defaults as there):
# an option that does not exist, a wrong type, a testScript that is not a string (or a function
# to one), fail as they would.
{lib}: let
  testModules = [
    ./driver.nix
    ./interactive.nix
    ./meta.nix
    ./name.nix
    ./network.nix
    ./nodes.nix
    ./run.nix
    ./testScript.nix
  ];
  evalTest = module:
    lib.evalModules {
      modules = testModules ++ [module];
    };
  runTest = module:
    (evalTest ({config, ...}: {
      imports = [module];
      result = config.test;
    }))
    .config
    .result;
in {
  inherit evalTest runTest testModules;
}
