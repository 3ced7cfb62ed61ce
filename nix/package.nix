# vmcheck's workspace: bin/vmcheck (the driver) and bin/vmcheck-target (the in-guest storage
# target daemon, the package in daemon/), built from Cargo.lock.
{
  lib,
  rustPlatform,
}: let
  root = ../.;
  # Only what cargo reads: editing nix/, README or CI files does not rebuild the package.
  optionalDirs = builtins.filter builtins.pathExists [
    (root + "/tests")
    (root + "/benches")
    (root + "/examples")
  ];
  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.unions ([
        (root + "/Cargo.toml")
        (root + "/Cargo.lock")
        (root + "/build.rs")
        (root + "/src")
        (root + "/daemon")
        (root + "/proto")
      ]
      ++ optionalDirs);
  };
  manifest = builtins.fromTOML (builtins.readFile (root + "/Cargo.toml"));
in
  rustPlatform.buildRustPackage {
    pname = "vmcheck";
    inherit (manifest.package) version;
    inherit src;

    cargoLock.lockFile = root + "/Cargo.lock";

    # build.rs parses proto/ with protox, in Rust: no protoc.

    # The test suite boots QEMU machines and builds default images with apt; it runs in CI and
    # through the flake's checks, not inside this package's build.
    doCheck = false;

    meta = {
      inherit (manifest.package) description;
      license = [lib.licenses.mit lib.licenses.asl20];
      mainProgram = "vmcheck";
      platforms = lib.platforms.linux;
    };
  }
