# Stand-in for nixpkgs' nixos/lib/testing/meta.nix: the test derivation's meta.
{lib, ...}: let
  inherit (lib) mkOption types;
in {
  options.meta = mkOption {
    default = {};
    type = types.submodule {
      options = {
        maintainers = mkOption {
          type = types.listOf types.raw;
          default = [];
        };
        timeout = mkOption {
          type = types.nullOr types.int;
          default = 3600;
        };
        broken = mkOption {
          type = types.bool;
          default = false;
        };
        platforms = mkOption {
          type = types.listOf types.raw;
          default = lib.platforms.linux;
        };
      };
    };
  };
}
