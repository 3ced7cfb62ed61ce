# A small module system with the behaviour of nixpkgs' lib.evalModules that the project's
# modules depend on, so that nix/check.sh can evaluate them without nixpkgs:
#
#   - modules are attribute sets, functions of { config, options, lib, pkgs, modulesPath, ... }
#     (called with just the arguments they name), or paths; `imports` are followed, and a file
#     imported twice is one module (deduplicated by its path, as nixpkgs does by `key`);
#   - options are declared with mkOption and typed; declaring one twice is an error;
#   - a definition of an option no module declares is an error ("The option `x' does not
#     exist"), also inside mkIf and mkMerge;
#   - mkIf, mkMerge and mkOverride (mkDefault, mkForce) anywhere in a definition; only the
#     definitions of the highest priority count; the type merges them (lists concatenate,
#     attribute sets merge by name, submodules evaluate, single values must agree, or
#     "conflicting definition values");
#   - a value that is not of the option's type is an error naming the option and the file;
#   - an option's `apply` gives its value from the merged definitions;
#   - types deferredModule (definitions kept as modules) and functionTo, for nixpkgs' test
#     framework (nixos/lib/testing).
#
# Returns { config; options; }. `config` checks every definition first; the modules themselves
# see the unchecked one, so a module may read options while others are still being defined.
lib: let
  inherit (builtins) all attrNames concatMap concatStringsSep elem filter foldl' functionArgs genericClosure head isAttrs isBool isFunction isList isPath isString length mapAttrs tail zipAttrsWith;

  isType = t: v: isAttrs v && (v._type or null) == t;
  isOption = isType "option";
  showPath = concatStringsSep ".";

  # A value for an error message, without forcing functions into strings.
  show = v:
    if isFunction v
    then "<function>"
    else if lib.isDerivation v
    then "<derivation ${v.outPath}>"
    else if isAttrs v
    then "{ ${concatStringsSep "; " (map (n: "${n} = ${show v.${n}}") (attrNames v))}; }"
    else if isList v
    then "[ ${concatStringsSep " " (map show v)} ]"
    else builtins.toJSON v;

  # The definitions found at `path` inside one definition (a module's `config`, or a value given
  # to an attrsOf or submodule option). mkMerge splits, mkIf and mkOverride are carried down to
  # the leaf without forcing their condition, as nixpkgs' pushDownProperties does.
  defsIn = path: def: let
    v = def.value;
  in
    if isType "merge" v
    then concatMap (c: defsIn path (def // {value = c;})) v.contents
    else if isType "if" v
    then map (d: d // {conditions = [v.condition] ++ d.conditions or [];}) (defsIn path (def // {value = v.content;}))
    else if isType "override" v
    then
      defsIn path (def
        // {
          value = v.content;
          priority = v.priority;
        })
    else if path == []
    then [def]
    else if isAttrs v && v ? ${head path}
    then defsIn (tail path) (def // {value = v.${head path};})
    else [];

  # The definitions that count: those whose conditions hold, of the best (lowest) priority, as
  # { file; value; } with the wrappers around each value removed.
  resolve = loc: defs: let
    holds = d:
      all (c:
        if isBool c
        then c
        else throw "mkIf in the definition of `${showPath loc}' in ${d.file}: the condition is a ${builtins.typeOf c}, not a Boolean")
      (d.conditions or []);
    live = filter holds (concatMap (defsIn []) defs);
    priority = d: d.priority or 100;
    best =
      foldl' (p: d:
        if priority d < p
        then priority d
        else p)
      9999
      live;
  in
    map (d: {inherit (d) file value;}) (filter (d: priority d == best) live);

  notOfType = loc: type: d: throw "A definition for option `${showPath loc}' is not of type `${type.description}'. Definition values:\n- In `${d.file}': ${show d.value}";

  mergeEqual = loc: defs: let
    first = head defs;
  in
    if all (d: d.value == first.value) defs
    then first.value
    else throw "The option `${showPath loc}' has conflicting definition values:\n${concatStringsSep "\n" (map (d: "- In `${d.file}': ${show d.value}") defs)}\nUse `lib.mkForce value` or `lib.mkDefault value` to change the priority on any of these definitions.";

  mkType = {
    description,
    check ? (_: true),
    merge ? mergeEqual,
  }: {
    _type = "type";
    inherit description check;
    # Checks every definition against `check`, then merges.
    merge = loc: defs: let
      bad = filter (d: !(check d.value)) defs;
    in
      if bad != []
      then notOfType loc {inherit description;} (head bad)
      else merge loc defs;
  };

  types = rec {
    str = mkType {
      description = "string";
      check = isString;
    };
    lines = mkType {
      description = "strings concatenated with \"\\n\"";
      check = isString;
      merge = _: defs: concatStringsSep "\n" (map (d: d.value) defs);
    };
    strMatching = regex:
      mkType {
        description = "string matching the pattern ${regex}";
        check = v: isString v && builtins.match regex v != null;
      };
    bool = mkType {
      description = "boolean";
      check = isBool;
    };
    int = mkType {
      description = "signed integer";
      check = builtins.isInt;
    };
    ints = {
      between = lo: hi:
        mkType {
          description = "integer between ${toString lo} and ${toString hi} (both inclusive)";
          check = v: builtins.isInt v && v >= lo && v <= hi;
        };
      positive = mkType {
        description = "positive integer, meaning >0";
        check = v: builtins.isInt v && v > 0;
      };
      unsigned = mkType {
        description = "unsigned integer, meaning >=0";
        check = v: builtins.isInt v && v >= 0;
      };
    };
    port = ints.between 0 65535;
    enum = values:
      mkType {
        description = "one of ${concatStringsSep ", " (map builtins.toJSON values)}";
        check = v: elem v values;
      };
    path = mkType {
      description = "absolute path";
      check = v: isPath v || (isString v && builtins.substring 0 1 v == "/") || lib.isDerivation v;
    };
    package = mkType {
      description = "package";
      check = v: lib.isDerivation v || (isAttrs v && v ? outPath);
    };
    # As nixpkgs' lib/types.nix: a package set is marked `_type = "pkgs"` (pkgs/top-level/
    # stage.nix), anything else is refused, and two definitions are not merged.
    pkgs = unique {message = "A Nixpkgs pkgs set can not be merged with another pkgs set.";} (mkType {
      description = "Nixpkgs package set";
      check = v: isAttrs v && (v._type or null) == "pkgs";
    });
    raw = mkType {
      description = "raw value";
      merge = loc: defs:
        if length defs == 1
        then (head defs).value
        else throw "The option `${showPath loc}' is defined more than once (type raw takes one definition)";
    };
    unique = {message}: type:
      mkType {
        inherit (type) description check;
        merge = loc: defs:
          if length defs == 1
          then type.merge loc defs
          else throw "The option `${showPath loc}' is defined multiple times: ${message}";
      };
    anything = mkType {
      description = "anything";
      merge = loc: defs:
        if all (d: isAttrs d.value && !lib.isDerivation d.value) defs
        then (attrsOf anything).merge loc defs
        else if all (d: isList d.value) defs
        then concatMap (d: d.value) defs
        else mergeEqual loc defs;
    };
    nullOr = type:
      mkType {
        description = "null or ${type.description}";
        check = v: v == null || type.check v;
        merge = loc: defs: let
          nulls = filter (d: d.value == null) defs;
        in
          if nulls == []
          then type.merge loc defs
          else if length nulls == length defs
          then null
          else throw "The option `${showPath loc}' is defined both null and not null, in ${concatStringsSep ", " (map (d: d.file) defs)}";
      };
    either = a: b:
      mkType {
        description = "${a.description} or ${b.description}";
        check = v: a.check v || b.check v;
        merge = loc: defs:
          if all (d: a.check d.value) defs
          then a.merge loc defs
          else if all (d: b.check d.value) defs
          then b.merge loc defs
          else mergeEqual loc defs;
      };
    oneOf = ts: foldl' either (head ts) (tail ts);
    listOf = elemType:
      mkType {
        description = "list of ${elemType.description}";
        check = isList;
        merge = loc: defs:
          concatMap (d:
            lib.imap1 (i: value:
              elemType.merge (loc ++ ["[definition ${d.file}, entry ${toString i}]"]) [
                {
                  inherit (d) file;
                  inherit value;
                }
              ])
            d.value)
          defs;
      };
    attrsOf = elemType:
      mkType {
        description = "attribute set of ${elemType.description}";
        check = isAttrs;
        merge = loc: defs: let
          # Each definition split by name; mkIf and mkMerge around the whole set are resolved
          # first, so that their conditions hold before the names are taken from them.
          whole = resolve loc defs;
          names = lib.unique (concatMap (d: attrNames d.value) whole);
          # A name whose definitions are all disabled (mkIf false) is left out, as in nixpkgs.
          perName =
            map (name: {
              inherit name;
              defs = resolve (loc ++ [name]) (concatMap (defsIn [name]) whole);
            })
            names;
        in
          builtins.listToAttrs (map (n: {
            inherit (n) name;
            value = elemType.merge (loc ++ [n.name]) n.defs;
          }) (filter (n: n.defs != []) perName));
      };
    # As attrsOf, but a value is merged only when it is used, so a value may refer to others of
    # the same set (system.build.vm to system.build.toplevel); a name whose definitions are all
    # disabled is still there, and fails when used, as in nixpkgs.
    lazyAttrsOf = elemType:
      mkType {
        description = "lazy attribute set of ${elemType.description}";
        check = isAttrs;
        merge = loc: defs: let
          whole = resolve loc defs;
          names = lib.unique (concatMap (d: attrNames d.value) whole);
        in
          lib.genAttrs names (name: let
            here = resolve (loc ++ [name]) (concatMap (defsIn [name]) whole);
          in
            if here == []
            then throw "The option `${showPath (loc ++ [name])}' is used but not defined (all its definitions are disabled)"
            else elemType.merge (loc ++ [name]) here);
      };
    # A module as a value: the definitions are kept, as modules to import elsewhere.
    deferredModule = mkType {
      description = "module";
      check = v: isAttrs v || isFunction v || isPath v;
      merge = _: defs: {
        imports =
          map (d: {
            _file = d.file;
            imports = [d.value];
          })
          defs;
      };
    };
    # A function whose result is of `elemType`; definitions are merged on each call. The merged
    # function keeps the definitions' arguments (a functor with __functionArgs), as nixpkgs'.
    functionTo = elemType:
      mkType {
        description = "function that evaluates to a(n) ${elemType.description}";
        check = isFunction;
        merge = loc: defs: {
          __functionArgs = zipAttrsWith (_: all (x: x)) (map (d: functionArgs d.value) defs);
          __functor = _: args:
            elemType.merge (loc ++ ["<function body>"]) (map (d: {
                inherit (d) file;
                value = d.value args;
              })
              defs);
        };
      };
    # A module (attribute set or function) whose options the value's attributes are.
    submodule = module:
      mkType {
        description = "submodule";
        check = isAttrs;
        merge = loc: defs:
          (evalModules {
            prefix = loc;
            specialArgs.name = lib.last loc;
            modules =
              [module]
              ++ map (d: {
                _file = d.file;
                config = d.value;
              })
              defs;
          })
          .config;
      };
  };

  evalModules = {
    modules,
    specialArgs ? {},
    prefix ? [],
  }: let
    staticArgs =
      {
        inherit lib options;
        config = rawConfig;
      }
      // specialArgs;
    # Only the arguments a module names, each looked up lazily (pkgs comes from _module.args).
    argsFor = f:
      mapAttrs (n: _:
        staticArgs.${n}
        or rawConfig._module.args.${n}
        or (throw "a module of ${showPath prefix} asks for the argument `${n}', which no module provides (_module.args)"))
      (functionArgs f);

    known = ["_file" "key" "imports" "options" "config" "disabledModules" "meta"];
    load = key: file: m: let
      v =
        if isFunction m
        then m (argsFor m)
        else m;
      full = v ? options || v ? config;
      extra = filter (n: !elem n known) (attrNames v);
    in
      if !isAttrs v
      then throw "the module ${key} is a ${builtins.typeOf v}, not an attribute set or a function"
      else if full && extra != []
      then throw "the module ${v._file or file} has `${head extra}' beside `options'/`config' (a module is either all config or options + config)"
      else {
        key = v.key or key;
        file = v._file or file;
        options = v.options or {};
        config =
          if full
          then v.config or {}
          else removeAttrs v known;
        imports = v.imports or [];
      };
    fromImport = parent: index: m:
      if isPath m || isString m
      then load (toString m) (toString m) (import m)
      else load "${parent.key}:imports[${toString index}]" parent.file m;

    allModules = genericClosure {
      startSet =
        lib.imap0 (fromImport {
          key = "<evalModules ${showPath prefix}>";
          file = "<unknown file>";
        }) (modules
          ++ [
            {
              _file = "<the module system>";
              options._module.args = lib.mkOption {
                type = types.lazyAttrsOf types.raw;
                default = {};
              };
            }
          ]);
      operator = m: lib.imap0 (fromImport m) m.imports;
    };

    declareAt = path: decls: let
      bad = filter (d: !isAttrs d) decls;
      opts = filter isOption decls;
    in
      if bad != []
      then throw "options.${showPath (prefix ++ path)} is not an option (mkOption) or a set of options"
      else if opts == []
      then zipAttrsWith (n: declareAt (path ++ [n])) decls
      else if length decls == 1
      then head opts
      else throw "The option `${showPath (prefix ++ path)}' is declared more than once";
    options = declareAt [] (map (m: m.options) allModules);

    valueOf = path: opt: let
      loc = prefix ++ path;
      defs = resolve loc (concatMap (m:
        defsIn path {
          inherit (m) file;
          value = m.config;
        })
      allModules);
      value =
        if defs != []
        then (opt.type or types.anything).merge loc defs
        else if opt ? default
        then opt.default
        else throw "The option `${showPath loc}' is used but not defined.";
    in
      # `apply` turns the merged value into the option's value, as in nixpkgs.
      if opt ? apply
      then opt.apply value
      else value;

    configAt = path: decl:
      if isOption decl
      then valueOf path decl
      else mapAttrs (n: configAt (path ++ [n])) decl;
    rawConfig = configAt [] options;

    # Definitions of options that do not exist, as "x.y.z in FILE".
    undeclared = file: path: decl: v:
      if isOption decl
      then []
      else if isType "merge" v
      then concatMap (undeclared file path decl) v.contents
      else if isType "if" v || isType "override" v
      then undeclared file path decl v.content
      else if !isAttrs v
      then ["${showPath (prefix ++ path)} (a ${builtins.typeOf v} where options are declared) in ${file}"]
      else
        concatMap (n:
          if decl ? ${n}
          then undeclared file (path ++ [n]) decl.${n} v.${n}
          else ["${showPath (prefix ++ path ++ [n])} in ${file}"])
        (attrNames v);
    problems = concatMap (m: undeclared m.file [] options m.config) allModules;
  in {
    inherit options;
    config =
      if problems == []
      then rawConfig
      else throw "The option `${head problems}' does not exist.";
  };
in {
  inherit evalModules types;
}
