{
  description = "vmcheck: VM-level integration tests for storage systems (QEMU VMs, NVMe-oF/TCP via Linux nvmet, fio)";

  # A release branch, not a revision: no flake.lock is committed yet (it could not be generated
  # where this flake was written, without network access to GitHub). The first `nix flake lock`,
  # or any nix command that needs the input, pins the branch's current revision in flake.lock;
  # commit that file. nixos-25.11 is the oldest release whose rustc (>= 1.89) builds Cargo.lock.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs = {
    self,
    nixpkgs,
  }: let
    # Plain builtins here and in nix/scenarios.nix, so the outputs' shape (systems, checks,
    # modules) evaluates without nixpkgs; nix/check.sh checks it that way.
    systems = ["x86_64-linux" "aarch64-linux"];
    forAllSystems = f:
      builtins.listToAttrs (map (system: {
          name = system;
          value = f system;
        })
        systems);

    scenarios = import ./nix/scenarios.nix;

    vmcheckFor = pkgs:
      self.packages.${pkgs.stdenv.hostPlatform.system}.vmcheck or (pkgs.callPackage ./nix/package.nix {});

    # `vmcheck.lib.makeTest { system = "x86_64-linux"; name; nodes; scenario; ... }`, or with
    # `pkgs = <a nixpkgs package set>` instead of `system` to build the machines from your own
    # package set. Arguments: nix/make-test.nix.
    makeTest = {
      system ? null,
      pkgs ?
        if system == null
        then throw "vmcheck.lib.makeTest: give `system` (for example \"x86_64-linux\") or `pkgs`"
        else nixpkgs.legacyPackages.${system},
      vmcheck ? vmcheckFor pkgs,
      ...
    } @ args:
      import ./nix/make-test.nix {
        inherit pkgs vmcheck;
        guestModule = self.nixosModules.guest;
      } (builtins.removeAttrs args ["system" "pkgs" "vmcheck"]);

    # A check per scenario of nix/scenarios.nix, each machine with its role's module and address.
    scenarioChecks = system:
      builtins.mapAttrs (scenario: entry: let
        spec = {globalTimeout = 3600;} // entry;
      in
        makeTest {
          inherit system scenario;
          inherit (spec) globalTimeout;
          name = scenario;
          nodes =
            builtins.mapAttrs (_: machine: {
              imports = [self.nixosModules.${machine.role}];
              vmcheck.address = machine.address;
            })
            spec.machines;
        })
      scenarios;
  in {
    packages = forAllSystems (system: let
      pkgs = nixpkgs.legacyPackages.${system};
      vmcheck = pkgs.callPackage ./nix/package.nix {};
    in {
      inherit vmcheck;
      default = vmcheck;
      vmcheck-alejandra = pkgs.callPackage ./nix/tools/alejandra/package.nix {};
    });

    # Modules as attribute sets or functions that import the files, not bare paths: some versions
    # of `nix flake check` refuse a path as a module (NixOS/nix#7355), and an import keeps the
    # file's name in error messages.
    nixosModules = {
      # The guest contract: qemu-guest-agent, serial console, static test-network address.
      guest = {imports = [./nix/modules/guest.nix];};
      # nvmet + nvmet-tcp, configfs, and vmcheck-target started at boot (this flake's package).
      target = {
        lib,
        pkgs,
        ...
      }: {
        imports = [./nix/modules/target.nix];
        vmcheck.target.package = lib.mkDefault (vmcheckFor pkgs);
      };
      # nvme-tcp, nvme-cli, fio, lsblk.
      initiator = {imports = [./nix/modules/initiator.nix];};
    };

    lib = {
      inherit makeTest;
      # The pure driver-configuration function (nix/driver-config.nix), for tests of your own.
      driverConfig = import ./nix/driver-config.nix;
    };

    # `nix build .#checks.x86_64-linux.fio_nvme_basic` runs the scenario in the build sandbox;
    # `.driver` on it is the interactive driver. `nix flake check` builds them all.
    checks = forAllSystems scenarioChecks;

    devShells = forAllSystems (system: let
      pkgs = nixpkgs.legacyPackages.${system};
    in {
      default = pkgs.mkShell {
        packages = [
          pkgs.cargo
          pkgs.rustc
          pkgs.rustfmt
          pkgs.clippy
          pkgs.protobuf
          pkgs.qemu
          pkgs.nvme-cli
          pkgs.fio
          self.packages.${system}.vmcheck-alejandra
        ];
      };
    });

    # `nix fmt`: alejandra's rules, pinned to the version nix/check.sh checks with.
    formatter = forAllSystems (system: self.packages.${system}.vmcheck-alejandra);
  };
}
