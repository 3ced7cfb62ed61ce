# Stand-in for nixpkgs' nixos/lib/testing/name.nix.
{lib, ...}: {
  options.name = lib.mkOption {
    description = "The name of the test.";
    type = lib.types.str;
  };
}
