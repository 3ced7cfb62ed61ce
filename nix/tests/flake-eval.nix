# flake.nix's real outputs function, with nix/make-test.nix, nix/scenario-tests.nix,
# nix/nixos-tests.nix, nix/listing.nix and the NixOS modules, evaluated against the nixpkgs
# stand-in (./stub-nixpkgs, with its runNixOSTest): a mistake in any of them (wiring, an option
# that does not exist, a wrong type, conflicting definitions, a failed assertion, a bad argument)
# fails this evaluation as it would fail against nixpkgs.
#
#   summary          what the outputs are, as JSON-able data: per check of vmcheck's driver
#                    (`checks`) the driver configuration, the build command, both driver
#                    scripts and every node's evaluated NixOS options that the driver depends
#                    on; per check of nixpkgs' driver (`nixosTests`, `<scenario>-nixos-test`)
#                    the test script, nixpkgs' drivers and every node's options on nixpkgs' test
#                    network; which scenarios run in a guest (`runsInGuest`) and which are left
#                    out, with why (`leftOutOfNixChecks`); the checks as legacyPackages has them.
#                    nix/check.sh writes it out; tests/nix_config.rs compares it with the
#                    driver's scenarios and parses the driver configurations with the driver's
#                    own parser.
#   testSummary ARGS the same for `lib.makeTest ({ system = "x86_64-linux"; } // ARGS)`, for
#                    checks of what makeTest refuses (nix/check.sh, tests/nix_config.rs).
#   nixosTestSummary MODULE  the same for the stand-in's `pkgs.testers.runNixOSTest MODULE`.
#   scenarioTests LISTING  nix/scenario-tests.nix applied to LISTING with the flake's modules.
#   driverSummary ARGS     `lib.buildDriver ({ system = "x86_64-linux"; } // ARGS)`, summarised.
#   template         the template (nix/templates/storage-test): its flake.nix's real outputs
#                    function, given this flake as the input `vmcheck` (at revision
#                    `templateVmcheckRev`) and ./template-checkout (the template's Cargo.toml and
#                    a stand-in Cargo.lock) as its own source, summarised as `summary` is.
#   templateWith { vmcheckRev }  the same with the input vmcheck at another revision.
#   outputs, modules, lib, pkgs  the flake's outputs and nixosModules, the stand-in's lib and
#                    x86_64-linux packages.
let
  flake = import ../../flake.nix;
  nixpkgs = import ./stub-nixpkgs;
  # The flake's outputs, as Nix gives them to itself (`self`) and to a flake that has it as an
  # input: the outputs with the source's outPath and, from git, its revision.
  outputsAt = source: let
    self = flake.outputs {
      self = self // source;
      inherit nixpkgs;
    };
  in
    self // source;
  outputs = outputsAt {outPath = toString ../..;};
  system = "x86_64-linux";
  inherit (builtins) attrNames mapAttrs;
  inherit (nixpkgs) lib;
  scenarioList = import ../listing.nix (builtins.fromJSON (builtins.readFile ../scenarios.json));
  isNixosTest = name: builtins.match ".*-nixos-test" name != null;
  packageName = p: p.pname or p.name;

  nodeSummary = node: let
    c = node.config;
  in {
    inherit (c.networking) hostName;
    systemName = c.system.name;
    inherit (c.vmcheck) address vlans testInterfaces controlNetwork migrates;
    # Where 9p file systems are mounted (nixpkgs' qemu-vm.nix: the host's store, xchg, shared).
    mounted9p = map (fs: fs.mountPoint) (builtins.filter (fs: fs.fsType == "9p") (builtins.attrValues c.fileSystems));
    # The udev rules in the initrd (naming the test NICs by MAC).
    initrdUdevRules = c.system.build.initialRamdisk.udevRules;
    interfaces = mapAttrs (_: i: map (a: "${a.address}/${toString a.prefixLength}") i.ipv4.addresses) c.networking.interfaces;
    inherit (c.virtualisation) memorySize cores graphics diskImage;
    qemu = c.virtualisation.qemu.package.outPath;
    qemuGuestAgent = c.services.qemuGuest.enable;
    units = mapAttrs (_: u: {
      inherit (u) wantedBy after;
      ExecStart = u.serviceConfig.ExecStart or null;
      path = map toString u.path;
    }) (builtins.removeAttrs c.systemd.services ["qemu-guest-agent"]);
    agentPath = map toString c.systemd.services.qemu-guest-agent.path;
    # What builds the `nvme` on PATH, where it is not nvme-cli itself.
    nvmeWrapper = map (p: p.buildCommand) (builtins.filter (p: p ? buildCommand && builtins.elem "nvme" (p.bins or ["nvme"])) c.environment.systemPackages);
    inherit (c.boot) kernelModules consoleLogLevel;
    packages = map packageName c.environment.systemPackages;
    etc = mapAttrs (_: e: e.text) c.environment.etc;
    vm = c.system.build.vm.outPath;
    inherit (c.system.build.vm) startScript;
    # What eval-config.nix was given.
    evalConfig = {
      inherit (node.stubGiven) system;
      arguments = attrNames node.stubGiven;
    };
  };

  testSummary' = t: {
    inherit (t) name scenario requiredSystemFeatures buildCommand driverConfiguration;
    # Not `outPath`: an attribute set with one turns into that string in JSON.
    configFile = {
      path = t.configFile.outPath;
      inherit (t.configFile) text;
    };
    driver = {inherit (t.driver) name text;};
    driverInteractive = {inherit (t.driverInteractive) name text;};
    driverPackage = t.driverPackage.name;
    nativeBuildInputs = map packageName t.nativeBuildInputs;
    inherit (t.meta) timeout;
    nodes = mapAttrs (_: nodeSummary) t.nodes;
  };
  # A check of nixpkgs' test driver (runNixOSTest, nix/nixos-tests.nix).
  nixosTestSummary = t: {
    inherit (t) name requiredSystemFeatures buildCommand;
    inherit (t.driver) testScript;
    driver = {
      inherit (t.driver) name buildCommand;
      inherit (t.driver.meta) mainProgram;
      inherit (t.driver.stubRecorded) vlans globalTimeout skipLint skipTypeCheck pythonizedNames;
    };
    driverInteractive = {
      inherit (t.driverInteractive) name buildCommand;
      inherit (t.driverInteractive.meta) mainProgram;
    };
    nodes =
      mapAttrs (_: c: {
        inherit (c.networking) hostName primaryIPAddress extraHosts;
        interfaces = mapAttrs (_: i: map (a: "${a.address}/${toString a.prefixLength}") i.ipv4.addresses) c.networking.interfaces;
        inherit (c.virtualisation) vlans memorySize cores;
        inherit (c.virtualisation.test) nodeNumber;
        qemuOptions = c.virtualisation.qemu.options;
        initrdUdevRules = c.system.build.initialRamdisk.udevRules;
        firewall = c.networking.firewall.enable;
        # Whether the guest contract (nixosModules.guest) is in: it must not be.
        guestContract = c ? vmcheck.address;
        packages = map packageName c.environment.systemPackages;
        units = mapAttrs (_: u: {
          inherit (u) wantedBy;
          ExecStart = u.serviceConfig.ExecStart or null;
        }) (builtins.removeAttrs c.systemd.services ["qemu-guest-agent"]);
        inherit (c.boot) kernelModules;
        inherit (c.system.build.vm) startScript;
      })
      t.nodes;
  };

  driverSummary' = d: {
    inherit (d) name pname version cargoBuildFlags doCheck;
    inherit (d.meta) mainProgram platforms;
    src = toString d.src;
    # What importCargoLock would vendor, and how (fetchurl, fetchgit or builtins.fetchGit).
    inherit (d.cargoDeps) crates;
  };

  templateFlake = import ../templates/storage-test/flake.nix;
  templateVmcheckRev = "0123456789abcdef0123456789abcdef01234567";
  templateWith = {vmcheckRev}: let
    vmcheck = outputsAt {
      outPath = toString ../..;
      rev = vmcheckRev;
    };
    self =
      templateFlake.outputs {
        inherit self vmcheck;
        # inputs.nixpkgs.follows = "vmcheck/nixpkgs": the same package set.
        inherit nixpkgs;
      }
      // {outPath = toString ./template-checkout;};
  in {
    inherit (templateFlake) description;
    inputs = builtins.mapAttrs (_: i: i.url or "follows ${i.follows}") templateFlake.inputs;
    outputs = mapAttrs (_: attrNames) (builtins.removeAttrs self ["outPath"]);
    driver = driverSummary' self.packages.${system}.default;
    checks = mapAttrs (_: testSummary') self.checks.${system};
    legacyChecks = mapAttrs (_: t: t.outPath) self.legacyPackages.${system}.checks;
    checkPaths = mapAttrs (_: t: t.outPath) self.checks.${system};
  };
in {
  summary = {
    nixpkgsInput = flake.inputs.nixpkgs.url;
    systems = {
      packages = attrNames outputs.packages;
      checks = attrNames outputs.checks;
      legacyPackages = attrNames outputs.legacyPackages;
      devShells = attrNames outputs.devShells;
      formatter = attrNames outputs.formatter;
    };
    packages = mapAttrs (_: attrNames) outputs.packages;
    vmcheck = {
      inherit (outputs.packages.${system}.vmcheck) name;
      inherit (outputs.packages.${system}.vmcheck.meta) mainProgram;
    };
    nixosModules = mapAttrs (_: builtins.typeOf) outputs.nixosModules;
    lib = attrNames outputs.lib;
    devShell = map packageName outputs.devShells.${system}.default.packages;
    formatter = outputs.formatter.${system}.meta.mainProgram;
    # vmcheck's driver on the host (makeTest), and nixpkgs' driver with vmcheck inside the
    # initiator (runNixOSTest: `<scenario>-nixos-test`).
    # (Told apart by name, so that reading one check evaluates no other.)
    checks = mapAttrs (_: testSummary') (lib.filterAttrs (name: _: !(isNixosTest name)) outputs.checks.${system});
    nixosTests = mapAttrs (_: nixosTestSummary) (lib.filterAttrs (name: _: isNixosTest name) outputs.checks.${system});
    # What nix/listing.nix says runs in a guest.
    runsInGuest = builtins.filter scenarioList.runsInGuest (attrNames scenarioList.scenarios);
    # `nix build .#checks.<name>` finds them here (outPaths, to compare).
    legacyChecks = mapAttrs (_: t: t.outPath) outputs.legacyPackages.${system}.checks;
    checkPaths = mapAttrs (_: t: t.outPath) outputs.checks.${system};
    # The listed scenarios the checks leave out, with why (nix/listing.nix).
    inherit (scenarioList) leftOutOfNixChecks;
    templates =
      mapAttrs (_: t: {
        path = toString t.path;
        inherit (t) description;
        files = attrNames (builtins.readDir t.path);
      })
      outputs.templates;
  };

  template = templateWith {vmcheckRev = templateVmcheckRev;};
  inherit templateWith;

  driverSummary = args: driverSummary' (outputs.lib.buildDriver ({inherit system;} // args));

  testSummary = args: testSummary' (outputs.lib.makeTest ({inherit system;} // args));

  # The same for a test module of one's own, through the stand-in's runNixOSTest.
  nixosTestSummary = module: nixosTestSummary (nixpkgs.legacyPackages.${system}.testers.runNixOSTest module);

  inherit outputs lib;
  modules = outputs.nixosModules;
  pkgs = nixpkgs.legacyPackages.${system};

  scenarioTests = listing:
    import ../scenario-tests.nix {
      inherit listing;
      modules = {inherit (outputs.nixosModules) target initiator;};
    };
}
