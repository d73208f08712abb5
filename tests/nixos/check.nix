# What the evaluation tests share: a named check, the KEY=VALUE settings of a
# unit file (as words, like systemd splits them), and the report that throws
# when a check fails.
{ lib }:
let
  inherit (lib)
    concatMap
    concatStringsSep
    elemAt
    filter
    foldl'
    head
    isBool
    isList
    length
    replaceStrings
    ;
  inherit (builtins) isString match split toJSON;

  # A unit setting's value as the words systemd reads from it.
  words =
    v:
    if isBool v then
      [ (if v then "yes" else "no") ]
    else if isList v then
      concatMap words v
    else
      filter (w: isString w && w != "") (split " +" (toString v));

  lines = text: filter isString (split "\n" (replaceStrings [ "\\\n" ] [ " " ] text));
  setting = line: match "([A-Za-z]+)=(.*)" line;
  collect =
    instance: acc: kv:
    acc
    // {
      ${head kv} = (acc.${head kv} or [ ]) ++ words (replaceStrings [ "%i" ] [ instance ] (elemAt kv 1));
    };
in
rec {
  inherit words;

  check = name: got: want: {
    inherit name got want;
    ok = got == want;
  };

  # Settings between "# --- NAME" and "# --- end of NAME" (all lines of a
  # key together), with %i as `instance`; {} when the unit has no such block.
  unitBlock =
    name: instance: text:
    (foldl' (
      acc: line:
      if match "# --- end of ${name}.*" line != null then
        acc // { inside = false; }
      else if match "# --- ${name}.*" line != null then
        acc // { inside = true; }
      else if acc.inside && setting line != null then
        acc // { values = collect instance acc.values (setting line); }
      else
        acc
    ) { inside = false; values = { }; } (lines text)).values;

  # Every setting of the unit, continuation lines joined.
  unitSettings =
    instance: text:
    foldl' (acc: line: if setting line != null then collect instance acc (setting line) else acc) { } (lines text);

  report =
    what: checks:
    let
      failed = filter (c: !c.ok) checks;
    in
    if failed == [ ] then
      { passed = length checks; }
    else
      throw "${what}: ${toString (length failed)} of ${toString (length checks)} checks failed:\n${
        concatStringsSep "\n" (map (c: "- ${c.name}: got ${toJSON c.got}, want ${toJSON c.want}") failed)
      }";
}
