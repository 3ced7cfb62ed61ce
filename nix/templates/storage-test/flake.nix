{
  description = "Storage tests: vmcheck scenarios of our own, run on NixOS machines";

  # Replace OWNER, here and in Cargo.toml. nixpkgs follows vmcheck's, the release its modules and
  # package are written against.
  inputs = {
    vmcheck.url = "github:OWNER/vmcheck";
    nixpkgs.follows = "vmcheck/nixpkgs";
  };

  outputs = {
    self,
    nixpkgs,
    vmcheck,
  }: let
    system = "x86_64-linux"; # vmcheck runs x86_64 machines on x86_64-linux only
    pkgs = nixpkgs.legacyPackages.${system};

    # src/main.rs, built from Cargo.toml and Cargo.lock (vmcheck as a git dependency, fetched by
    # the revision Cargo.lock pins).
    driver = vmcheck.lib.buildDriver {
      inherit pkgs;
      src = self;
    };

    checks = {
      # The scenario `disk_verify` of src/main.rs on a NixOS machine. Node names are the
      # scenario's machine names; the driver adds the NVMe disk and the test network itself.
      disk_verify = vmcheck.lib.makeTest {
        inherit pkgs driver;
        name = "disk_verify";
        nodes.vm = {
          imports = [vmcheck.nixosModules.initiator]; # nvme-cli, fio, lsblk
          vmcheck.address = "192.0.2.2"; # as NodeSpec::new("vm", Role::Initiator, 2)
        };
        globalTimeout = 900;
      };
    };
  in {
    packages.${system}.default = driver;

    # `nix build .#checks.x86_64-linux.disk_verify` runs it in the build sandbox,
    # `.driver` outside it, `.driverInteractive` (or `.driver -I`) opens the REPL; `nix flake
    # check` runs them all.
    checks.${system} = checks;
    # So that `nix build .#checks.disk_verify` finds them too.
    legacyPackages.${system}.checks = checks;
  };
}
