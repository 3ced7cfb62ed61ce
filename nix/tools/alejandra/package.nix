# vmcheck-alejandra: the flake's `formatter` and the format check of nix/check.sh (one pinned
# version of alejandra's rules for both). Built from its own Cargo.lock.
{rustPlatform}: let
  manifest = builtins.fromTOML (builtins.readFile ./Cargo.toml);
in
  rustPlatform.buildRustPackage {
    pname = manifest.package.name;
    inherit (manifest.package) version;
    src = ./.;
    cargoLock.lockFile = ./Cargo.lock;
    meta = {
      inherit (manifest.package) description;
      mainProgram = "vmcheck-alejandra";
    };
  }
