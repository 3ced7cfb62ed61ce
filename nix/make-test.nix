# makeTest: a vmcheck scenario against NixOS machines, run in the Nix build sandbox.
#
# Modelled on nixpkgs' NixOS test framework (nixos/lib/testing/): every node is a NixOS
# configuration built as a QEMU VM by qemu-vm.nix (`system.build.vm`); a JSON driver
# configuration names their start scripts (the role of nixpkgs' driverConfiguration.json); the
# test is a derivation whose build runs the driver. As in nixpkgs, `.driver` runs the test
# outside the sandbox (with -I or --interactive it opens the REPL instead) and
# `.driverInteractive` opens the interactive driver (the REPL).
# What differs: the test script is a scenario compiled into the driver, chosen by name, and the
# driver, not the NixOS modules, adds the QEMU plumbing (QMP, serial console, guest agent port,
# test-network NICs, NVMe disks) through $QEMU_OPTS. The driver is vmcheck's own package (its
# scenarios: src/scenarios) or, with `driver`, any program whose `main` is vmcheck's harness
# (`vmcheck::harness::main(suite)`: a user's own scenarios; lib.buildDriver builds one).
#
# The first argument comes from the flake (see flake.nix, lib.makeTest); the second is the test:
#
#   makeTest {
#     name = "my_target_fio";          # derivation and JUnit name
#     scenario = "fio_nvme_basic";     # a scenario the driver knows (`vmcheck list`); default: name
#     nodes = {                        # one NixOS module per machine the scenario declares
#       target = { imports = [ vmcheck.nixosModules.target ]; vmcheck.address = "192.0.2.1"; };
#       initiator = { imports = [ vmcheck.nixosModules.initiator ]; };
#     };
#     defaults = { };                  # a NixOS module applied to every node
#     globalTimeout = 3600;            # seconds, for the whole run (with KVM)
#     tcgTimeoutFactor = 3;            # without /dev/kvm in the sandbox: every timeout times this
#     accel = null;                    # null: the driver probes KVM; "kvm" or "tcg" to force one
#     requiredSystemFeatures = [ "nixos-test" ];   # add "kvm" to keep the test off TCG builders
#     keepArtifacts = false;           # true: logs and junit.xml into $out/artifacts (see below)
#     extraDriverArgs = [ ];           # more arguments for `vmcheck run`
#     driver = vmcheck;                # the program that runs the scenario (below)
#   }
#
# `driver` is a package whose meta.mainProgram speaks the harness's command line:
# `<main program> run --config FILE --global-timeout S --out DIR --junit FILE` (the test and
# `.driver`) and `<main program> repl --config FILE` (`.driverInteractive`, and `.driver -I`).
# Default: vmcheck's own package, whose scenarios are vmcheck's.
#
# Every node gets nixosModules.guest (the guest contract), `networking.hostName = <node name>`
# and, unless it sets one, `vmcheck.address = 192.0.2.<n>` (n = its place in the sorted node
# names, from 1). The address each node ends up with is written into the driver configuration.
# When the scenario is one of vmcheck's that migrates a machine (the scenario list), every node
# gets `vmcheck.migrates = true`, and the guest module refuses its 9p mounts.
#
# $out holds only what is the same on every passing run (a `passed` file), as nixpkgs' tests
# keep timings and logs out of $out, so `nix build --rebuild` can compare two runs. The run's
# logs are the build log (`nix log`); its artifacts (console logs, transcript, junit.xml) are in
# the build directory's vmcheck-out, which `--keep-failed` keeps when the test fails. With
# `keepArtifacts = true` they go into $out/artifacts instead, and $out differs on every run.
{
  pkgs,
  vmcheck,
  guestModule,
  # nix/listing.nix applied to nix/scenarios.json: what vmcheck's own scenarios need.
  scenarioList,
}: {
  name,
  nodes,
  scenario ? name,
  defaults ? {},
  globalTimeout ? 3600,
  tcgTimeoutFactor ? 3,
  accel ? null,
  requiredSystemFeatures ? ["nixos-test"],
  keepArtifacts ? false,
  extraDriverArgs ? [],
  driver ? vmcheck,
}: let
  inherit (pkgs) lib;
  fail = msg: throw "vmcheck makeTest ${name}: ${msg}";

  # The driver runs x86_64 machines (QEMU's pc machine, ttyS0, an x86 boot sector for the KVM
  # probe), so the NixOS machines and the host must be x86_64-linux.
  system = pkgs.stdenv.hostPlatform.system;
  checkedPkgs =
    if system == "x86_64-linux"
    then pkgs
    else fail "vmcheck runs x86_64 machines on x86_64-linux only; this package set is for ${system}";

  evalConfig = import (checkedPkgs.path + "/nixos/lib/eval-config.nix");

  # 1, 2, ... in the order of the sorted node names, as nixpkgs' testing/network.nix numbers nodes.
  nodeNumbers = builtins.listToAttrs (lib.imap1 (number: nodeName: {
    name = nodeName;
    value = number;
  }) (builtins.attrNames nodes));

  # One NixOS system per node, evaluated with the caller's package set, read-only, as nixpkgs'
  # tests do with `node.pkgs` (testing/nodes.nix): overlays go into `pkgs`, not into the nodes.
  # `system = null`: the read-only module has no nixpkgs.system for eval-config to set.
  evalNode = nodeName: module:
    evalConfig {
      system = null;
      modules = [
        (checkedPkgs.path + "/nixos/modules/misc/nixpkgs/read-only.nix")
        {nixpkgs.pkgs = checkedPkgs;}
        guestModule
        {
          networking.hostName = lib.mkDefault nodeName;
          vmcheck.address = lib.mkDefault "192.0.2.${toString nodeNumbers.${nodeName}}";
          vmcheck.migrates = lib.mkDefault migrates;
        }
        defaults
        module
      ];
    };

  evaluatedNodes = builtins.mapAttrs evalNode nodes;

  # Whether the scenario migrates its machines, for the guest module's assertion that no 9p
  # export is mounted then: known for vmcheck's own scenarios run by vmcheck's own driver.
  migrates = driver.outPath == vmcheck.outPath && scenarioList.known scenario && scenarioList.migrates scenario;

  startScript = node: "${node.config.system.build.vm}/bin/run-${node.config.system.name}-vm";

  driverConfiguration = import ./driver-config.nix {
    inherit name scenario globalTimeout;
    machines =
      builtins.mapAttrs (_: node: {
        startScript = startScript node;
        inherit (node.config.vmcheck) address;
      })
      evaluatedNodes;
  };

  configFile = pkgs.writeText "vmcheck-${name}.json" (builtins.toJSON driverConfiguration);

  # The QEMU the machines run, on PATH for the driver's KVM probe.
  qemus = lib.unique (lib.mapAttrsToList (_: node: node.config.virtualisation.qemu.package) evaluatedNodes);

  accelEnv =
    if accel == null
    then ""
    else if builtins.elem accel ["kvm" "tcg"]
    then "export VMCHECK_ACCEL=${accel}"
    else fail "accel must be null, \"kvm\" or \"tcg\", got ${builtins.toJSON accel}";

  factor =
    if builtins.isInt tcgTimeoutFactor && tcgTimeoutFactor >= 1
    then tcgTimeoutFactor
    else fail "tcgTimeoutFactor must be a whole number, 1 or more, got ${builtins.toJSON tcgTimeoutFactor}";

  # The driver's program: its meta.mainProgram, a plain file name in its bin/ (checked, as it is
  # written into shell commands unquoted, like the default `vmcheck`).
  mainProgram =
    if !(lib.isDerivation driver)
    then fail "driver must be a package (a derivation), got ${builtins.typeOf driver}"
    else if !(driver ? meta.mainProgram)
    then fail "driver ${driver.name} has no meta.mainProgram; set it to the name of its binary that calls vmcheck::harness::main (lib.buildDriver does)"
    else if builtins.match "[A-Za-z0-9][A-Za-z0-9._+-]*" driver.meta.mainProgram == null
    then fail "driver ${driver.name}: meta.mainProgram must be a file name, got ${builtins.toJSON driver.meta.mainProgram}"
    else driver.meta.mainProgram;

  # `driver`: the test itself, run outside the sandbox (`run` takes --out DIR, --junit FILE,
  # --keep-vm-state), or, given -I or --interactive anywhere among its arguments as nixpkgs'
  # `.driver` is, the REPL (`repl`, the other arguments passed on); `driverInteractive`: the
  # REPL on the same machines. The same program name in both, as nixpkgs' nixos-test-driver.
  driverEnv = ''
    export PATH=${lib.makeBinPath qemus}''${PATH:+:$PATH}
    ${accelEnv}
  '';
  driverRun = pkgs.writeShellScriptBin "vmcheck-driver" ''
    ${driverEnv}
    command=run
    args=()
    for arg in "$@"; do
      case "$arg" in
        -I | --interactive) command=repl ;;
        *) args+=("$arg") ;;
      esac
    done
    exec ${driver}/bin/${mainProgram} "$command" --config ${configFile} "''${args[@]}"
  '';
  driverInteractive = pkgs.writeShellScriptBin "vmcheck-driver" ''
    ${driverEnv}
    exec ${driver}/bin/${mainProgram} repl --config ${configFile} "$@"
  '';

  test =
    pkgs.runCommand "vmcheck-test-${name}" {
      # The driver first on PATH: the build runs it by its program name.
      nativeBuildInputs = [driver] ++ qemus;
      # Runs with or without KVM: the driver probes KVM and falls back to TCG, and the build
      # scales its timeouts when the sandbox has no /dev/kvm (Nix puts it there when the
      # builder has the kvm system feature). Pass [ "nixos-test" "kvm" ] to require KVM.
      inherit requiredSystemFeatures;
      passthru = {
        driver = driverRun;
        driverPackage = driver;
        inherit driverInteractive driverConfiguration configFile scenario;
        nodes = evaluatedNodes;
      };
      meta.timeout = globalTimeout * factor + 600;
    } ''
      # The sandbox's HOME does not exist; the driver keeps its run state under TMPDIR.
      export HOME="$TMPDIR/home" VMCHECK_CACHE="$TMPDIR/cache"
      mkdir -p "$HOME"
      ${accelEnv}
      global=${toString globalTimeout}
      if [ "''${VMCHECK_ACCEL:-}" = tcg ] || [ ! -e /dev/kvm ]; then
        # Every timeout of the driver and the guest tools, and the global one, scaled for TCG.
        export VMCHECK_TIMEOUT_FACTOR=${toString factor}
        global=$((global * ${toString factor}))
        echo "vmcheck: TCG (no /dev/kvm in the build sandbox, or accel = tcg): timeouts x${toString factor}, global timeout $global s"
      fi
      artifacts="$TMPDIR/vmcheck-out"
      status=0
      ${mainProgram} run --config ${configFile} --global-timeout "$global" --out "$artifacts" --junit "$artifacts/junit.xml" ${lib.escapeShellArgs extraDriverArgs} || status=$?
      if [ "$status" != 0 ]; then
        echo "vmcheck: ${name} failed (exit status $status); console logs, transcript and junit.xml: $artifacts (kept by nix build --keep-failed)"
        exit "$status"
      fi
      mkdir -p "$out"
      echo "${name}: scenario ${scenario} passed" >"$out/passed"
      ${lib.optionalString keepArtifacts ''cp -r "$artifacts" "$out/artifacts"''}
    '';
  # The node names, checked by the driver configuration's own rule (the driver's) before any
  # node is evaluated, so a bad name is reported as such and not as a host name NixOS refuses.
  namesChecked =
    builtins.deepSeq (import ./driver-config.nix {
      inherit name scenario globalTimeout;
      machines = builtins.mapAttrs (_: _: {startScript = "/";}) nodes;
    })
    true;
in
  if nodes == {}
  then fail "nodes is empty; name one NixOS module per machine of scenario ${scenario}"
  else if namesChecked
  then test
  else fail "unreachable"
