# Stand-in for nixpkgs' nixos/lib/testing/driver.nix: `driver`, the package whose
# bin/nixos-test-driver runs the test: nixpkgs' Python test driver wrapped with the nodes' start
# scripts, the test script, the global timeout and the vlans (through its environment) and
# extraDriverArgs, after type-checking the script (mypy, unless skipTypeCheck) and linting it
# (pyflakes, with the machine names as builtins, unless skipLint). The test script must be a
# string: a derivation attribute cannot be a function.
{
  config,
  hostPkgs,
  lib,
  ...
}: let
  inherit (lib) mkOption types;

  testDriver = hostPkgs.nixos-test-driver;

  # The driver of this test for the nodes run by `qemuPackage`, with `extraDriverArgs`;
  # interactive.nix builds the other one.
  driverFor = {
    qemuPackage,
    extraDriverArgs,
  }: let
    nodes = builtins.attrValues (config.nodesFor qemuPackage);
    vlans = map (m: m.virtualisation.vlans ++ lib.mapAttrsToList (_: v: v.vlan) m.virtualisation.interfaces) nodes;
    vms = map (m: m.system.build.vm) nodes;
    nodeHostNames = let
      names = map (c: c.system.name) nodes;
    in
      names ++ lib.optional (builtins.length names == 1 && !builtins.elem "machine" names) "machine";
    pythonizeName = name: let
      head = builtins.substring 0 1 name;
      tail = builtins.substring 1 (-1) name;
    in
      (
        if builtins.match "[A-z_]" head == null
        then "_"
        else head
      )
      + lib.concatMapStrings (c:
        if builtins.match "[A-z0-9_]" c == null
        then "_"
        else c) (lib.stringToCharacters tail);
  in
    hostPkgs.runCommand "nixos-test-driver-${config.name}" {
      nativeBuildInputs = [hostPkgs.makeWrapper] ++ lib.optionals (!config.skipTypeCheck) [hostPkgs.mypy];
      buildInputs = [testDriver];
      testScript = config.testScriptString;
      preferLocalBuild = true;
      passthru =
        config.passthru
        // {
          # The stand-in's record of what the driver is given.
          stubRecorded = {
            inherit vlans;
            startScripts = map (vm: "${vm}/bin/${vm.meta.mainProgram}") vms;
            pythonizedNames = map pythonizeName nodeHostNames;
            inherit (config) globalTimeout skipLint skipTypeCheck;
          };
        };
      meta = config.meta // {mainProgram = "nixos-test-driver";};
    } ''
      mkdir -p $out/bin

      vmStartScripts=($(for i in ${toString vms}; do echo $i/bin/run-*-vm; done))

      ${lib.optionalString (!config.skipTypeCheck) ''
        # (mypy on the test script, with the machines and vlans as typed names)
      ''}

      echo -n "$testScript" >> $out/test-script

      ln -s ${testDriver}/bin/nixos-test-driver $out/bin/nixos-test-driver

      ${lib.optionalString (!config.skipLint) ''
        # (pyflakes on the test script, the machine names ${lib.concatStringsSep "," (map pythonizeName nodeHostNames)} as builtins)
      ''}

      wrapProgram $out/bin/nixos-test-driver \
        --set startScripts "''${vmStartScripts[*]}" \
        --set testScript "$out/test-script" \
        --set globalTimeout "${toString config.globalTimeout}" \
        --set vlans '${toString vlans}' \
        ${lib.escapeShellArgs (lib.concatMap (arg: ["--add-flags" arg]) extraDriverArgs)}
    '';
in {
  options = {
    driver = mkOption {
      type = types.package;
      description = "Package containing a script that runs the test.";
    };
    hostPkgs = mkOption {
      type = types.raw;
      description = "Nixpkgs attrset used outside the nodes.";
    };
    qemu.package = mkOption {
      type = types.package;
      default = config.hostPkgs.qemu_test;
    };
    globalTimeout = mkOption {
      type = types.int;
      default = 60 * 60;
    };
    enableOCR = mkOption {
      type = types.bool;
      default = false;
    };
    extraPythonPackages = mkOption {
      type = types.functionTo (types.listOf types.package);
      default = _: [];
    };
    extraDriverArgs = mkOption {
      type = types.listOf types.str;
      default = [];
    };
    skipLint = mkOption {
      type = types.bool;
      default = false;
    };
    skipTypeCheck = mkOption {
      type = types.bool;
      default = false;
    };
    # The stand-in's own: the driver for other nodes and arguments (interactive.nix).
    driverFor = mkOption {
      type = types.raw;
      internal = true;
      default = driverFor;
    };
  };

  config = {
    _module.args.hostPkgs = config.hostPkgs;
    driver = driverFor {
      qemuPackage = config.qemu.package;
      inherit (config) extraDriverArgs;
    };
    passthru.driver = config.driver;
  };
}
