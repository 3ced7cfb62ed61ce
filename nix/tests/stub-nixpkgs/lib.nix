# A stand-in for nixpkgs' `lib`: the functions flake.nix, nix/make-test.nix, nix/package.nix and
# the NixOS modules of nix/modules use, with nixpkgs' names and meanings, written from builtins
# (no nixpkgs here). Only what the project uses is here, so a new use of a function this stand-in
# lacks fails CI with "attribute missing": add it here, with the meaning nixpkgs gives it.
let
  inherit (builtins) attrNames concatMap concatStringsSep elem filter foldl' genList head isAttrs isList length listToAttrs map replaceStrings;

  lib = {
    # --- builtins that nixpkgs' lib also offers under their own names
    inherit (builtins) attrNames attrValues concatMap elem elemAt filter head intersectAttrs isAttrs isList isString length listToAttrs mapAttrs replaceStrings stringLength substring tail;
    # Functions and functors (an attribute set with __functor, and __functionArgs for its
    # arguments), as nixpkgs' lib/trivial.nix.
    isFunction = f: builtins.isFunction f || (isAttrs f && f ? __functor && lib.isFunction (f.__functor f));
    functionArgs = f:
      if isAttrs f && f ? __functor
      then f.__functionArgs or (lib.functionArgs (f.__functor f))
      else builtins.functionArgs f;

    # --- lists and attribute sets
    imap1 = f: list: genList (i: f (i + 1) (builtins.elemAt list i)) (length list);
    imap0 = f: list: genList (i: f i (builtins.elemAt list i)) (length list);
    unique = foldl' (acc: x:
      if elem x acc
      then acc
      else acc ++ [x]) [];
    mapAttrsToList = f: set: map (name: f name set.${name}) (attrNames set);
    range = first: last:
      if first > last
      then []
      else genList (i: first + i) (last - first + 1);
    zipListsWith = f: a: b:
      genList (i: f (builtins.elemAt a i) (builtins.elemAt b i)) (
        if length a < length b
        then length a
        else length b
      );
    zipLists = lib.zipListsWith (fst: snd: {inherit fst snd;});
    forEach = xs: f: map f xs;
    flip = f: a: b: f b a;
    mapAttrs' = f: set: listToAttrs (map (name: f name set.${name}) (attrNames set));
    reverseList = list: genList (i: builtins.elemAt list (length list - 1 - i)) (length list);
    optional = cond: x:
      if cond
      then [x]
      else [];
    optionals = cond: xs:
      if cond
      then xs
      else [];
    optionalString = cond: s:
      if cond
      then s
      else "";
    optionalAttrs = cond: set:
      if cond
      then set
      else {};
    concatMapStringsSep = sep: f: list: concatStringsSep sep (map f list);
    concatStrings = concatStringsSep "";
    concatMapStrings = f: list: concatStringsSep "" (map f list);
    stringToCharacters = s: genList (i: builtins.substring i 1 s) (builtins.stringLength s);
    toLower = replaceStrings (lib.stringToCharacters "ABCDEFGHIJKLMNOPQRSTUVWXYZ") (lib.stringToCharacters "abcdefghijklmnopqrstuvwxyz");
    inherit concatStringsSep;
    nameValuePair = name: value: {inherit name value;};
    genAttrs = names: f: listToAttrs (map (n: lib.nameValuePair n (f n)) names);
    hasPrefix = prefix: s: builtins.substring 0 (builtins.stringLength prefix) s == prefix;
    last = list: builtins.elemAt list (length list - 1);
    take = count: list:
      genList (builtins.elemAt list) (
        if count < length list
        then count
        else length list
      );
    flatten = x:
      if isList x
      then concatMap lib.flatten x
      else [x];
    filterAttrs = pred: set: listToAttrs (concatMap (name: lib.optional (pred name set.${name}) (lib.nameValuePair name set.${name})) (attrNames set));
    recursiveUpdate = a: b:
      a
      // builtins.mapAttrs (n: v:
        if isAttrs v && a ? ${n} && isAttrs a.${n} && !(lib.isDerivation v)
        then lib.recursiveUpdate a.${n} v
        else v)
      b;
    fix = f: let
      x = f x;
    in
      x;
    isDerivation = x: isAttrs x && (x.type or null) == "derivation";
    showOption = concatStringsSep ".";

    # --- strings and shell
    escapeShellArg = s: "'${replaceStrings ["'"] ["'\\''"] (toString s)}'";
    escapeShellArgs = list: concatStringsSep " " (map lib.escapeShellArg list);
    makeBinPath = paths: concatStringsSep ":" (map (p: "${p}/bin") (filter (p: p != null) paths));
    getExe = drv: "${drv}/bin/${drv.meta.mainProgram or drv.pname or drv.name}";

    # --- assertions and warnings
    assertMsg = pred: msg: pred || throw msg;
    warn = msg: builtins.trace "evaluation warning: ${msg}";

    trivial.release = "25.11";

    # --- the module system's definitions and options (nix/tests/stub-nixpkgs/modules.nix uses them)
    mkOption = attrs: attrs // {_type = "option";};
    setDefaultModuleLocation = file: m: {
      _file = file;
      imports = [m];
    };
    mkEnableOption = what:
      lib.mkOption {
        type = lib.types.bool;
        default = false;
        description = "Whether to enable ${what}.";
      };
    mkOverride = priority: content: {
      _type = "override";
      inherit priority content;
    };
    mkDefault = lib.mkOverride 1000;
    mkForce = lib.mkOverride 50;
    mkVMOverride = lib.mkOverride 10;
    mkIf = condition: content: {
      _type = "if";
      inherit condition content;
    };
    mkMerge = contents: {
      _type = "merge";
      inherit contents;
    };
    literalExpression = text: {
      _type = "literalExpression";
      inherit text;
    };

    inherit (import ./modules.nix lib) evalModules types;

    # --- what nix/package.nix reads
    fileset = {
      unions = list: {
        _type = "fileset";
        paths = list;
      };
      toSource = {
        root,
        fileset,
      }: let
        outside = filter (p: !(lib.hasPrefix (toString root) (toString p))) fileset.paths;
      in
        if outside != []
        then throw "lib.fileset.toSource: ${toString (head outside)} is not under root ${toString root}"
        else if !(builtins.all builtins.pathExists fileset.paths)
        then throw "lib.fileset.toSource: a path of the file set does not exist: ${builtins.toJSON (map toString (filter (p: !builtins.pathExists p) fileset.paths))}"
        else "/nix/store/${builtins.substring 0 32 (builtins.hashString "sha256" (toString root))}-source";
    };
    licenses = {
      mit.spdxId = "MIT";
      asl20.spdxId = "Apache-2.0";
    };
    platforms.linux = ["x86_64-linux" "aarch64-linux"];
  };
in
  lib
