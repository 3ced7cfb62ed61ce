# The other reading of the card: nixpkgs' own NixOS test driver starts the machines, and vmcheck
# runs the scenario from inside the initiator, as the test's driver in guest mode. One test per
# scenario that runs in a guest (nix/listing.nix, runsInGuest), as a test module for nixpkgs'
# `pkgs.testers.runNixOSTest`, named `<scenario>-nixos-test`. Pure: builtins only.
#
#   import ./nixos-tests.nix {
#     listing = <nix/scenarios.json, parsed>;
#     modules = { target = <target role>; initiator = <initiator role>; };  # no guest contract
#     vmcheckFor = pkgs: <the vmcheck package of pkgs>;
#   }
#
# returns name -> test module. Each machine the scenario declares is a node of that name with
# its role's module (the role alone: nixpkgs' nodes have their own addresses, names, agent and
# shell), its vlans on nixpkgs' test network (192.168.<vlan>.<n>, the node names in /etc/hosts),
# its CPUs and memory, and, on a target, the scenario's disks with their serials. Every
# initiator has vmcheck installed. The test script waits for the targets' daemons and the
# initiators, runs
#
#   vmcheck run --local <first initiator> --peer <other machine>=<its name> ...
#     --global-timeout 3000 --out /tmp/vmcheck-out --junit /tmp/vmcheck-out/junit.xml <scenario>
#
# inside the first initiator (the scenario's order), copies /tmp/vmcheck-out (JUnit, transcript,
# logs) to the test's $out/vmcheck-out whether it passed or not, and fails when vmcheck did.
#
# The disks: nixpkgs' qemu-vm.nix makes empty disks (virtualisation.emptyDiskImages) as virtio
# disks without a serial, and the scenario finds the target's disks by serial, NVMe or virtio as
# it declares them. So each disk is a -drive and a -device of its own in
# virtualisation.qemu.options: zeroes of the disk's size (null-co) under a temporary writable
# overlay (snapshot=on, in the VM's state directory, removed when QEMU exits), on an `nvme` or
# `virtio-blk-pci` device with the disk's serial. Writes stay for the life of the QEMU process
# (reboots included); flushes are not passed on, which a test's throw-away disk does not need.
{
  listing,
  modules,
  vmcheckFor,
}: let
  scenarioList = import ./listing.nix listing;

  # Where vmcheck's target daemon listens (src/target, GRPC_PORT).
  grpcPort = 10124;
  # Seconds: the test's (nixpkgs' driver kills everything after it), the wait for the guest-mode
  # run inside it, and the run's own, shorter, so that vmcheck stops first, with its report.
  globalTimeout = 3600;
  runTimeout = 3300;
  vmcheckTimeout = 3000;

  diskOptions = disk: let
    drive = "vmcheck-${disk.id}";
    model =
      if disk.virtio
      then "virtio-blk-pci"
      else "nvme";
    policies = builtins.concatStringsSep "" (map (p: ",${p}=${disk.${p}}") (builtins.filter (p: disk ? ${p}) ["rerror" "werror"]));
  in [
    "-drive if=none,id=${drive},format=raw,file=null-co://,file.size=${toString (disk.size_mib * 1048576)},file.read-zeroes=on,snapshot=on"
    "-device ${model},id=${disk.id},drive=${drive},serial=${disk.serial}${policies}"
  ];

  # The machine's name in the test script, as nixpkgs' driver names it (pythonizeName: a node
  # name of the scenario list has letters, digits, '-' and '_').
  py = builtins.replaceStrings ["-"] ["_"];

  testFor = scenario: entry: let
    machines = entry.nodes;
    initiators = builtins.filter (n: n.role == "initiator") machines;
    targets = builtins.filter (n: n.role == "target") machines;
    local =
      if initiators == []
      then throw "nix/scenarios.json: scenario ${scenario} runs in a guest but declares no initiator to run in"
      else builtins.head initiators;
    peers = builtins.filter (n: n.name != local.name) machines;
    command = builtins.concatStringsSep " " (
      ["vmcheck" "run" "--local" local.name]
      ++ builtins.concatMap (p: ["--peer" "${p.name}=${p.name}"]) peers
      ++ ["--global-timeout" (toString vmcheckTimeout) "--out" "/tmp/vmcheck-out" "--junit" "/tmp/vmcheck-out/junit.xml" scenario]
    );
    node = machine: {
      lib,
      pkgs,
      ...
    }: {
      imports = [
        (modules.${machine.role}
          or (throw "nix/scenarios.json: scenario ${scenario}, machine ${machine.name}: role ${builtins.toJSON machine.role} has no NixOS module; known roles: ${builtins.toJSON (builtins.attrNames modules)}"))
      ];
      virtualisation.vlans = machine.vlans;
      virtualisation.memorySize = lib.mkDefault (scenarioList.nixosMemoryMiB machine);
      virtualisation.cores = lib.mkDefault machine.cpus;
      virtualisation.qemu.options = builtins.concatMap diskOptions machine.disks;
      # vmcheck-target's gRPC port and the NVMe-oF ports the scenario chooses at run time, on a
      # network only the test's machines are on.
      networking.firewall.enable = false;
      environment.systemPackages = lib.optional (machine.role == "initiator") (vmcheckFor pkgs);
    };
  in {
    name = "${scenario}-nixos-test";
    nodes = builtins.listToAttrs (map (m: {
        inherit (m) name;
        value = node m;
      })
      machines);
    inherit globalTimeout;
    # Python, for nixpkgs' driver (its Machine API: start_all, wait_for_unit,
    # wait_for_open_port, execute, copy_from_vm).
    testScript = builtins.concatStringsSep "\n" (
      ["start_all()"]
      ++ builtins.concatMap (t: [
        "${py t.name}.wait_for_unit(\"vmcheck-target.service\")"
        "${py t.name}.wait_for_open_port(${toString grpcPort})"
      ])
      targets
      ++ map (i: "${py i.name}.wait_for_unit(\"multi-user.target\")") initiators
      ++ [
        "# vmcheck as the test's driver, inside ${local.name} (guest mode): the other machines"
        "# are reached by their names on the test network."
        "status, output = ${py local.name}.execute(\"${command} 2>&1\", timeout=${toString runTimeout})"
        "print(output)"
        "${py local.name}.copy_from_vm(\"/tmp/vmcheck-out\", \"\")"
        "if status != 0:"
        "    raise Exception(f\"vmcheck run (in ${local.name}) exited with status {status}; its JUnit, transcript and logs are in the test's output, vmcheck-out/\")"
        ""
      ]
    );
  };
in
  builtins.listToAttrs (map (scenario: {
    name = "${scenario}-nixos-test";
    value = testFor scenario scenarioList.scenarios.${scenario};
  }) (builtins.filter scenarioList.runsInGuest (builtins.attrNames scenarioList.scenarios)))
