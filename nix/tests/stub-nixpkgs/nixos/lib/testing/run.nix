# Stand-in for nixpkgs' nixos/lib/testing/run.nix: `test`, the derivation whose build runs the
# driver (`nixos-test-driver -o $out`), on builders with the nixos-test and kvm features.
{
  config,
  hostPkgs,
  lib,
  ...
}: let
  inherit (lib) types mkOption;
in {
  options = {
    passthru = mkOption {
      type = types.lazyAttrsOf types.raw;
      description = "Attributes to add to the returned derivations.";
    };
    test = mkOption {
      type = types.package;
      description = "Derivation that runs the test as its build.";
    };
    result = mkOption {
      type = types.raw;
      internal = true;
    };
  };
  config = {
    test = hostPkgs.stdenv.mkDerivation {
      name = "vm-test-run-${config.name}";
      requiredSystemFeatures =
        ["nixos-test"]
        ++ lib.optionals hostPkgs.stdenv.hostPlatform.isLinux ["kvm"];
      buildCommand = ''
        mkdir -p $out

        # effectively mute the XMLLogger
        export LOGFILE=/dev/null

        ${config.driver}/bin/nixos-test-driver -o $out
      '';
      inherit (config) passthru meta;
    };
    passthru.config = config;
  };
}
