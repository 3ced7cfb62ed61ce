# The stand-in for nixpkgs as a flake, for the nix commands that take it as the input nixpkgs
# (`--override-input nixpkgs path:nix/tests/stub-nixpkgs`, nix/check.sh): the same outputs as
# default.nix; Nix gives the input its own outPath.
{
  description = "A stand-in for nixpkgs (lib, legacyPackages, NixOS's eval-config and modules) for vmcheck's CI";

  outputs = _: builtins.removeAttrs (import ./default.nix) ["outPath"];
}
