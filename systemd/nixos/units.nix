# The systemd units of one instance: its service (and, with
# socketActivation, its socket), with the sandbox, the mount view, the
# credentials and the limits.
{
  lib,
  pkgs,
  utils,
  common,
}:

let
  inherit (lib)
    elem
    nameValuePair
    optional
    optionalAttrs
    optionals
    removePrefix
    unique
    ;
  inherit (common)
    cacheInVarCache
    cfg
    loopbackHosts
    mappingsDir
    metricsTcpHost
    objectsDir
    runtimeDir
    runtimeRoot
    varCache
    writableDirOf
    ;
  commandLine = import ./command-line.nix { inherit lib utils common; };
  hardening = import ./hardening.nix;

  service =
    name: inst:
    let
      ownGroup = inst.socketGroup == cfg.group;
      creds = commandLine.credentials inst;
    in
    nameValuePair "tvix-virtiofsd-${name}" {
      description = "tvix-virtiofsd: Nix store for microVM ${name} (${
        if inst.socketActivation then "socket-activated" else "vhost-user"
      })";
      wantedBy = optional (!inst.socketActivation) "multi-user.target";
      wants = [ "network.target" ];
      after = [ "network.target" ] ++ optional inst.socketActivation "tvix-virtiofsd-${name}.socket";
      requires = optional inst.socketActivation "tvix-virtiofsd-${name}.socket";
      serviceConfig =
        hardening
        // {
          Type = "notify";
          ExecStart = commandLine.execStart name inst;
          Restart = "on-failure";
          RestartSec = "1s";
          User = cfg.user;
          Group = cfg.group;
          # TLS files are copied by systemd into this unit's credentials
          # directory (%d, readable only by the service), so the key is
          # neither in the Nix store nor in the unit.
          LoadCredential = map (c: "${c.name}:${c.file}") creds;
          ReadWritePaths = unique (
            optionals (!inst.socketActivation) (writableDirOf name inst.socketPath)
            ++ writableDirOf name inst.metricsListenPath
            ++ writableDirOf name inst.metricsFile
            ++ optionals (cfg.cacheDir != null && !cacheInVarCache) [
              objectsDir
              (mappingsDir name)
            ]
          );
          # No IP traffic unless a store or a scraper is reached over TCP.
          IPAddressDeny = "any";
          IPAddressAllow =
            cfg.ipAddressAllow ++ optional (elem (metricsTcpHost inst) loopbackHosts) "localhost";
          TasksMax = inst.tasksMax;
          LimitNOFILE = inst.limitNofile;
        }
        // optionalAttrs (inst.memoryMax != null) { MemoryMax = inst.memoryMax; }
        // mountView name inst
        // optionalAttrs cacheInVarCache {
          CacheDirectory = [
            (removePrefix varCache objectsDir)
            (removePrefix varCache (mappingsDir name))
          ];
          CacheDirectoryMode = "0700";
        }
        // optionalAttrs (!inst.socketActivation) {
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
          SupplementaryGroups = optional (!ownGroup) inst.socketGroup;
          # Unmapped groups cannot be named inside a private user namespace.
          PrivateUsers = ownGroup;
          RuntimeDirectory = "tvix-virtiofsd/${name}";
          RuntimeDirectoryMode = "0755";
          RuntimeDirectoryPreserve = true;
        }
        # systemd makes the socket with its group and mode.
        // optionalAttrs inst.socketActivation { PrivateUsers = true; };
    };


  # As systemd/tvix-virtiofsd@.socket.
  socket =
    name: inst:
    nameValuePair "tvix-virtiofsd-${name}" {
      description = "tvix-virtiofsd: vhost-user socket for microVM ${name}";
      wantedBy = [ "sockets.target" ];
      socketConfig = {
        ListenStream = inst.socketPath;
        Service = "tvix-virtiofsd-${name}.service";
        SocketUser = cfg.user;
        SocketGroup = inst.socketGroup;
        SocketMode = "0660";
        DirectoryMode = "0755";
        RemoveOnStop = true;
        Accept = false;
      };
    };


  # Keep in step with the mount view blocks of systemd/tvix-virtiofsd@.service
  # and tvix-virtiofsd-activated@.service: the instance sees the shared
  # objects, its own mappings and (unless systemd holds its socket) its own
  # socket directory; the other instances' mappings and sockets do not exist.
  mountView = name: inst: {
    TemporaryFileSystem = optional (cfg.cacheDir != null) "${cfg.cacheDir}:ro" ++ [ "${runtimeRoot}:ro" ];
    BindPaths =
      optionals (cfg.cacheDir != null) [
        objectsDir
        (mappingsDir name)
      ]
      ++ optional (!inst.socketActivation) (runtimeDir name);
  };

in
{
  inherit service socket;
}
