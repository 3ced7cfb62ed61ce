# Stand-in for nixpkgs' nixos/lib/default.nix: the NixOS test framework's entry points
# (nixos/lib/testing/default.nix), which pkgs.testers.runNixOSTest calls.
{lib ? import ../../lib.nix}: import ./testing {inherit lib;}
