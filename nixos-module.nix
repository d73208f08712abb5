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
# systemd/README.md); scripts/check-deploy.sh and tests/nixos/ keep the two
# the same.
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
    any
    attrNames
    concatMap
    concatStringsSep
    elem
    filter
    filterAttrs
    groupBy
    hasPrefix
    literalExpression
    mapAttrs'
    mapAttrsToList
    match
    mkEnableOption
    mkIf
    mkOption
    nameValuePair
    optional
    optionalAttrs
    optionals
    removePrefix
    types
    unique
    versionAtLeast
    ;

  cfg = config.services.tvix-virtiofsd;

  runtimeRoot = "/run/tvix-virtiofsd";
  varCache = "/var/cache/";

  storeAddress = types.strMatching "grpc\\+(unix:///|https?://).+";
  size = types.strMatching "[0-9]+[KkMmGg]?";
  absolutePath = types.strMatching "/.*";
  # A TLS file given as a string, never as a Nix path: a path literal would
  # copy the file into the world-readable Nix store.
  tlsFile = types.nullOr absolutePath;

  isTcp = address: address != null && match "grpc\\+https?://.*" address != null;
  isHttps = address: address != null && hasPrefix "grpc+https://" address;

  # "128M" -> 134217728, as the daemon's --*-cache-size parser.
  sizeBytes =
    s:
    let
      parts = match "([0-9]+)([KkMmGg]?)" s;
      n = lib.toInt (builtins.head parts);
      unit = lib.toLower (builtins.elemAt parts 1);
      factor =
        {
          "" = 1;
          k = 1024;
          m = 1024 * 1024;
          g = 1024 * 1024 * 1024;
        }
        .${unit};
    in
    n * factor;
  mib = 1024 * 1024;

  # What the daemon's Landlock sandbox needs of the kernel: any Landlock for
  # the sandbox, and cross-directory renames (ABI 2, Linux 5.19) for a disk
  # cache, without which the daemon does not use Landlock at all. NixOS
  # kernels are built with CONFIG_SECURITY_LANDLOCK from 5.13 on, and it is
  # active unless `security.lsm` names a list without it.
  kernelVersion = config.boot.kernelPackages.kernel.version;
  lsmList = if options ? security.lsm then config.security.lsm else [ ];
  lsmHasLandlock = lsmList == [ ] || elem "landlock" lsmList;
  kernelHasLandlock =
    lsmHasLandlock && versionAtLeast kernelVersion (if cfg.cacheDir != null then "5.19" else "5.13");

  # The instance's private directories: its own mappings and its own sockets.
  objectsDir = "${cfg.cacheDir}/v2/objects";
  mappingsDir = name: "${cfg.cacheDir}/v2/instances/${name}";
  runtimeDir = name: "${runtimeRoot}/${name}";
  cacheInVarCache = cfg.cacheDir != null && hasPrefix varCache cfg.cacheDir;

  # A per-instance option whose default is the top-level option of the same
  # name.
  inherited =
    option: extra:
    let
      top = options.services.tvix-virtiofsd.${option};
    in
    mkOption (
      {
        inherit (top) type;
        default = cfg.${option};
        defaultText = literalExpression "config.services.tvix-virtiofsd.${option}";
        description = "This instance's `${option}` (default: the top-level one).";
      }
      // lib.optionalAttrs (top ? example) { inherit (top) example; }
      // extra
    );

  instanceModule =
    { name, config, ... }:
    let
      inst = config;
      requestThreads = inst.numRequestQueues * (1 + inst.threadPoolSize);
    in
    {
      options = {
        socketPath = mkOption {
          type = absolutePath;
          default = "${runtimeDir name}/vhost-user.sock";
          example = "/var/lib/microvms/vm1/store.sock";
          defaultText = literalExpression ''"/run/tvix-virtiofsd/''${name}/vhost-user.sock"'';
          description = ''
            vhost-user socket the VMM connects to (cloud-hypervisor
            `--fs socket=`, QEMU `-chardev socket,path=`, microvm.nix
            `shares.*.socket`). Under /run/tvix-virtiofsd it must be in the
            instance's own directory, /run/tvix-virtiofsd/<name>/ (the
            others are hidden from the instance). Elsewhere its directory
            must exist and be writable by the service user, and is visible
            to every instance.
          '';
        };
        store = inherited "store" { };
        blobServiceAddr = mkOption {
          type = types.nullOr storeAddress;
          default = null;
          example = "grpc+https://blobs.example:8000";
          description = "BlobService address, if not the one of `store` (`--blob-service-addr`).";
        };
        directoryServiceAddr = mkOption {
          type = types.nullOr storeAddress;
          default = null;
          example = "grpc+unix:///run/tvix-store/directory.sock";
          description = "DirectoryService address, if not the one of `store` (`--directory-service-addr`).";
        };
        pathInfoServiceAddr = mkOption {
          type = types.nullOr storeAddress;
          default = null;
          example = "grpc+unix:///run/tvix-store/pathinfo.sock";
          description = "PathInfoService address, if not the one of `store` (`--path-info-service-addr`).";
        };
        storeProtocol = inherited "storeProtocol" { };
        storeTimeout = inherited "storeTimeout" { };
        storeCa = inherited "storeCa" { };
        storeCert = inherited "storeCert" { };
        storeKey = inherited "storeKey" { };
        cache = inherited "cache" { };
        entryTimeout = inherited "entryTimeout" { };
        negativeTimeout = inherited "negativeTimeout" { };
        memoryCacheSize = inherited "memoryCacheSize" { };
        readaheadChunks = inherited "readaheadChunks" { };
        logLevel = inherited "logLevel" { };
        seccomp = inherited "seccomp" { };
        landlock = inherited "landlock" { };
        listRoot = mkOption {
          type = types.bool;
          default = false;
          example = true;
          description = "List the root directory with PathInfoService.List (`--list-root`).";
        };
        numRequestQueues = mkOption {
          type = types.ints.between 1 64;
          default = 1;
          example = 2;
          description = ''
            Request queues of the virtio-fs device (`--num-request-queues`);
            keep the VMM's `num_queues` the same.
          '';
        };
        queueSize = mkOption {
          type = types.ints.between 2 32768;
          default = 1024;
          example = 256;
          description = "Largest virtqueue size offered to the VMM (`--queue-size`).";
        };
        threadPoolSize = mkOption {
          type = types.ints.unsigned;
          default = 0;
          example = 4;
          description = "Extra threads per queue (`--thread-pool-size`; 0: in order).";
        };
        socketActivation = mkOption {
          type = types.bool;
          default = false;
          example = true;
          description = ''
            Let systemd own the socket (`systemd.sockets."tvix-virtiofsd-<name>"`,
            as systemd/tvix-virtiofsd@.socket): the service starts on the
            VMM's first connection with the socket as `--fd 3`, and exits
            when the VMM disconnects (`persistent` does not apply). Its
            mount view then has no socket directory at all, as
            tvix-virtiofsd-activated@.service.
          '';
        };
        persistent = mkOption {
          type = types.bool;
          default = true;
          example = false;
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
        metricsListen = mkOption {
          type = types.nullOr (types.strMatching "(/.+|.+:[0-9]+)");
          default = null;
          example = "127.0.0.1:9851";
          description = ''
            Serve Prometheus metrics here (`--metrics-listen`): a unix
            socket path (under /run/tvix-virtiofsd only in the instance's own
            directory, e.g. /run/tvix-virtiofsd/<name>/metrics.sock) or a
            TCP `host:port`. A loopback address is allowed through
            `IPAddressDeny=` automatically; for any other, add the
            scraper's address to `ipAddressAllow`.
          '';
        };
        metricsFile = mkOption {
          type = types.nullOr absolutePath;
          default = null;
          example = "/var/lib/prometheus-node-exporter-text-files/tvix-virtiofsd-vm1.prom";
          description = ''
            Write Prometheus metrics to this file, replaced atomically, for
            node_exporter's textfile collector (`--metrics-file`). Its
            directory must exist; it becomes writable for the service.
          '';
        };
        memoryMax = mkOption {
          type = types.nullOr size;
          default = "${toString ((sizeBytes inst.memoryCacheSize + 256 * mib + 32 * mib * requestThreads) / mib)}M";
          defaultText = literalExpression ''
            memoryCacheSize + 256 MiB + 32 MiB per request thread
            (numRequestQueues * (1 + threadPoolSize))'';
          example = "1G";
          description = ''
            `MemoryMax=` of the service; null for no limit. The default is
            the memory cache, 256 MiB for the runtime (store messages of up
            to 16 MiB, read-ahead in flight, stacks) and 32 MiB per request
            thread (one message and one small blob each). The disk cache's
            page cache is reclaimed under the limit, so it does not count.
          '';
        };
        tasksMax = mkOption {
          type = types.ints.positive;
          default = 576 + 2 * (inst.numRequestQueues + 1) * (1 + inst.threadPoolSize);
          example = 2048;
          defaultText = literalExpression "576 + 2 * (numRequestQueues + 1) * (1 + threadPoolSize)";
          description = ''
            `TasksMax=` of the service. The daemon's threads: the async
            runtime's blocking pool (at most 512, for disk cache writes),
            two runtime workers, read-ahead, stats, and the queues' threads;
            the default leaves 64 to spare and room for twice the queues.
          '';
        };
        limitNofile = mkOption {
          type = types.ints.positive;
          default = 4096 + 64 * requestThreads;
          example = 16384;
          defaultText = literalExpression "4096 + 64 * numRequestQueues * (1 + threadPoolSize)";
          description = ''
            `LimitNOFILE=` of the service: store connections, the queues'
            eventfds, cache files open during a request and the whole
            blobs the guest holds open.
          '';
        };
        metricsListenPath = mkOption {
          type = types.nullOr types.str;
          internal = true;
          readOnly = true;
          default = if inst.metricsListen != null && hasPrefix "/" inst.metricsListen then inst.metricsListen else null;
          description = "`metricsListen` when it is a unix socket path.";
        };
        extraArgs = mkOption {
          type = types.listOf types.str;
          default = [ ];
          example = [
            "--stats-file"
            "/run/tvix-virtiofsd/vm1/stats"
          ];
          description = "Further command line arguments.";
        };
      };
    };

  # An ExecStart argument that systemd expands (a credential path `%d/...`),
  # as opposed to a literal one that escapeSystemdExecArgs protects.
  specifier = arg: { specifier = arg; };
  renderArg =
    arg: if builtins.isAttrs arg then ''"${arg.specifier}"'' else utils.escapeSystemdExecArg arg;

  credentials =
    inst:
    filter (c: c.file != null) [
      {
        name = "store-ca";
        flag = "--store-ca";
        file = inst.storeCa;
      }
      {
        name = "store-cert";
        flag = "--store-cert";
        file = inst.storeCert;
      }
      {
        name = "store-key";
        flag = "--store-key";
        file = inst.storeKey;
      }
    ];

  valueFlag = flag: value: optionals (value != null) [
    flag
    (toString value)
  ];

  args =
    name: inst:
    (
      if inst.socketActivation then
        [
          "--fd"
          "3"
        ]
      else
        [
          "--socket-path"
          inst.socketPath
        ]
    )
    ++ [
      "--instance"
      name
    ]
    ++ valueFlag "--store" inst.store
    ++ valueFlag "--blob-service-addr" inst.blobServiceAddr
    ++ valueFlag "--directory-service-addr" inst.directoryServiceAddr
    ++ valueFlag "--path-info-service-addr" inst.pathInfoServiceAddr
    ++ [
      "--store-protocol"
      inst.storeProtocol
      "--store-timeout"
      (toString inst.storeTimeout)
    ]
    ++ concatMap (c: [
      c.flag
      (specifier "%d/${c.name}")
    ]) (credentials inst)
    ++ [
      "--cache"
      inst.cache
    ]
    ++ valueFlag "--entry-timeout" inst.entryTimeout
    ++ [
      "--negative-timeout"
      (toString inst.negativeTimeout)
      "--memory-cache-size"
      inst.memoryCacheSize
      "--readahead-chunks"
      (toString inst.readaheadChunks)
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
      "--queue-size"
      (toString inst.queueSize)
      "--thread-pool-size"
      (toString inst.threadPoolSize)
    ]
    ++ optional inst.listRoot "--list-root"
    ++ optional (inst.persistent && !inst.socketActivation) "--persistent"
    ++ valueFlag "--metrics-listen" inst.metricsListen
    ++ valueFlag "--metrics-file" inst.metricsFile
    ++ [
      "--log-level"
      inst.logLevel
      "--seccomp"
      inst.seccomp
      "--landlock"
      inst.landlock
    ]
    ++ inst.extraArgs;

  metricsSocket = inst: inst.metricsListen != null && hasPrefix "/" inst.metricsListen;
  metricsTcpHost =
    inst:
    if inst.metricsListen == null || metricsSocket inst then
      null
    else
      builtins.head (match "\\[?([^]]*)]?:[0-9]+" inst.metricsListen);
  loopbackHosts = [
    "127.0.0.1"
    "::1"
    "localhost"
  ];

  # Paths beneath the shared trees exist in an instance's view only in its
  # own directories; a socket-activated instance has none under /run.
  inOwnRuntimeDir = name: path: hasPrefix "${runtimeDir name}/" path;
  underRuntimeRoot = path: hasPrefix "${runtimeRoot}/" path;
  visibleToInstance =
    name: inst: path:
    path == null || !underRuntimeRoot path || (!inst.socketActivation && inOwnRuntimeDir name path);
  # Outside the hidden trees: the directory must be made writable.
  writableDirOf = name: path: optional (path != null && !underRuntimeRoot path) (dirOf path);

  service =
    name: inst:
    let
      ownGroup = inst.socketGroup == cfg.group;
      creds = credentials inst;
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
          ExecStart = "${cfg.package}/bin/tvix-virtiofsd ${concatStringsSep " " (map renderArg (args name inst))}";
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

  # Assertions: each says what to change.
  instanceAssertions =
    name: inst:
    let
      at = "services.tvix-virtiofsd.instances.${name}";
      # Where under /run the instance may put a file, if anywhere.
      ownDirHint =
        file:
        if inst.socketActivation then
          "(a socket-activated instance has no directory there) "
        else
          "${runtimeDir name}/${file} or ";
      addresses = [
        inst.store
        inst.blobServiceAddr
        inst.directoryServiceAddr
        inst.pathInfoServiceAddr
      ];
      tls = filter (x: x != null) [
        inst.storeCa
        inst.storeCert
        inst.storeKey
      ];
    in
    [
      {
        assertion = match "[A-Za-z0-9_:@-][A-Za-z0-9_.:@-]{0,199}" name != null;
        message = "${at}: the instance name must be 1 to 200 of A-Z a-z 0-9 _ - . : @, not starting with a dot (it becomes --instance and a directory name).";
      }
      {
        assertion =
          inst.store != null
          || (inst.blobServiceAddr != null && inst.directoryServiceAddr != null && inst.pathInfoServiceAddr != null);
        message = "${at}: set store, or all three of blobServiceAddr, directoryServiceAddr and pathInfoServiceAddr.";
      }
      {
        assertion = (inst.storeCert == null) == (inst.storeKey == null);
        message = "${at}: storeCert and storeKey go together (mutual TLS): set both or neither.";
      }
      {
        assertion = tls == [ ] || any isHttps addresses;
        message = "${at}: storeCa, storeCert and storeKey are used only for grpc+https:// stores; use a grpc+https:// address or unset them.";
      }
      {
        assertion = inst.storeKey == null || !hasPrefix "${builtins.storeDir}/" inst.storeKey;
        message = "${at}: storeKey ${toString inst.storeKey} is in the world-readable Nix store; keep the key outside it (e.g. /run/keys/tvix-virtiofsd.key, or a secrets manager's path) and give that path as a string.";
      }
      {
        assertion = !any isTcp addresses || cfg.ipAddressAllow != [ ];
        message = "${at}: the store is reached over TCP but all IP traffic is denied: add the store's address to services.tvix-virtiofsd.ipAddressAllow.";
      }
      {
        assertion = !underRuntimeRoot inst.socketPath || inOwnRuntimeDir name inst.socketPath;
        message = "${at}: socketPath ${inst.socketPath} is hidden from the instance; under ${runtimeRoot} use ${runtimeDir name}/ (e.g. the default ${runtimeDir name}/vhost-user.sock).";
      }
      {
        assertion = visibleToInstance name inst inst.metricsListenPath;
        message = "${at}: metricsListen ${toString inst.metricsListen} is hidden from the instance; use ${ownDirHint "metrics.sock"}a path outside ${runtimeRoot}.";
      }
      {
        assertion = visibleToInstance name inst inst.metricsFile;
        message = "${at}: metricsFile ${toString inst.metricsFile} is hidden from the instance; use ${ownDirHint "metrics.prom"}a path outside ${runtimeRoot} (e.g. in node_exporter's textfile directory).";
      }
      {
        assertion =
          inst.metricsListen == null
          || metricsSocket inst
          || elem (metricsTcpHost inst) loopbackHosts
          || cfg.ipAddressAllow != [ ];
        message = "${at}: metricsListen ${toString inst.metricsListen} is not a loopback address and all IP traffic is denied: add the scraper's address to services.tvix-virtiofsd.ipAddressAllow, or listen on 127.0.0.1 or a unix socket.";
      }
      {
        assertion = inst.memoryMax == null || sizeBytes inst.memoryMax > sizeBytes inst.memoryCacheSize;
        message = "${at}: memoryMax ${toString inst.memoryMax} leaves no room beside memoryCacheSize ${inst.memoryCacheSize}: raise memoryMax (null: no limit) or lower memoryCacheSize.";
      }
      {
        assertion = inst.landlock != "require" || kernelHasLandlock;
        message = "${at}: landlock = \"require\" but the kernel (${kernelVersion}${lib.optionalString (!lsmHasLandlock) ", security.lsm without landlock"}) cannot enforce what the daemon needs (Linux >= ${if cfg.cacheDir != null then "5.19 with a disk cache" else "5.13"}, landlock in security.lsm): use a newer kernel, or set landlock = \"auto\".";
      }
    ];

  # Two instances must not share what only one can hold.
  clashes =
    what: key:
    let
      groups = groupBy key (filter (name: key name != null) (attrNames cfg.instances));
    in
    mapAttrsToList (value: names: {
      assertion = builtins.length names == 1;
      message = "services.tvix-virtiofsd.instances.{${concatStringsSep "," names}}: the same ${what} ${value}; give each instance its own.";
    }) groups;
