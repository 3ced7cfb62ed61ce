# The package set of the nixpkgs stand-in (see default.nix): records, not builds. A fixed point
# with overlays, as nixpkgs' is: `pkgs.extend (final: prev: { ... })` gives a set whose
# callPackage and packages see the overlay's attributes.
{
  system,
  overlays ? [],
}: let
  lib = import ./lib.nix;
  inherit (builtins) all attrNames filter functionArgs hashString intersectAttrs isBool isFunction isInt isList isPath isString removeAttrs substring;

  storePath = name: seed: "/nix/store/${substring 0 32 (hashString "sha256" "${name}\n${seed}")}-${name}";

  # What Nix can turn into a derivation attribute (an environment variable of the build).
  # An attribute set with an outPath (a flake's `self`, a source tree) is one, as in Nix.
  coercible = v: v == null || isString v || isInt v || isBool v || isPath v || lib.isDerivation v || (builtins.isAttrs v && v ? outPath) || (isList v && all coercible v);

  # A recorded derivation: `attrs` as given, plus type, name and outPath; passthru merged in,
  # as stdenv.mkDerivation does. Attributes that Nix could not pass to a builder are refused.
  derivation = name: attrs: let
    passed = removeAttrs attrs ["passthru" "meta"];
    bad = filter (n: !(coercible passed.${n})) (attrNames passed);
  in
    if bad != []
    then throw "stub derivation ${name}: attribute(s) ${builtins.toJSON bad} cannot be passed to a builder (only strings, numbers, Booleans, paths, derivations and lists of them; put the rest into passthru)"
    else
      attrs
      // (attrs.passthru or {})
      // {
        type = "derivation";
        inherit name system;
        meta = attrs.meta or {};
        outPath = storePath name (builtins.toJSON (builtins.mapAttrs (_: toString) (removeAttrs passed ["requiredSystemFeatures"])));
        drvPath = storePath "${name}.drv" "";
      };

  package = pname: bins:
    derivation pname {
      inherit pname;
      version = "0";
      passthru.bins = bins;
      meta.mainProgram = builtins.head (bins ++ [pname]);
    };

  base = pkgs: {
    # As pkgs/top-level/stage.nix marks the package set; the nixpkgs.pkgs option refuses a
    # value without it.
    _type = "pkgs";
    inherit lib system;
    path = ./.;
    stdenv = rec {
      hostPlatform = {
        inherit system;
        isLinux = true;
        isx86 = system == "x86_64-linux";
        isAarch = system == "aarch64-linux";
        isDarwin = false;
        is32bit = false;
      };
      buildPlatform = hostPlatform;
      mkDerivation = attrs: derivation attrs.name (builtins.removeAttrs attrs ["name"]);
    };
    config = {};
    inherit overlays;
    extend = overlay:
      import ./pkgs.nix {
        inherit system;
        overlays = overlays ++ [overlay];
      };

    callPackage = fn: overrides: let
      f =
        if isFunction fn
        then fn
        else import fn;
    in
      f (intersectAttrs (functionArgs f) pkgs // overrides);

    writeText = name: text: derivation name {inherit text;};
    writeScript = name: text: derivation name {inherit text;};
    writeShellScriptBin = name: text:
      derivation name {
        inherit text;
        meta.mainProgram = name;
      };
    runCommand = name: env: buildCommand: derivation name (env // {inherit buildCommand;});
    mkShell = attrs: derivation "nix-shell" attrs;
    rustPlatform = import ./rust.nix {inherit lib derivation;};

    # pkgs/build-support/testers/default.nix: a NixOS test (nixos/lib/testing) on this package
    # set, whose nodes use it read-only.
    testers.runNixOSTest = testModule:
      (import ./nixos/lib {inherit lib;}).runTest {
        _file = "pkgs.runNixOSTest implementation";
        hostPkgs = pkgs;
        imports = [(lib.setDefaultModuleLocation "the argument that was passed to pkgs.runNixOSTest" testModule)];
        node.pkgs = pkgs;
      };

    qemu = package "qemu" ["qemu-system-x86_64" "qemu-system-aarch64" "qemu-img"];
    # nixpkgs' qemu_kvm holds only the host's own system emulator.
    qemu_kvm = package "qemu-host-cpu-only" [
      (
        if system == "x86_64-linux"
        then "qemu-system-x86_64"
        else "qemu-system-aarch64"
      )
      "qemu-img"
    ];
    # nixpkgs' QEMU for NixOS tests (the test framework's default qemu.package).
    qemu_test = package "qemu-test" [
      (
        if system == "x86_64-linux"
        then "qemu-system-x86_64"
        else "qemu-system-aarch64"
      )
      "qemu-img"
    ];
    nixos-test-driver = package "nixos-test-driver" ["nixos-test-driver" "generate-driver-symbols"];
    mypy = package "mypy" ["mypy"];
    nvme-cli = package "nvme-cli" ["nvme"];
    makeWrapper = package "make-shell-wrapper-hook" [];
    fio = package "fio" ["fio"];
    util-linux = package "util-linux" ["lsblk" "mount" "mountpoint"];
    kmod = package "kmod" ["modprobe"];
    protobuf = package "protobuf" ["protoc"];
    cargo = package "cargo" ["cargo"];
    rustc = package "rustc" ["rustc"];
    rustfmt = package "rustfmt" ["rustfmt"];
    clippy = package "clippy" ["cargo-clippy"];
    deadnix = package "deadnix" ["deadnix"];
    statix = package "statix" ["statix"];
    nix = package "nix" ["nix" "nix-instantiate"];
    coreutils = package "coreutils" ["cat"];
    bash = package "bash" ["bash"];
    runtimeShell = "${pkgs.bash}/bin/bash";
  };
  pkgs = lib.fix (self: builtins.foldl' (prev: overlay: prev // overlay self prev) (base self) overlays);
in
  pkgs
