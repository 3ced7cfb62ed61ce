# rustPlatform of the nixpkgs stand-in: buildRustPackage and importCargoLock with the arguments,
# defaults and evaluation-time errors of nixpkgs' pkgs/build-support/rust/build-rust-package and
# import-cargo-lock.nix, recording what would be built instead of building it.
#
#   buildRustPackage: `name` or pname + version; one of cargoLock, cargoHash, cargoVendorDir,
#     cargoDeps ("cargoHash, cargoVendorDir, cargoDeps, or cargoLock must be set"); cargoLock is
#     given to importCargoLock and not passed to the builder; doCheck defaults to true; the
#     cargo build flags and the vendored crates are kept for the checks to read.
#   importCargoLock: only its own arguments (a function without `...`); exactly one of lockFile
#     and lockFileContents; every git dependency needs an outputHashes entry named
#     "<name>-<version>" or allowBuiltinFetchGit, and an outputHashes entry must name a git
#     dependency, with nixpkgs' messages.
{
  lib,
  derivation,
}: let
  inherit (builtins) filter fromTOML hasAttr head match readFile;

  importCargoLock = {
    lockFile ? null,
    lockFileContents ? null,
    allowBuiltinFetchGit ? false,
    extraRegistries ? {},
    outputHashes ? {},
  }:
    assert (lockFile == null) != (lockFileContents == null); let
      contents =
        if lockFile != null
        then readFile lockFile
        else lockFileContents;
      parsed = fromTOML contents;
      depPackages = filter (p: p ? source) (parsed.package or []);
      gitParts = source: match "git\\+([^?#]+)(\\?(rev|tag|branch)=([^#]*))?#(.*)" source;
      isGit = p: lib.hasPrefix "git+" p.source;
      namesGitShas = builtins.listToAttrs (map (p: {
        name = "${p.name}-${p.version}";
        value = builtins.elemAt (gitParts p.source) 4;
      }) (filter isGit depPackages));
      gitShaOutputHash = builtins.listToAttrs (map (nameVer: {
        name = namesGitShas.${nameVer} or (throw "A hash was specified for ${nameVer}, but there is no corresponding git dependency.");
        value = outputHashes.${nameVer};
      }) (builtins.attrNames outputHashes));
      crate = p: let
        parts = gitParts p.source;
        sha = builtins.elemAt parts 4;
      in
        if lib.hasPrefix "registry+" p.source || lib.hasPrefix "sparse+" p.source
        then {
          inherit (p) name version;
          fetch = "fetchurl";
        }
        else if parts != null
        then {
          inherit (p) name version;
          fetch =
            if hasAttr sha gitShaOutputHash
            then "fetchgit"
            else if allowBuiltinFetchGit
            then "builtins.fetchGit"
            else
              throw ''
                No hash was found while vendoring the git dependency ${p.name}-${p.version}. You can add
                a hash through the `outputHashes` argument of `importCargoLock`:

                outputHashes = {
                  "${p.name}-${p.version}" = "<hash>";
                };

                If you use `buildRustPackage`, you can add this attribute to the `cargoLock`
                attribute set.
              '';
          url = head parts;
          rev = sha;
        }
        else throw "Cannot handle crate source: ${p.source}";
      crates = builtins.deepSeq gitShaOutputHash (map crate depPackages);
    in
      builtins.deepSeq crates (derivation "cargo-vendor-dir" {
        passthru = {inherit crates extraRegistries;};
      });

  buildRustPackage = args: let
    name = args.name or "${args.pname}-${args.version}";
    cargoDeps =
      if args.cargoVendorDir or null != null
      then null
      else if args.cargoDeps or null != null
      then args.cargoDeps
      else if args.cargoLock or null != null
      then importCargoLock args.cargoLock
      else if args.cargoHash or null != null
      then derivation "${name}-vendor" {outputHash = args.cargoHash;}
      else throw "cargoHash, cargoVendorDir, cargoDeps, or cargoLock must be set";
  in
    derivation name (builtins.removeAttrs args ["cargoLock" "depsExtraArgs" "cargoUpdateHook"]
      // {
        inherit cargoDeps;
        doCheck = args.doCheck or true;
        cargoBuildType = args.buildType or "release";
      });
in {
  inherit buildRustPackage importCargoLock;
}
