{
  description = "vmcheck: VM-level integration tests for storage systems (QEMU VMs, NVMe-oF/TCP via Linux nvmet, fio)";

  # A release branch, not a revision, and no flake.lock committed: locking needs the source hash
  # of nixpkgs, which could not be fetched where this flake was written. The first `nix flake
  # lock` (or any nix command that needs the input) pins the branch's current revision in
  # flake.lock; commit that file. nixos-25.11 is the oldest release whose rustc (>= 1.89) builds
  # Cargo.lock.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs = {
    self,
    nixpkgs,
  }: let
    # x86_64-linux only: the driver runs x86_64 machines (QEMU's pc machine, console ttyS0, an x86
    # boot sector in the KVM probe, amd64 default images), and nixpkgs' qemu_kvm on aarch64-linux
    # has no qemu-system-x86_64. README, "With Nix", says more.
    systems = ["x86_64-linux"];
    forAllSystems = f:
      builtins.listToAttrs (map (system: {
          name = system;
          value = f system;
        })
        systems);

    # Written by `vmcheck list --json` (tests/nix_config.rs keeps it equal to the driver's list).
    listing = builtins.fromJSON (builtins.readFile ./nix/scenarios.json);
    # What it says about each scenario (where it runs, whether it migrates): nix/listing.nix.
    scenarioList = import ./nix/listing.nix listing;

    # vmcheck from the package set it is used with: a caller's overlays (its rustPlatform, its
    # rustc, ...) reach it. From the flake's own nixpkgs this is packages.<system>.vmcheck, the
    # same derivation.
    vmcheckFor = pkgs: pkgs.callPackage ./nix/package.nix {};

    # `vmcheck.lib.makeTest { system = "x86_64-linux"; name; nodes; scenario; ... }`, or with
    # `pkgs = <a nixpkgs package set>` instead of `system` to build the machines from your own
    # package set; `driver = <a package>` runs the scenario with your own driver (a binary whose
    # main is vmcheck::harness::main) instead of vmcheck's. Arguments: nix/make-test.nix.
    makeTest = {
      system ? null,
      pkgs ?
        if system == null
        then throw "vmcheck.lib.makeTest: give `system` (\"x86_64-linux\") or `pkgs`"
        else nixpkgs.legacyPackages.${system},
      vmcheck ? vmcheckFor pkgs,
      ...
    } @ args:
      import ./nix/make-test.nix {
        inherit pkgs vmcheck scenarioList;
        guestModule = self.nixosModules.guest;
      } (builtins.removeAttrs args ["system" "pkgs" "vmcheck"]);

    # `vmcheck.lib.buildDriver { system = "x86_64-linux"; src = self; }` (or `pkgs`): the driver
    # of a user's repository, a cargo [[bin]] calling vmcheck::harness::main, for makeTest's
    # `driver`. Arguments: nix/build-driver.nix.
    buildDriver = {
      system ? null,
      pkgs ?
        if system == null
        then throw "vmcheck.lib.buildDriver: give `system` (\"x86_64-linux\") or `pkgs`"
        else nixpkgs.legacyPackages.${system},
      ...
    } @ args:
      import ./nix/build-driver.nix {
        inherit pkgs;
        vmcheckRev = self.rev or null;
      } (builtins.removeAttrs args ["system" "pkgs"]);

    # A check per scenario the driver lists, each machine with its role's module, address,
    # test interfaces, CPUs and memory (nix/scenario-tests.nix).
    scenarioTests = import ./nix/scenario-tests.nix {
      inherit listing;
      modules = {inherit (self.nixosModules) target initiator;};
    };

    # The same scenarios the other way round, for those that run in a guest: nixpkgs' own test
    # driver (runNixOSTest) starts the machines with the roles alone, on its own test network,
    # and vmcheck runs the scenario inside the initiator (nix/nixos-tests.nix). Checks
    # `<scenario>-nixos-test`, beside `<scenario>`.
    nixosTests = import ./nix/nixos-tests.nix {
      inherit listing vmcheckFor;
      modules = {
        target = self.nixosModules.target-role;
        initiator = self.nixosModules.initiator-role;
      };
    };
  in {
    packages = forAllSystems (system: let
      pkgs = nixpkgs.legacyPackages.${system};
      vmcheck = vmcheckFor pkgs;
    in {
      inherit vmcheck;
      default = vmcheck;
      vmcheck-alejandra = pkgs.callPackage ./nix/tools/alejandra/package.nix {};
    });

    # Modules as attribute sets or functions that import the files, not bare paths: some versions
    # of `nix flake check` refuse a path as a module (NixOS/nix#7355), and an import keeps the
    # file's name in error messages.
    nixosModules = {
      # The guest contract: qemu-guest-agent, serial console, static test-network addresses.
      guest = {imports = [./nix/modules/guest.nix];};
      # The guest contract + nvmet + nvmet-tcp, configfs, and vmcheck-target started at boot
      # (this flake's package): a machine vmcheck's driver starts.
      target = {
        lib,
        pkgs,
        ...
      }: {
        imports = [./nix/modules/target.nix];
        vmcheck.target.package = lib.mkDefault (vmcheckFor pkgs);
      };
      # The guest contract + nvme-tcp, nvme-cli, fio, lsblk, /etc/nvme/hostnqn and hostid.
      initiator = {imports = [./nix/modules/initiator.nix];};
      # The roles alone, without the guest contract (addresses, agent, control network): for
      # machines vmcheck's driver does not start, such as nodes of nixpkgs' own test driver.
      target-role = {
        lib,
        pkgs,
        ...
      }: {
        imports = [./nix/modules/roles/target.nix];
        vmcheck.target.package = lib.mkDefault (vmcheckFor pkgs);
      };
      initiator-role = {imports = [./nix/modules/roles/initiator.nix];};
    };

    lib = {
      inherit makeTest buildDriver;
      # The pure driver-configuration function (nix/driver-config.nix), for tests of your own.
      driverConfig = import ./nix/driver-config.nix;
    };

    # `nix flake init -t github:OWNER/vmcheck`: a repository of your own storage tests (a driver
    # crate and a flake whose checks run it on NixOS machines); README.md there says what next.
    templates = rec {
      storage-test = {
        path = ./nix/templates/storage-test;
        description = "Storage tests of your own: a vmcheck driver crate (vmcheck::harness::main) and flake checks that run it on NixOS machines";
      };
      default = storage-test;
    };

    # `nix build .#checks.x86_64-linux.fio_nvme_basic` runs the scenario in the build sandbox,
    # vmcheck's driver on the host starting the machines; `.driver` on it runs it outside
    # (`.driver -I`, or `.driverInteractive`, opens vmcheck's REPL). `fio_nvme_basic-nixos-test`
    # runs it with nixpkgs' test driver, vmcheck inside the initiator; its `.driver` and
    # `.driverInteractive` are nixpkgs'. `nix flake check` builds them all.
    checks = forAllSystems (system:
      builtins.mapAttrs (_: args: makeTest (args // {inherit system;})) scenarioTests
      // builtins.mapAttrs (name: test:
        if scenarioTests ? ${name}
        then throw "check ${name}: a scenario has the name of another's nixos-test check"
        else nixpkgs.legacyPackages.${system}.testers.runNixOSTest test)
      nixosTests);

    # The same checks where `nix build .#checks.fio_nvme_basic` finds them: for `nix build .#X`
    # Nix tries packages.<system>.X, then legacyPackages.<system>.X, then X. `nix flake check`
    # does not descend into legacyPackages, so nothing runs twice. (nix/check.sh resolves the
    # command with the Nix CI has.)
    legacyPackages = forAllSystems (system: {checks = self.checks.${system};});

    devShells = forAllSystems (system: let
      pkgs = nixpkgs.legacyPackages.${system};
    in {
      default = pkgs.mkShell {
        packages = [
          pkgs.cargo
          pkgs.rustc
          pkgs.rustfmt
          pkgs.clippy
          pkgs.qemu
          pkgs.nvme-cli
          pkgs.fio
          # nix/check.sh: nix-instantiate, deadnix, statix and the formatter.
          pkgs.nix
          pkgs.deadnix
          pkgs.statix
          self.packages.${system}.vmcheck-alejandra
        ];
      };
    });

    # `nix fmt`: alejandra's rules, pinned to the version nix/check.sh checks with.
    formatter = forAllSystems (system: self.packages.${system}.vmcheck-alejandra);
  };
}
