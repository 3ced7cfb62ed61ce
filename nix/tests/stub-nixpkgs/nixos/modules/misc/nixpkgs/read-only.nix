# Stand-in for nixpkgs' nixos/modules/misc/nixpkgs/read-only.nix: `nixpkgs.pkgs` is the only
# nixpkgs option (no nixpkgs.system, no nixpkgs.overlays to set), and it is the `pkgs` argument.
{
  lib,
  config,
  ...
}: {
  options.nixpkgs.pkgs = lib.mkOption {
    type = lib.types.pkgs;
    description = "The pkgs module argument.";
  };
  config._module.args.pkgs = config.nixpkgs.pkgs;
}
