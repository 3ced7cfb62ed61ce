# Stand-in for nixpkgs' nixos/lib/testing/testScript.nix: the test script is Python, a string
# or a function of { nodes, ... } to one (called with the evaluated nodes).
{
  config,
  lib,
  ...
}: let
  inherit (lib) mkOption types;
in {
  options = {
    testScript = mkOption {
      type = types.either types.str (types.functionTo types.str);
      apply = v:
        if lib.isFunction v
        then args: v (builtins.intersectAttrs (lib.functionArgs v) args)
        else v;
      description = "A series of Python declarations and statements that perform the test.";
    };
    testScriptString = mkOption {
      type = types.str;
      readOnly = true;
      internal = true;
    };
  };
  config.testScriptString =
    if lib.isFunction config.testScript
    then config.testScript {nodes = config.nodesCompat;}
    else config.testScript;
}
