# A stand-in for the nixpkgs flake input, for nix/tests/flake-eval.nix (and, as the flake
# ./flake.nix, for `nix eval --override-input nixpkgs`): what flake.nix takes from `nixpkgs`
# (legacyPackages.<system> with testers.runNixOSTest and its NixOS test framework,
# nixos/lib/testing, and through `pkgs.path` NixOS's eval-config.nix and modules), written from
# builtins, so that the flake's real outputs function, nix/make-test.nix, nix/nixos-tests.nix
# and nix/modules are evaluated in CI where nixpkgs cannot be fetched. Packages are recorded,
# not built: each is an attribute set shaped like a derivation (type, name, outPath) that keeps
# what it was given (the script of runCommand, the text of writeText, ...), for the checks to
# read. The NixOS side declares the options the project's modules set and read, with the types
# nixpkgs gives them (see nixos/), so a misspelt option, a wrong type or a conflicting
# definition fails here as it would against nixpkgs.
{
  lib = import ./lib.nix;
  legacyPackages = builtins.listToAttrs (map (system: {
    name = system;
    value = import ./pkgs.nix {inherit system;};
  }) ["x86_64-linux" "aarch64-linux"]);
  outPath = toString ./.;
}
