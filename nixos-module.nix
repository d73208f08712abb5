# NixOS module: services.tvix-virtiofsd — one hardened tvix-virtiofsd
# service per microVM, all running as one static user and sharing the
# content-addressed objects of one disk cache, each in a mount view of its
# own.
#
#   imports = [ tvix-virtiofsd.nixosModules.default ];   # or ./nixos-module.nix
#   services.tvix-virtiofsd = {
#     enable = true;
#     store = "grpc+unix:///run/tvix-store.sock";
#     instances.vm1 = { };            # /run/tvix-virtiofsd/vm1/vhost-user.sock
#     instances.vm2 = { numRequestQueues = 2; socketGroup = "kvm"; };
#   };
#
# Each instance becomes systemd.services."tvix-virtiofsd-<name>", with the
# sandbox and mount view of systemd/tvix-virtiofsd@.service (see
# systemd/README.md); tests/nixos/ keep the two the same. The parts:
# systemd/nixos/: options.nix (the options), units.nix (an instance's
# units, with command-line.nix and hardening.nix), assertions.nix (wrong
# combinations), common.nix (what they share).
{
  config,
  lib,
  options,
  pkgs,
  utils,
  ...
}:

let
  inherit (lib)
    attrNames
    filterAttrs
    mapAttrs'
    mkIf
    optionals
    ;
  common = import ./systemd/nixos/common.nix { inherit config lib options; };
  inherit (common)
    cacheInVarCache
    cfg
    mappingsDir
    objectsDir
    ;
  units = import ./systemd/nixos/units.nix { inherit lib pkgs utils common; };
  checks = import ./systemd/nixos/assertions.nix { inherit lib common; };
in
{
  imports = [ ./systemd/nixos/options.nix ];

  config = mkIf cfg.enable {
    inherit (checks) assertions warnings;

    users.users.${cfg.user} = {
      isSystemUser = true;
      group = cfg.group;
      description = "tvix-virtiofsd (Nix store for microVMs)";
    };
    users.groups.${cfg.group} = { };

    systemd.tmpfiles.rules = optionals (cfg.cacheDir != null && !cacheInVarCache) (
      map (dir: "d ${dir} 0700 ${cfg.user} ${cfg.group} - -") (
        [
          cfg.cacheDir
          "${cfg.cacheDir}/v2"
          "${cfg.cacheDir}/v2/instances"
          objectsDir
        ]
        ++ map mappingsDir (attrNames cfg.instances)
      )
    );

    systemd.services = mapAttrs' units.service cfg.instances;
    systemd.sockets = mapAttrs' units.socket (filterAttrs (_: inst: inst.socketActivation) cfg.instances);
  };
}

