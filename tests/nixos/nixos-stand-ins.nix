# What nixos-module.nix takes from NixOS itself, which the nixpkgs library
# alone does not have: the declarations of the NixOS options it defines or
# reads (assertions, warnings, users, systemd services, sockets and
# tmpfiles, the kernel), `utils.escapeSystemdExecArg(s)` of nixos/lib/utils.nix, and of
# `pkgs` the one package it names (coreutils) and the host's system.
# Declarations carry the real options' types where the module's values
# depend on them; nothing else of NixOS is here.
{
  kernelVersion ? "6.12.10",
  hostSystem ? "x86_64-linux",
  extraPackages ? { },
}:
{ lib, ... }:
let
  inherit (lib) mkOption types;
  listOfStr = mkOption {
    type = types.listOf types.str;
    default = [ ];
  };
  # As nixos/lib/systemd-unit-options.nix's unitOption: any value; list
  # definitions (repeatable settings) are concatenated, other definitions
  # must agree.
  unitOption = lib.mkOptionType {
    name = "systemd option";
    merge =
      loc: defs:
      let
        kept = lib.filterOverrides defs;
      in
      if lib.any (def: builtins.isList def.value) kept then
        lib.concatMap (def: lib.toList def.value) kept
      else
        lib.mergeEqualOption loc kept;
  };
in
{
  options = {
    assertions = mkOption {
      type = types.listOf (
        types.submodule {
          options.assertion = mkOption { type = types.bool; };
          options.message = mkOption { type = types.str; };
        }
      );
      default = [ ];
    };
    warnings = listOfStr;
    users.users = mkOption {
      type = types.attrsOf (
        types.submodule {
          options.isSystemUser = mkOption {
            type = types.bool;
            default = false;
          };
          options.group = mkOption { type = types.str; };
          options.description = mkOption {
            type = types.str;
            default = "";
          };
        }
      );
      default = { };
    };
    users.groups = mkOption {
      type = types.attrsOf (types.submodule { });
      default = { };
    };
    systemd.services = mkOption {
      type = types.attrsOf (
        types.submodule {
          options = {
            description = mkOption { type = types.str; };
            wantedBy = listOfStr;
            wants = listOfStr;
            after = listOfStr;
            requires = listOfStr;
            serviceConfig = mkOption {
              type = types.attrsOf unitOption;
              default = { };
            };
          };
        }
      );
      default = { };
    };
    systemd.sockets = mkOption {
      type = types.attrsOf (
        types.submodule {
          options = {
            description = mkOption { type = types.str; };
            wantedBy = listOfStr;
            socketConfig = mkOption {
              type = types.attrsOf unitOption;
              default = { };
            };
          };
        }
      );
      default = { };
    };
    systemd.tmpfiles.rules = listOfStr;
    boot.kernelPackages = mkOption {
      type = types.raw;
      default.kernel.version = kernelVersion;
    };
  };

  config._module.args = {
    pkgs = {
      coreutils = {
        type = "derivation";
        outPath = "/nix/store/00000000000000000000000000000000-coreutils";
      };
      stdenv.hostPlatform.system = hostSystem;
    }
    // extraPackages;
    # nixos/lib/utils.nix
    utils = rec {
      escapeSystemdExecArg =
        arg:
        let
          s =
            if builtins.isPath arg then
              "${arg}"
            else if builtins.isString arg then
              arg
            else if builtins.isInt arg || builtins.isFloat arg || lib.isDerivation arg then
              toString arg
            else
              throw "escapeSystemdExecArg only allows strings, paths, numbers and derivations";
        in
        builtins.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (builtins.toJSON s);
      escapeSystemdExecArgs = lib.concatMapStringsSep " " escapeSystemdExecArg;
    };
  };
}
