# NixOS module: services.tvix-virtiofsd — one hardened tvix-virtiofsd
# service per microVM, all sharing one static user and one disk cache.
#
#   imports = [ /path/to/tvix-virtiofsd/nixos-module.nix ];
#   services.tvix-virtiofsd = {
#     enable = true;
#     package = pkgs.callPackage /path/to/tvix-virtiofsd/package.nix { };
#     store = "grpc+unix:///run/tvix-store.sock";
#     instances.vm1 = { };                       # /run/tvix-virtiofsd/vm1.sock
#     instances.vm2 = { numRequestQueues = 2; socketGroup = "kvm"; };
#   };
#
# Each instance becomes systemd.services."tvix-virtiofsd-<name>", with the
# same sandbox as systemd/tvix-virtiofsd@.service (see systemd/README.md).
{
  config,
  lib,
  pkgs,
  utils,
  ...
}:

let
  inherit (lib)
    hasPrefix
    literalExpression
    mapAttrs'
    mapAttrsToList
    mkEnableOption
    mkIf
    mkOption
    nameValuePair
    optional
    optionalAttrs
    optionals
    removePrefix
    types
    ;

  cfg = config.services.tvix-virtiofsd;

  runtimeDir = "/run/tvix-virtiofsd";

  storeAddress = types.strMatching "grpc\\+(unix|http)://.+";

  # Keep in step with the hardening block of systemd/tvix-virtiofsd@.service.
  hardening = {
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
    NoNewPrivileges = true;
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    PrivateDevices = true;
    DevicePolicy = "closed";
    PrivateMounts = true;
    PrivateIPC = true;
    RemoveIPC = true;
    KeyringMode = "private";
    ProtectHostname = true;
    ProtectClock = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectProc = "invisible";
    ProcSubset = "pid";
    RestrictAddressFamilies = [
      "AF_UNIX"
      "AF_INET"
      "AF_INET6"
    ];
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    SystemCallArchitectures = "native";
    SystemCallFilter = [
      "@system-service"
      "~@privileged @resources"
      # The daemon's own sandbox: Landlock, dropping capabilities, seccomp.
      "capset seccomp landlock_create_ruleset landlock_add_rule landlock_restrict_self"
    ];
    SystemCallErrorNumber = "EPERM";
    UMask = "0077";
  };

  instanceModule =
    { name, ... }:
    {
      options = {
        socketPath = mkOption {
          type = types.str;
          default = "${runtimeDir}/${name}.sock";
          defaultText = literalExpression ''"/run/tvix-virtiofsd/''${name}.sock"'';
          description = ''
            vhost-user socket the VMM connects to (cloud-hypervisor
            `--fs socket=`, QEMU `-chardev socket,path=`, microvm.nix
            `shares.*.socket`). Outside /run/tvix-virtiofsd its directory
            must already exist and be writable by the service user.
          '';
        };
        store = mkOption {
          type = types.nullOr storeAddress;
          default = cfg.store;
          defaultText = literalExpression "config.services.tvix-virtiofsd.store";
          description = "Store address for all three services (`--store`).";
        };
        blobServiceAddr = mkOption {
          type = types.nullOr storeAddress;
          default = null;
          description = "BlobService address, if not the one of `store`.";
        };
        directoryServiceAddr = mkOption {
          type = types.nullOr storeAddress;
          default = null;
          description = "DirectoryService address, if not the one of `store`.";
        };
        pathInfoServiceAddr = mkOption {
          type = types.nullOr storeAddress;
          default = null;
          description = "PathInfoService address, if not the one of `store`.";
        };
        storeProtocol = mkOption {
          type = types.enum [
            "tvix"
            "snix"
          ];
          default = cfg.storeProtocol;
          defaultText = literalExpression "config.services.tvix-virtiofsd.storeProtocol";
          description = "Package names the store speaks (`--store-protocol`).";
        };
        listRoot = mkOption {
          type = types.bool;
          default = false;
          description = "List the root directory with PathInfoService.List (`--list-root`).";
        };
        numRequestQueues = mkOption {
          type = types.ints.between 1 64;
          default = 1;
          description = "Request queues of the virtio-fs device (`--num-request-queues`).";
        };
        threadPoolSize = mkOption {
          type = types.ints.unsigned;
          default = 0;
          description = "Extra threads per queue (`--thread-pool-size`; 0: in order).";
        };
        persistent = mkOption {
          type = types.bool;
          default = true;
          description = ''
            Keep serving after the VMM disconnects (`--persistent`), so VM
            restarts and reboots reconnect. Without it the daemon exits 0 and
            the service stays stopped until restarted.
          '';
        };
        socketGroup = mkOption {
          type = types.str;
          default = cfg.group;
          defaultText = literalExpression "config.services.tvix-virtiofsd.group";
          example = "kvm";
          description = ''
            Group that may connect to the socket (mode 0660): the VMM's
            user must be in it (microvm.nix runs VMMs as `microvm:kvm`, so
            use `kvm` there). Another group than the service's own turns
            `PrivateUsers=` off for this instance, as the service must
            change the socket's group.
          '';
        };
        extraArgs = mkOption {
          type = types.listOf types.str;
          default = [ ];
          example = [
            "--log-level"
            "debug"
          ];
          description = "Further command line arguments.";
        };
      };
    };

  socketInRuntimeDir = inst: hasPrefix "${runtimeDir}/" inst.socketPath;
  cacheInVarCache = cfg.cacheDir != null && hasPrefix "/var/cache/" cfg.cacheDir;

  args =
    inst:
    [
      "--socket-path"
      inst.socketPath
    ]
    ++ optionals (inst.store != null) [
      "--store"
      inst.store
    ]
    ++ optionals (inst.blobServiceAddr != null) [
      "--blob-service-addr"
      inst.blobServiceAddr
    ]
    ++ optionals (inst.directoryServiceAddr != null) [
      "--directory-service-addr"
      inst.directoryServiceAddr
    ]
    ++ optionals (inst.pathInfoServiceAddr != null) [
      "--path-info-service-addr"
      inst.pathInfoServiceAddr
    ]
    ++ [
      "--store-protocol"
      inst.storeProtocol
      "--memory-cache-size"
      cfg.memoryCacheSize
    ]
    ++ optionals (cfg.cacheDir != null) [
      "--cache-dir"
      cfg.cacheDir
      "--disk-cache-size"
      cfg.diskCacheSize
    ]
    ++ [
      "--num-request-queues"
      (toString inst.numRequestQueues)
      "--thread-pool-size"
      (toString inst.threadPoolSize)
    ]
    ++ optional inst.listRoot "--list-root"
    ++ optional inst.persistent "--persistent"
    ++ inst.extraArgs;

  service =
    name: inst:
    let
      ownGroup = inst.socketGroup == cfg.group;
    in
    nameValuePair "tvix-virtiofsd-${name}" {
      description = "tvix-virtiofsd: Nix store for microVM ${name} (vhost-user)";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network.target" ];
      after = [ "network.target" ];
      serviceConfig =
        hardening
        // {
          Type = "notify";
          ExecStart = "${cfg.package}/bin/tvix-virtiofsd ${utils.escapeSystemdExecArgs (args inst)}";
          # The daemon binds under UMask=0077: open only the socket to its
          # group before the unit counts as started (VMMs order after it).
          ExecStartPost =
            optional (!ownGroup) (
              utils.escapeSystemdExecArgs [
                "${pkgs.coreutils}/bin/chgrp"
                inst.socketGroup
                inst.socketPath
              ]
            )
            ++ [
              (utils.escapeSystemdExecArgs [
                "${pkgs.coreutils}/bin/chmod"
                "0660"
                inst.socketPath
              ])
            ];
          Restart = "on-failure";
          RestartSec = "1s";
          User = cfg.user;
          Group = cfg.group;
          SupplementaryGroups = optional (!ownGroup) inst.socketGroup;
          # Unmapped groups cannot be named inside a private user namespace.
          PrivateUsers = ownGroup;
          RuntimeDirectory = "tvix-virtiofsd";
          RuntimeDirectoryMode = "0755";
          RuntimeDirectoryPreserve = true;
          ReadWritePaths =
            optional (!socketInRuntimeDir inst) (dirOf inst.socketPath)
            ++ optional (cfg.cacheDir != null && !cacheInVarCache) cfg.cacheDir;
          # No IP traffic unless a store is reached over TCP.
          IPAddressDeny = "any";
          IPAddressAllow = cfg.ipAddressAllow;
        }
        // optionalAttrs cacheInVarCache {
          CacheDirectory = removePrefix "/var/cache/" cfg.cacheDir;
          CacheDirectoryMode = "0700";
        };
    };
