# The few nixpkgs `lib` functions (and `utils` of NixOS) that
# nixos-module.nix uses, written out so that the module can be evaluated by a
# bare nix-instantiate, without nixpkgs. Same behaviour as nixpkgs for what
# the module does with them; option types carry a `check` so that wrong
# values fail here as they would in NixOS.
let
  inherit (builtins)
    all
    attrNames
    concatStringsSep
    elem
    isAttrs
    isBool
    isInt
    isList
    isString
    listToAttrs
    mapAttrs
    match
    replaceStrings
    stringLength
    substring
    toJSON
    ;

  hasPrefix = prefix: s: substring 0 (stringLength prefix) s == prefix;

  types = rec {
    str = {
      name = "str";
      check = isString;
    };
    bool = {
      name = "bool";
      check = isBool;
    };
    package = {
      name = "package";
      check = x: isAttrs x && x ? outPath;
    };
    strMatching = re: {
      name = "strMatching ${re}";
      check = x: isString x && match re x != null;
    };
    enum = values: {
      name = "enum ${toJSON values}";
      check = x: elem x values;
    };
    nullOr = t: {
      name = "nullOr ${t.name}";
      check = x: x == null || t.check x;
    };
    listOf = t: {
      name = "listOf ${t.name}";
      check = x: isList x && all t.check x;
    };
    ints = {
      unsigned = {
        name = "ints.unsigned";
        check = x: isInt x && x >= 0;
      };
      between = lo: hi: {
        name = "ints.between ${toString lo} ${toString hi}";
        check = x: isInt x && x >= lo && x <= hi;
      };
    };
    # A submodule's value is its options resolved against the definition;
    # `mergeNamed` gets the attribute name (`name` of the submodule's args).
    submodule = module: {
      name = "submodule";
      check = isAttrs;
      inherit module;
    };
    attrsOf = t: {
      name = "attrsOf ${t.name}";
      check = isAttrs;
      elemType = t;
    };
  };
in
rec {
  inherit types hasPrefix concatStringsSep;

  mkOption = attrs: attrs // { _type = "option"; };
  mkEnableOption = what: mkOption {
    type = types.bool;
    default = false;
    description = "Whether to enable ${what}.";
  };
  mkIf = condition: content: {
    _type = "if";
    inherit condition content;
  };
  literalExpression = text: {
    _type = "literalExpression";
    inherit text;
  };

  nameValuePair = name: value: { inherit name value; };
  mapAttrs' = f: set: listToAttrs (map (n: f n set.${n}) (attrNames set));
  mapAttrsToList = f: set: map (n: f n set.${n}) (attrNames set);
  optional = cond: x: if cond then [ x ] else [ ];
  optionals = cond: xs: if cond then xs else [ ];
  optionalAttrs = cond: set: if cond then set else { };
  removePrefix =
    prefix: s:
    if hasPrefix prefix s then substring (stringLength prefix) (stringLength s) s else s;
  escapeShellArg = arg: "'${replaceStrings [ "'" ] [ "'\\''" ] (toString arg)}'";
  escapeShellArgs = args: concatStringsSep " " (map escapeShellArg args);

  # nixos/lib/utils.nix
  utils = rec {
    escapeSystemdExecArg =
      arg:
      let
        s =
          if isString arg then
            arg
          else if isInt arg || (isAttrs arg && arg ? outPath) then
            toString arg
          else
            throw "escapeSystemdExecArg only allows strings, numbers and derivations";
      in
      replaceStrings [ "%" "$" ] [ "%%" "$$" ] (toJSON s);
    escapeSystemdExecArgs = args: concatStringsSep " " (map escapeSystemdExecArg args);
  };

  # A very small module system: one module, options declared once, each
  # defined at most once. Resolves defaults (lazily, so defaults may read
  # other options through `config`), checks every value against its type,
  # and applies a top-level mkIf.
  evalModule =
    module: definitions:
    let
      isOption = x: isAttrs x && (x._type or null) == "option";
      resolve =
        path: options: defs:
        mapAttrs (
          name: opt:
          let
            p = "${path}.${name}";
          in
          if isOption opt then
            resolveOption p opt (defs ? ${name}) (defs.${name} or null)
          else
            resolve p opt (defs.${name} or { })
        ) options
        // checkUnknown path options defs;
      checkUnknown =
        path: options: defs:
        let
          unknown = builtins.filter (n: !(options ? ${n})) (attrNames defs);
        in
        if unknown == [ ] then { } else throw "unknown option ${path}.${builtins.head unknown}";
      resolveOption =
        path: opt: defined: def:
        let
          t = opt.type;
          raw =
            if defined then
              def
            else if opt ? default then
              opt.default
            else
              throw "option ${path} is used but not defined";
          value =
            if t ? elemType && t.elemType ? module then
              mapAttrs (n: v: evalSubmodule "${path}.${n}" t.elemType.module n v) raw
            else
              raw;
        in
        if t.check value then value else throw "option ${path}: not a ${t.name}: ${toJSON value}";
      evalSubmodule =
        path: m: name: def:
        let
          self = resolve path (m { inherit name lib; config = self; }).options def;
        in
        self;
      lib = (import ./lib-stub.nix);
      pkgs = {
        coreutils = {
          outPath = "/nix/store/00000000000000000000000000000000-coreutils";
        };
      };
      evaluated = module {
        inherit config lib pkgs;
        inherit (lib) utils;
      };
      config = resolve "" evaluated.options definitions;
      output = evaluated.config;
    in
    {
      inherit config;
      output = if (output._type or null) == "if" then (if output.condition then output.content else { }) else output;
    };
}
