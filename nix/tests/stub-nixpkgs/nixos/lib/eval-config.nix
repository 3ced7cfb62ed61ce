# Stand-in for nixpkgs' nixos/lib/eval-config.nix: the same arguments (an unknown one is an
# error, as there), `system` setting `nixpkgs.system` unless it is null, `pkgs` setting
# `nixpkgs.pkgs`, and `modulesPath` for the modules. The base modules are ../modules/base.nix
# instead of module-list.nix. The result is the evaluation ({ config; options; pkgs; }) plus
# `stubGiven`, the arguments exactly as given, for the checks to read.
evalConfigArgs @ {
  system ? builtins.currentSystem,
  pkgs ? null,
  baseModules ? [../modules/base.nix],
  extraArgs ? {},
  specialArgs ? {},
  modules,
  modulesLocation ? null,
  check ? true,
  prefix ? [],
  lib ? import ../../lib.nix,
  extraModules ? [],
}: let
  # Deprecated in nixpkgs and not modelled here: refused, so a use of them shows.
  unmodelled =
    lib.optional (extraArgs != {}) "extraArgs"
    ++ lib.optional (!check) "check = false"
    ++ lib.optional (modulesLocation != null) "modulesLocation";
  pkgsModule = {
    _file = toString ./eval-config.nix;
    config = lib.mkMerge (
      lib.optional (system != null) {nixpkgs.system = lib.mkDefault system;}
      ++ lib.optional (pkgs != null) {nixpkgs.pkgs = pkgs;}
    );
  };
  evaluated = lib.evalModules {
    inherit prefix;
    specialArgs = {modulesPath = toString ../modules;} // specialArgs;
    modules = baseModules ++ extraModules ++ [pkgsModule] ++ modules;
  };
in
  if unmodelled != []
  then throw "the eval-config.nix stand-in does not model ${builtins.toJSON unmodelled}"
  else
    evaluated
    // {
      inherit (evaluated.config._module.args) pkgs;
      inherit lib;
      stubGiven = evalConfigArgs;
    }