in
{
  options.services.tvix-virtiofsd = {
    enable = mkEnableOption "tvix-virtiofsd, read-only Nix stores for microVMs from a tvix-store";

    package = mkOption {
      type = types.package;
      example = literalExpression "pkgs.callPackage ./tvix-virtiofsd { }";
      description = "The tvix-virtiofsd package (its `bin/tvix-virtiofsd`).";
    };

    user = mkOption {
      type = types.str;
      default = "tvix-virtiofsd";
      description = "Static system user every instance runs as (created by the module).";
    };

    group = mkOption {
      type = types.str;
      default = "tvix-virtiofsd";
      description = "The service user's primary group (created by the module); default socket group.";
    };

    store = mkOption {
      type = types.nullOr storeAddress;
      default = "grpc+unix:///run/tvix-store.sock";
      description = "Default store address of the instances.";
    };

    storeProtocol = mkOption {
      type = types.enum [
        "tvix"
        "snix"
      ];
      default = "tvix";
      description = "Default `--store-protocol` of the instances.";
    };

    ipAddressAllow = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "10.0.0.5" ];
      description = ''
        IP addresses the services may reach (`IPAddressAllow=`); all others
        are denied. Needed only for a store reached over `grpc+http://`.
      '';
    };

    cacheDir = mkOption {
      type = types.nullOr types.str;
      default = "/var/cache/tvix-virtiofsd";
      description = ''
        Disk cache shared by all instances (`--cache-dir`); null for memory
        only. Under /var/cache it is a systemd `CacheDirectory=`, elsewhere
        it is created by tmpfiles.
      '';
    };

    diskCacheSize = mkOption {
      type = types.strMatching "[0-9]+[KkMmGg]?";
      default = "10G";
      description = "Bound of the disk cache as a whole (`--disk-cache-size`).";
    };

    memoryCacheSize = mkOption {
      type = types.strMatching "[0-9]+[KkMmGg]?";
      default = "128M";
      description = "Memory cache of each instance (`--memory-cache-size`).";
    };

    instances = mkOption {
      type = types.attrsOf (types.submodule instanceModule);
      default = { };
      example = literalExpression ''{ vm1 = { }; vm2.socketGroup = "kvm"; }'';
      description = "One daemon per microVM, keyed by the VM's name.";
    };
  };

  config = mkIf cfg.enable {
    assertions = mapAttrsToList (name: inst: {
      assertion =
        inst.store != null
        || (
          inst.blobServiceAddr != null && inst.directoryServiceAddr != null && inst.pathInfoServiceAddr != null
        );
      message = "services.tvix-virtiofsd.instances.${name}: set store or all three *ServiceAddr.";
    }) cfg.instances;

    users.users.${cfg.user} = {
      isSystemUser = true;
      group = cfg.group;
      description = "tvix-virtiofsd (Nix store for microVMs)";
    };
    users.groups.${cfg.group} = { };

    systemd.tmpfiles.rules =
      optional (cfg.cacheDir != null && !cacheInVarCache) "d ${cfg.cacheDir} 0700 ${cfg.user} ${cfg.group} - -";

    systemd.services = mapAttrs' service cfg.instances;
  };
}
