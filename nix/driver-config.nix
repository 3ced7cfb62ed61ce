# The driver configuration that `vmcheck run --config FILE` and `vmcheck repl --config FILE` read
# (src/config.rs, `DriverConfig`), as a pure function: builtins only, no nixpkgs, so it can be
# evaluated and tested anywhere with `nix-instantiate --eval --strict --json`.
#
#   import ./driver-config.nix {
#     name = "fio_nvme_basic";            # the test's name (logs, JUnit)
#     scenario = "fio_nvme_basic";        # a scenario registered in the driver
#     globalTimeout = 3600;               # seconds, optional
#     machines.target = {
#       startScript = "/nix/store/...-nixos-vm/bin/run-target-vm";
#       address = "192.0.2.1";            # optional
#     };
#   }
#
# returns the attribute set whose JSON is the file the driver reads:
#
#   { "name": ..., "scenario": ..., "global_timeout": 3600,
#     "machines": { "target": { "start_script": "...", "address": "192.0.2.1" } } }
#
# Every check the driver makes (src/config.rs) is made here too, so a bad test definition fails
# at evaluation time with a message that names the field, not later inside the build sandbox.
{
  name,
  scenario,
  globalTimeout ? 3600,
  machines,
}: let
  fail = msg: throw "vmcheck driver configuration: ${msg}";

  nonEmptyString = what: value:
    if builtins.isString value && value != ""
    then value
    else fail "${what} must be a non-empty string, got ${builtins.typeOf value}";

  # Same rule as `validate_machine_name` in src/config.rs: a letter first, a letter or digit last,
  # letters, digits, '-' and '_' between, at most 32 characters. Names become file names, QEMU
  # ids, REPL words and NixOS host names (networking.hostName refuses a trailing '-' or '_').
  validMachineName = machine: builtins.match "[A-Za-z]([A-Za-z0-9_-]{0,30}[A-Za-z0-9])?" machine != null;

  # A dotted-quad IPv4 address as Rust's `Ipv4Addr` parses it: four decimal octets 0-255 with no
  # leading zeros.
  octet = "(0|[1-9][0-9]{0,2})";
  ipv4 = machine: address: let
    parts = builtins.match "${octet}\\.${octet}\\.${octet}\\.${octet}" address;
    inRange = builtins.all (p: builtins.fromJSON p <= 255) parts;
  in
    if builtins.isString address && parts != null && inRange
    then address
    else fail "machines.${machine}.address must be an IPv4 address like \"192.0.2.1\", got ${builtins.toJSON address}";

  startScript = machine: script: let
    path = toString script;
  in
    if (builtins.isString script || builtins.isPath script) && builtins.substring 0 1 path == "/"
    then path
    else fail "machines.${machine}.startScript must be an absolute path (a NixOS VM's bin/run-<name>-vm), got ${builtins.toJSON script}";

  knownMachineFields = ["startScript" "address"];

  machine = checkedName: spec: let
    unknown = builtins.filter (f: !(builtins.elem f knownMachineFields)) (builtins.attrNames spec);
  in
    if !(validMachineName checkedName)
    then fail "machine name \"${checkedName}\" must start with a letter, end with a letter or digit, and hold only letters, digits, '-' and '_' (at most 32; NixOS host names refuse a trailing '-' or '_')"
    else if !(builtins.isAttrs spec)
    then fail "machines.${checkedName} must be an attribute set { startScript; address ? null; }"
    else if unknown != []
    then fail "machines.${checkedName} has unknown attribute(s) ${builtins.toJSON unknown}; known: ${builtins.toJSON knownMachineFields}"
    else if !(spec ? startScript)
    then fail "machines.${checkedName}.startScript is missing"
    else
      {start_script = startScript checkedName spec.startScript;}
      // (
        if (spec.address or null) == null
        then {}
        else {address = ipv4 checkedName spec.address;}
      );

  timeout =
    if builtins.isInt globalTimeout && globalTimeout > 0
    then globalTimeout
    else fail "globalTimeout must be a whole number of seconds above 0, got ${builtins.toJSON globalTimeout}";
in
  if !(builtins.isAttrs machines)
  then fail "machines must be an attribute set of machine name -> { startScript; address ? null; }"
  else {
    name = nonEmptyString "name" name;
    scenario = nonEmptyString "scenario" scenario;
    global_timeout = timeout;
    machines = builtins.mapAttrs machine machines;
  }