in
{
  options.services.tvix-virtiofsd = {
    enable = mkEnableOption "tvix-virtiofsd, read-only Nix stores for microVMs from a tvix-store";

    package = mkOption {
      type = types.package;
      example = literalExpression "pkgs.callPackage ./tvix-virtiofsd/package.nix { }";
      description = ''
        The tvix-virtiofsd package (its `bin/tvix-virtiofsd`). The flake's
        `nixosModules.default` sets it to the flake's package.
      '';
    };

    user = mkOption {
      type = types.str;
      default = "tvix-virtiofsd";
      example = "microvm-store";
      description = "Static system user every instance runs as (created by the module).";
    };

    group = mkOption {
      type = types.str;
      default = "tvix-virtiofsd";
      example = "microvm-store";
      description = "The service user's primary group (created by the module); default socket group.";
    };

    store = mkOption {
      type = types.nullOr storeAddress;
      default = "grpc+unix:///run/tvix-store.sock";
      example = "grpc+https://store.example:8000";
      description = ''
        Default store address of the instances (`--store`):
        `grpc+unix:///abs/path.sock`, `grpc+http://host:port` or
        `grpc+https://host:port`. A TCP store's address must be in
        `ipAddressAllow`.
      '';
    };

    storeProtocol = mkOption {
      type = types.enum [
        "tvix"
        "snix"
      ];
      default = "tvix";
      example = "snix";
      description = "Package names the store speaks (`--store-protocol`): tvix-store or snix.";
    };

    storeTimeout = mkOption {
      type = types.ints.positive;
      default = 10;
      example = 30;
      description = ''
        Seconds to wait for the store to connect, answer or send the next
        message of a stream before the guest gets EIO (`--store-timeout`).
      '';
    };

    storeCa = mkOption {
      type = tlsFile;
      default = null;
      example = "/etc/ssl/tvix-store-ca.pem";
      description = ''
        CA certificate (PEM) that a `grpc+https://` store must be signed by,
        instead of the system roots (`--store-ca`). Passed to the service
        as a systemd credential (`LoadCredential=`).
      '';
    };

    storeCert = mkOption {
      type = tlsFile;
      default = null;
      example = "/run/keys/tvix-virtiofsd.crt";
      description = ''
        Client certificate (PEM) for mutual TLS with the store
        (`--store-cert`), with `storeKey`. A systemd credential, like the key.
      '';
    };

    storeKey = mkOption {
      type = tlsFile;
      default = null;
      example = "/run/keys/tvix-virtiofsd.key";
      description = ''
        Client private key (PEM) for mutual TLS (`--store-key`). Give the
        path as a string, outside the Nix store: systemd copies the file
        into the service's credentials directory at start
        (`LoadCredential=`), so the key lands neither in the Nix store nor
        in the unit, and only the service can read that copy.
      '';
    };

    ipAddressAllow = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "10.0.0.5" ];
      description = ''
        IP addresses the services may exchange traffic with
        (`IPAddressAllow=`); all others are denied. Needed for a store
        reached over `grpc+http(s)://` (its address; a host name's
        resolver too) and for a non-loopback `metricsListen` (the
        scraper's address).
      '';
    };

    cache = mkOption {
      type = types.enum [
        "never"
        "auto"
        "always"
      ];
      default = "always";
      example = "auto";
      description = ''
        What the guest may cache (`--cache`): `never` (direct I/O, no name
        or attribute caching), `auto` (page cache within an open, 1 s
        timeouts) or `always` (page cache kept across opens, long timeouts:
        store content never changes).
      '';
    };

    entryTimeout = mkOption {
      type = types.nullOr types.ints.unsigned;
      default = null;
      example = 3600;
      description = ''
        Seconds the guest may cache names and attributes
        (`--entry-timeout`); null: by `cache` (0, 1 or 86400).
      '';
    };

    negativeTimeout = mkOption {
      type = types.ints.unsigned;
      default = 1;
      example = 0;
      description = "Seconds the guest may remember that a store path does not exist (`--negative-timeout`).";
    };

    cacheDir = mkOption {
      type = types.nullOr absolutePath;
      default = "/var/cache/tvix-virtiofsd";
      example = "/srv/tvix-virtiofsd";
      description = ''
        Disk cache shared by all instances (`--cache-dir`); null for memory
        only. Each instance sees only its `v2/objects` (shared,
        content-addressed, verified on every read) and its own
        `v2/instances/<name>` (private mappings). Under /var/cache these are
        systemd `CacheDirectory=` entries, elsewhere they are created by
        tmpfiles.
      '';
    };

    diskCacheSize = mkOption {
      type = size;
      default = "10G";
      example = "50G";
      description = "Bound of the disk cache as a whole (`--disk-cache-size`), the same for every instance.";
    };

    memoryCacheSize = mkOption {
      type = size;
      default = "128M";
      example = "512M";
      description = "Memory cache of each instance (`--memory-cache-size`); the default `memoryMax` grows with it.";
    };

    readaheadChunks = mkOption {
      type = types.ints.unsigned;
      default = 32;
      example = 64;
      description = "Chunks fetched ahead of a sequential reader (`--readahead-chunks`; 0: off).";
    };

    logLevel = mkOption {
      type = types.enum [
        "error"
        "warn"
        "info"
        "debug"
        "trace"
      ];
      default = "info";
      example = "debug";
      description = "Log level (`--log-level`); `debug` logs one span per FUSE operation.";
    };

    seccomp = mkOption {
      type = types.enum [
        "kill"
        "log"
        "none"
      ];
      default = "kill";
      example = "log";
      description = ''
        Syscalls outside the daemon's allowlist (`--seccomp`): kill the
        daemon, only log them (to find one missing from the policy), or no
        filter. systemd's own `SystemCallFilter=` stays in force.
      '';
    };

    landlock = mkOption {
      type = types.enum [
        "auto"
        "require"
        "off"
      ];
      default = if kernelHasLandlock then "require" else "auto";
      example = "auto";
      defaultText = literalExpression ''
        "require" when config.boot.kernelPackages.kernel can enforce it
        (>= 5.19 with a disk cache, >= 5.13 without; landlock in
        security.lsm if that is set), "auto" otherwise'';
      description = ''
        Landlock confinement of files and TCP (`--landlock`). On NixOS the
        kernel is part of the same configuration, so the module knows
        whether it can enforce Landlock: there the default is `require`,
        which turns a silent loss of confinement (`auto` only warns in the
        log) into a service that fails to start. `auto` uses what the
        kernel supports; `off` disables it.
      '';
    };

    instances = mkOption {
      type = types.attrsOf (types.submodule instanceModule);
      default = { };
      example = literalExpression ''
        {
          vm1 = { };
          vm2 = {
            socketGroup = "kvm";
            metricsListen = "/run/tvix-virtiofsd/vm2/metrics.sock";
          };
        }'';
      description = "One daemon per microVM, keyed by the VM's name (also its `--instance`).";
    };
  };

  config = mkIf cfg.enable {
    assertions =
      concatMap (name: instanceAssertions name cfg.instances.${name}) (attrNames cfg.instances)
      ++ clashes "socketPath" (name: cfg.instances.${name}.socketPath)
      ++ clashes "metricsListen" (name: cfg.instances.${name}.metricsListen)
      ++ clashes "metricsFile" (name: cfg.instances.${name}.metricsFile);

    warnings =
      mapAttrsToList (
        name: _: "services.tvix-virtiofsd.instances.${name}: seccomp = \"none\" and landlock = \"off\" leave the daemon without its own sandbox."
      ) (filterAttrs (_: inst: inst.seccomp == "none" && inst.landlock == "off") cfg.instances)
      ++ mapAttrsToList (
        name: inst: "services.tvix-virtiofsd.instances.${name}: socketPath ${inst.socketPath} is outside ${runtimeRoot}, so the other instances can see it."
      ) (filterAttrs (_: inst: !underRuntimeRoot inst.socketPath) cfg.instances);

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

    systemd.services = mapAttrs' service cfg.instances;
    systemd.sockets = mapAttrs' socket (filterAttrs (_: inst: inst.socketActivation) cfg.instances);
  };
}
