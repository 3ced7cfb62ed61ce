# buildDriver: a user's driver, from the user's repository, for `makeTest { driver = ...; }`.
#
# The driver is a cargo `[[bin]]` whose `main` is `vmcheck::harness::main(suite)` (the template,
# nix/templates/storage-test, is one): a binary is what `cargo build` leaves at the top of
# target/<triple>/release, where buildRustPackage's install hook takes every executable from, so
# nothing else is needed to build and install it. (A `[[test]] harness = false` target would need
# `cargo test --no-run` and its path fished out of cargo's JSON messages.) With `harness = false`
# on the `[[bin]]`, `cargo nextest run` still runs the suite as tests.
#
# The first argument comes from the flake (flake.nix, lib.buildDriver); the second is the driver:
#
#   buildDriver {
#     src = self;                      # the crate (or workspace): Cargo.toml, Cargo.lock, src/
#     pname = "storage-tests";         # default: Cargo.toml's package.name
#     version = "0.1.0";               # default: Cargo.toml's package.version
#     bin = pname;                     # the [[bin]] to build and install; its meta.mainProgram
#     cargoLock = {                    # buildRustPackage's cargoLock (importCargoLock's arguments)
#       lockFile = src + "/Cargo.lock";
#       allowBuiltinFetchGit = true;   # vmcheck as a git dependency, fetched by the rev in
#     };                               # Cargo.lock with builtins.fetchGit: no hash to maintain
#     ...                              # anything else goes to rustPlatform.buildRustPackage
#   }
#
# Defaults read Cargo.toml and Cargo.lock from `src` at evaluation, so `src` must be a path or a
# source tree (a flake's `self`, lib.fileset.toSource, ...), not a fetched derivation; with one,
# give pname, version and cargoLock. builtins.fetchGit is refused only under restrict-eval
# (Hydra); there, give `cargoLock.outputHashes."vmcheck-<version>" = "sha256-...";` instead
# (importCargoLock's error names the attribute).
#
# The tests are not run in the build (`doCheck = false`): they boot QEMU machines; the flake's
# checks run them (makeTest). The result is an ordinary buildRustPackage derivation:
# .overrideAttrs works on it.
{
  pkgs,
  # vmcheck's own revision, when known (a flake input from git): compared with the vmcheck
  # revision the user's Cargo.lock pins, because the driver (from Cargo.lock) talks to the
  # target daemon of nixosModules.target (from the flake input) over proto/.
  vmcheckRev ? null,
}: {
  src,
  pname ? null,
  version ? null,
  bin ? null,
  cargoLock ? null,
  meta ? {},
  ...
} @ args: let
  inherit (pkgs) lib;
  fail = msg: throw "vmcheck buildDriver: ${msg}";

  # A file of `src`, without copying `src` (a path stays a path; a source tree is its outPath).
  srcFile = file:
    if builtins.isPath src
    then src + "/${file}"
    else "${src}/${file}";

  # Read only when pname or version is not given.
  package = (builtins.fromTOML (builtins.readFile (srcFile "Cargo.toml"))).package or {};
  pname' =
    if pname != null
    then pname
    else package.name or (fail "${toString (srcFile "Cargo.toml")} has no [package] name; give pname (in a workspace: the driver's package)");
  version' =
    if version != null
    then version
    else package.version or "0.0.0";
  bin' =
    if bin != null
    then bin
    else pname';

  cargoLock' =
    if cargoLock != null
    then cargoLock
    else {
      lockFile = srcFile "Cargo.lock";
      allowBuiltinFetchGit = true;
    };

  lockFound =
    !(cargoLock' ? lockFile)
    || builtins.pathExists cargoLock'.lockFile
    || fail "${toString cargoLock'.lockFile} does not exist: run `cargo generate-lockfile` and commit Cargo.lock (a flake sees only the files git tracks)";
  lockContents =
    if cargoLock' ? lockFile
    then builtins.readFile cargoLock'.lockFile
    else cargoLock'.lockFileContents or "";
  # vmcheck's entry in the lock file: { source = "git+URL#REV" (or "git+URL?branch=B#REV"), or
  # no source (a path dependency); ... }, as [ URL REV ] when from git.
  lockedVmcheck = builtins.filter (p: p.name == "vmcheck") ((builtins.fromTOML lockContents).package or []);
  lockedGit =
    if lockedVmcheck == []
    then null
    else builtins.match "git\\+([^?#]*)[^#]*#([0-9a-f]+)" ((builtins.head lockedVmcheck).source or "");
  revChecked =
    if vmcheckRev != null && lockedGit != null && builtins.elemAt lockedGit 1 != vmcheckRev
    then let
      url = builtins.elemAt lockedGit 0;
      rev = builtins.elemAt lockedGit 1;
    in
      lib.warn ''
        vmcheck buildDriver: the driver is built from vmcheck ${rev} (Cargo.lock) but the flake input vmcheck is ${vmcheckRev}, whose target module runs the daemon the driver talks to; make them one revision (`cargo update -p vmcheck --precise ${vmcheckRev}`, or `nix flake lock --override-input vmcheck "git+${url}?rev=${rev}"`)''
      true
    else true;
in
  assert lockFound && revChecked;
    pkgs.rustPlatform.buildRustPackage (builtins.removeAttrs args ["bin"]
      // {
        pname = pname';
        version = version';
        inherit src;
        cargoLock = cargoLock';
        # Only the driver: a crate's other binaries are not part of it.
        cargoBuildFlags = ["--bin" bin'] ++ args.cargoBuildFlags or [];
        # The scenarios boot QEMU machines: they run in the flake's checks, not in this build.
        doCheck = args.doCheck or false;
        meta =
          {
            description = "vmcheck driver ${bin'}: the scenarios of ${pname'}, run by vmcheck's harness";
            platforms = ["x86_64-linux"];
          }
          // meta
          // {mainProgram = bin';};
      })
