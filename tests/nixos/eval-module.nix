# Evaluates nixos-module.nix with the real nixpkgs library (lib.evalModules)
# and the NixOS stand-ins of nixos-stand-ins.nix, and checks what it
# produces: each instance's ExecStart, credentials, limits and mount view;
# the sandbox and mount view against the blocks of
# systemd/tvix-virtiofsd@.service (so unit and module stay the same); the
# Landlock default per kernel; and that each wrong combination fails with
# the assertion that says what to change. Throws on any mismatch:
#   nix-instantiate --eval --strict tests/nixos/eval-module.nix \
#     --arg nixpkgsLib ../shared/nixpkgs-lib/lib
{
  nixpkgsLib,
  unitDir ? ../../systemd,
}:
let
  lib = import nixpkgsLib;
  inherit (lib)
    any
    attrNames
    concatStringsSep
    filter
    hasInfix
    length
    ;
  t = import ./check.nix { inherit lib; };
  inherit (t) check;

  inherit (import ./eval-config.nix { inherit lib; })
    package
    coreutils
    eval
    evalModules
    enabled
    ;
  bin = "${package}/bin/tvix-virtiofsd";
  failedAssertions = config: map (a: a.message) (filter (a: !a.assertion) config.assertions);

  on = eval { } (enabled {
    diskCacheSize = "20G";
    ipAddressAllow = [ "10.0.0.5" ];
    instances.vm1 = { };
    instances.vm2 = {
      store = null;
      blobServiceAddr = "grpc+https://10.0.0.5:8000";
      directoryServiceAddr = "grpc+unix:///run/dir.sock";
      pathInfoServiceAddr = "grpc+unix:///run/pathinfo.sock";
      storeCa = "/etc/ssl/store-ca.pem";
      storeCert = "/run/keys/vm2.crt";
      storeKey = "/run/keys/vm2.key";
      storeProtocol = "snix";
      storeTimeout = 30;
      cache = "auto";
      entryTimeout = 5;
      negativeTimeout = 0;
      memoryCacheSize = "1G";
      readaheadChunks = 0;
      prefetchBytes = "0";
      prefetchGuess = "none";
      logLevel = "debug";
      seccomp = "log";
      landlock = "auto";
      listRoot = true;
      numRequestQueues = 2;
      queueSize = 256;
      threadPoolSize = 3;
      queuePollUs = 0;
      persistent = false;
      socketGroup = "kvm";
      socketPath = "/var/lib/microvms/vm2/store.sock";
      metricsListen = "/run/tvix-virtiofsd/vm2/metrics.sock";
      metricsFile = "/var/lib/node-exporter/vm2.prom";
      extraArgs = [
        "--stats-file"
        "/run/tvix-virtiofsd/vm2/stats"
      ];
    };
  });
  # Socket-activated, as tvix-virtiofsd@.socket + tvix-virtiofsd-activated@.service.
  activated = eval { } (enabled {
    instances.vm3 = {
      socketActivation = true;
      socketGroup = "kvm";
    };
  });
  vm3 = activated.systemd.services."tvix-virtiofsd-vm3";
  vm3Socket = activated.systemd.sockets."tvix-virtiofsd-vm3";
  services = on.systemd.services;
  vm1 = services."tvix-virtiofsd-vm1".serviceConfig;
  vm2 = services."tvix-virtiofsd-vm2".serviceConfig;
  q = s: ''"${s}"'';
  cmd = args: concatStringsSep " " (map q args);

  # Blocks of the template unit, KEY -> its values as words, %i as vm1.
  template = builtins.readFile (unitDir + "/tvix-virtiofsd@.service");
  hardeningBlock = t.unitBlock "hardening" "vm1" template;
  mountViewBlock = t.unitBlock "mount view" "vm1" template;
  activatedTemplate = builtins.readFile (unitDir + "/tvix-virtiofsd-activated@.service");
  activatedMountView = t.unitBlock "mount view" "vm3" activatedTemplate;
  sameAsUnit =
    instance: settings: what: block:
    map (key: {
      name = "${instance} ${key} as in the ${what} block of its template unit";
      ok = settings ? ${key} && t.words settings.${key} == block.${key};
      got = settings.${key} or null;
      want = block.${key};
    }) (attrNames block);
  # The unit's other per-instance lines, once it has the per-instance layout.
  unitSettings = t.unitSettings "vm1" template;
  layoutChecks =
    if mountViewBlock == { } then
      [ ]
    else
      map (key: {
        name = "vm1 ${key} as in the template unit";
        ok = t.words vm1.${key} == unitSettings.${key};
        got = vm1.${key};
        want = unitSettings.${key};
      }) [ "RuntimeDirectory" "CacheDirectory" ]
      ++ [
        (check "the unit's ExecStart passes --instance, as the module" (hasInfix "--instance vm1" (toString unitSettings.ExecStart)) true)
      ];

  # Wrong combinations: each must fail with a message naming the fix.
  rejects =
    name: settings: fragment:
    let
      messages = failedAssertions (eval { } (enabled settings));
    in
    {
      name = "rejected: ${name}";
      ok = any (hasInfix fragment) messages;
      got = messages;
      want = "an assertion containing: ${fragment}";
    };
  throwsOnType = name: settings: {
    name = "type error: ${name}";
    ok = !(builtins.tryEval (builtins.deepSeq (eval { } (enabled settings)).systemd.services true)).success;
    got = "evaluated";
    want = "a type error";
  };

  landlockOf =
    kernelVersion: extraModules: settings:
    (eval { inherit kernelVersion extraModules; } (enabled ({ instances.vm1 = { }; } // settings)))
    .systemd.services."tvix-virtiofsd-vm1".serviceConfig.ExecStart;
  withLsm = lsm: [
    {
      options.security.lsm = lib.mkOption { type = lib.types.listOf lib.types.str; };
      config.security.lsm = lsm;
    }
  ];
  landlockFlag = mode: hasInfix (cmd [ "--landlock" mode ]);

  customCache = eval { } (enabled {
    cacheDir = "/srv/tvix-cache";
    instances.vm1 = { };
    instances.vm2 = { };
  });
  customVm1 = customCache.systemd.services."tvix-virtiofsd-vm1".serviceConfig;
  memoryOnly = (eval { } (enabled {
    cacheDir = null;
    instances.vm1.memoryMax = null;
    instances.vm1.metricsListen = "[::1]:9851";
  })).systemd.services."tvix-virtiofsd-vm1".serviceConfig;
  off = eval { } { instances.vm1 = { }; };
  # A host's own additions to an instance's service, as NixOS merges them.
  extended =
    (eval {
      extraModules = [
        {
          systemd.services."tvix-virtiofsd-vm1".serviceConfig = {
            BindPaths = [ "/srv/extra" ];
            MemoryMax = lib.mkForce "2G";
          };
        }
      ];
    } (enabled { instances.vm1 = { }; })).systemd.services."tvix-virtiofsd-vm1".serviceConfig;

  # Every option says what it is for, and all but booleans and internal
  # ones show an example.
  declared = (evalModules { } { }).options.services.tvix-virtiofsd;
  perInstance = lib.filterAttrs (name: _: !lib.hasPrefix "_" name) (
    declared.instances.type.nestedTypes.elemType.getSubOptions [ ]
  );
  undocumented =
    prefix: opts:
    lib.concatLists (
      lib.mapAttrsToList (
        name: opt:
        lib.optional (
          (opt.description or null) == null
          || !(opt.internal or false) && opt.type.name != "bool" && !(opt ? example)
        ) "${prefix}${name}"
      ) opts
    );

  checks = [
    (check "every option has a description, and an example unless boolean" (
      undocumented "" declared ++ undocumented "instances.<name>." perInstance
    ) [ ])
    (check "the walk sees the options: top level, per instance" [
      (length (attrNames declared) >= 20)
      (length (attrNames perInstance) >= 30)
    ] [ true true ])
    (check "template unit has a hardening block" (length (attrNames hardeningBlock) >= 30) true)
    (check "services" (attrNames services) [
      "tvix-virtiofsd-vm1"
      "tvix-virtiofsd-vm2"
    ])
    (check "vm1 ExecStart" vm1.ExecStart "${bin} ${
      cmd [
        "--socket-path"
        "/run/tvix-virtiofsd/vm1/vhost-user.sock"
        "--instance"
        "vm1"
        "--store"
        "grpc+unix:///run/tvix-store.sock"
        "--store-protocol"
        "tvix"
        "--store-timeout"
        "10"
        "--cache"
        "always"
        "--negative-timeout"
        "1"
        "--memory-cache-size"
        "128M"
        "--readahead-chunks"
        "32"
        "--prefetch-bytes"
        "64M"
        "--prefetch-guess"
        "directory"
        "--cache-dir"
        "/var/cache/tvix-virtiofsd"
        "--disk-cache-size"
        "20G"
        "--num-request-queues"
        "1"
        "--queue-size"
        "1024"
        "--thread-pool-size"
        "0"
        "--queue-poll-us"
        "64"
        "--persistent"
        "--log-level"
        "info"
        "--seccomp"
        "kill"
        "--landlock"
        "require"
      ]
    }")
    (check "vm2 ExecStart: TLS files from the credentials directory (%d, unescaped)" vm2.ExecStart "${bin} ${
      cmd [
        "--socket-path"
        "/var/lib/microvms/vm2/store.sock"
        "--instance"
        "vm2"
        "--blob-service-addr"
        "grpc+https://10.0.0.5:8000"
        "--directory-service-addr"
        "grpc+unix:///run/dir.sock"
        "--path-info-service-addr"
        "grpc+unix:///run/pathinfo.sock"
        "--store-protocol"
        "snix"
        "--store-timeout"
        "30"
        "--store-ca"
        "%d/store-ca"
        "--store-cert"
        "%d/store-cert"
        "--store-key"
        "%d/store-key"
        "--cache"
        "auto"
        "--entry-timeout"
        "5"
        "--negative-timeout"
        "0"
        "--memory-cache-size"
        "1G"
        "--readahead-chunks"
        "0"
        "--prefetch-bytes"
        "0"
        "--prefetch-guess"
        "none"
        "--cache-dir"
        "/var/cache/tvix-virtiofsd"
        "--disk-cache-size"
        "20G"
        "--num-request-queues"
        "2"
        "--queue-size"
        "256"
        "--thread-pool-size"
        "3"
        "--queue-poll-us"
        "0"
        "--list-root"
        "--metrics-listen"
        "/run/tvix-virtiofsd/vm2/metrics.sock"
        "--metrics-file"
        "/var/lib/node-exporter/vm2.prom"
        "--log-level"
        "debug"
        "--seccomp"
        "log"
        "--landlock"
        "auto"
        "--stats-file"
        "/run/tvix-virtiofsd/vm2/stats"
      ]
    }")
    (check "vm2 credentials" vm2.LoadCredential [
      "store-ca:/etc/ssl/store-ca.pem"
      "store-cert:/run/keys/vm2.crt"
      "store-key:/run/keys/vm2.key"
    ])
    (check "vm2: no key path in the unit's command line" (hasInfix "/run/keys" vm2.ExecStart) false)
    (check "vm1: no credentials" vm1.LoadCredential [ ])
    (check "vm1 limits from the cache size: 128M + 256M + 32M x 1 thread" [
      vm1.MemoryMax
      vm1.TasksMax
      vm1.LimitNOFILE
    ] [ "416M" 580 4160 ])
    (check "vm2 limits: 1G + 256M + 32M x 2 queues x 4 threads" [
      vm2.MemoryMax
      vm2.TasksMax
      vm2.LimitNOFILE
    ] [ "1536M" 600 4608 ])
    (check "memoryMax = null: no MemoryMax=" (memoryOnly ? MemoryMax) false)
    (check "vm1 mount view" [ vm1.TemporaryFileSystem vm1.BindPaths ] [
      [
        "/var/cache/tvix-virtiofsd:ro"
        "/run/tvix-virtiofsd:ro"
      ]
      [
        "/var/cache/tvix-virtiofsd/v2/objects"
        "/var/cache/tvix-virtiofsd/v2/instances/vm1"
        "/run/tvix-virtiofsd/vm1"
      ]
    ])
    (check "vm2 mount view: its own mappings and socket directory" vm2.BindPaths [
      "/var/cache/tvix-virtiofsd/v2/objects"
      "/var/cache/tvix-virtiofsd/v2/instances/vm2"
      "/run/tvix-virtiofsd/vm2"
    ])
    (check "vm1 directories" [
      vm1.CacheDirectory
      vm1.CacheDirectoryMode
      vm1.RuntimeDirectory
      vm1.RuntimeDirectoryMode
      vm1.RuntimeDirectoryPreserve
      vm1.ReadWritePaths
    ] [
      [
        "tvix-virtiofsd/v2/objects"
        "tvix-virtiofsd/v2/instances/vm1"
      ]
      "0700"
      "tvix-virtiofsd/vm1"
      "0755"
      true
      [ ]
    ])
    (check "vm2 may write its socket's and metrics file's directories" vm2.ReadWritePaths [
      "/var/lib/microvms/vm2"
      "/var/lib/node-exporter"
    ])
    (check "vm1 opens its socket to its group" vm1.ExecStartPost [
      (cmd [ "${coreutils}/bin/chmod" "0660" "/run/tvix-virtiofsd/vm1/vhost-user.sock" ])
    ])
    (check "vm2 hands its socket to kvm" vm2.ExecStartPost [
      (cmd [ "${coreutils}/bin/chgrp" "kvm" "/var/lib/microvms/vm2/store.sock" ])
      (cmd [ "${coreutils}/bin/chmod" "0660" "/var/lib/microvms/vm2/store.sock" ])
    ])
    (check "vm1 identity" [ vm1.Type vm1.User vm1.Group vm1.UMask vm1.SupplementaryGroups vm1.PrivateUsers ] [
      "notify"
      "tvix-virtiofsd"
      "tvix-virtiofsd"
      "0077"
      [ ]
      true
    ])
    (check "vm2 groups" [ vm2.SupplementaryGroups vm2.PrivateUsers ] [ [ "kvm" ] false ])
    (check "IP: the allowed store address, loopback metrics" [
      vm1.IPAddressDeny
      vm1.IPAddressAllow
      memoryOnly.IPAddressAllow
    ] [ "any" [ "10.0.0.5" ] [ "localhost" ] ])
    (check "vm1 restart" [ vm1.Restart services."tvix-virtiofsd-vm1".wantedBy ] [
      "on-failure"
      [ "multi-user.target" ]
    ])
    (check "all assertions hold" (failedAssertions on) [ ])
    (check "warning: vm2's socket is outside the private tree" on.warnings [
      "services.tvix-virtiofsd.instances.vm2: socketPath /var/lib/microvms/vm2/store.sock is outside /run/tvix-virtiofsd, so the other instances can see it."
    ])
    (check "warning: no sandbox of the daemon's own" (eval { } (enabled {
      instances.vm1 = {
        seccomp = "none";
        landlock = "off";
      };
    })).warnings [
      "services.tvix-virtiofsd.instances.vm1: seccomp = \"none\" and landlock = \"off\" leave the daemon without its own sandbox."
    ])
    (check "static user" on.users.users.tvix-virtiofsd {
      isSystemUser = true;
      group = "tvix-virtiofsd";
      description = "tvix-virtiofsd (Nix store for microVMs)";
    })
    (check "its group" (attrNames on.users.groups) [ "tvix-virtiofsd" ])
    (check "no tmpfiles for /var/cache" on.systemd.tmpfiles.rules [ ])
    (check "cache elsewhere: tmpfiles make every directory of the view" customCache.systemd.tmpfiles.rules (
      map (d: "d /srv/tvix-cache${d} 0700 tvix-virtiofsd tvix-virtiofsd - -") [
        ""
        "/v2"
        "/v2/instances"
        "/v2/objects"
        "/v2/instances/vm1"
        "/v2/instances/vm2"
      ]
    ))
    (check "cache elsewhere: writable, hidden but for the instance's part, no CacheDirectory" [
      customVm1.ReadWritePaths
      customVm1.TemporaryFileSystem
      customVm1.BindPaths
      (customVm1 ? CacheDirectory)
    ] [
      [
        "/srv/tvix-cache/v2/objects"
        "/srv/tvix-cache/v2/instances/vm1"
      ]
      [
        "/srv/tvix-cache:ro"
        "/run/tvix-virtiofsd:ro"
      ]
      [
        "/srv/tvix-cache/v2/objects"
        "/srv/tvix-cache/v2/instances/vm1"
        "/run/tvix-virtiofsd/vm1"
      ]
      false
    ])
    (check "memory only: no cache in the command line or the view" [
      (hasInfix "--cache-dir" memoryOnly.ExecStart)
      memoryOnly.TemporaryFileSystem
      memoryOnly.BindPaths
    ] [ false [ "/run/tvix-virtiofsd:ro" ] [ "/run/tvix-virtiofsd/vm1" ] ])
    (check "disabled: no services" off.systemd.services { })
    (check "package: pkgs.tvix-virtiofsd by default (the overlay's)" (lib.hasPrefix "/nix/store/22222222222222222222222222222222-overlaid/bin/tvix-virtiofsd "
      (eval {
        extraPackages.tvix-virtiofsd = package // { outPath = "/nix/store/22222222222222222222222222222222-overlaid"; };
      } { enable = true; instances.vm1 = { }; }).systemd.services."tvix-virtiofsd-vm1".serviceConfig.ExecStart
    ) true)
    rec {
      name = "package: none in pkgs and none set says where to get it";
      result = builtins.tryEval (eval { } { enable = true; instances.vm1 = { }; }).systemd.services."tvix-virtiofsd-vm1".serviceConfig.ExecStart;
      ok = !result.success;
      got = result;
      want = "an evaluation error";
    }
    (check "socket-activated: the socket as fd 3, no --persistent" (lib.take 4 (t.words vm3.serviceConfig.ExecStart)) [
      bin
      ''"--fd"''
      ''"3"''
      ''"--instance"''
    ])
    (check "socket-activated: started by its socket only" [
      (hasInfix "--persistent" vm3.serviceConfig.ExecStart)
      vm3.wantedBy
      vm3.requires
      (vm3.serviceConfig ? ExecStartPost)
      (vm3.serviceConfig ? RuntimeDirectory)
      vm3.serviceConfig.PrivateUsers
    ] [ false [ ] [ "tvix-virtiofsd-vm3.socket" ] false false true ])
    (check "socket-activated: no socket directory in the view" vm3.serviceConfig.BindPaths [
      "/var/cache/tvix-virtiofsd/v2/objects"
      "/var/cache/tvix-virtiofsd/v2/instances/vm3"
    ])
    (check "socket-activated: the socket unit" [ vm3Socket.wantedBy vm3Socket.socketConfig ] [
      [ "sockets.target" ]
      {
        ListenStream = "/run/tvix-virtiofsd/vm3/vhost-user.sock";
        Service = "tvix-virtiofsd-vm3.service";
        SocketUser = "tvix-virtiofsd";
        SocketGroup = "kvm";
        SocketMode = "0660";
        DirectoryMode = "0755";
        RemoveOnStop = true;
        Accept = false;
      }
    ])
    (check "only socket-activated instances get a socket unit" (attrNames on.systemd.sockets) [ ])
    (check "a host's additions merge: lists extend, mkForce overrides" [ extended.BindPaths extended.MemoryMax ] [
      [
        "/var/cache/tvix-virtiofsd/v2/objects"
        "/var/cache/tvix-virtiofsd/v2/instances/vm1"
        "/run/tvix-virtiofsd/vm1"
        "/srv/extra"
      ]
      "2G"
    ])

    # Landlock: require where the configured kernel enforces it.
    (check "landlock default on Linux 6.12" (landlockFlag "require" (landlockOf "6.12.10" [ ] { })) true)
    (check "landlock default on Linux 5.15 with a disk cache" (landlockFlag "auto" (landlockOf "5.15.0" [ ] { })) true)
    (check "landlock default on Linux 5.15, memory only" (landlockFlag "require" (landlockOf "5.15.0" [ ] { cacheDir = null; })) true)
    (check "landlock default with security.lsm lacking it" (landlockFlag "auto" (landlockOf "6.12.10" (withLsm [ "yama" ]) { })) true)
    (check "landlock default with security.lsm naming it" (landlockFlag "require" (landlockOf "6.12.10" (withLsm [ "landlock" "yama" ]) { })) true)
    rec {
      name = "rejected: landlock = require on Linux 5.15 with a disk cache";
      got = failedAssertions (eval { kernelVersion = "5.15.0"; } (enabled { instances.vm1.landlock = "require"; }));
      want = "an assertion suggesting landlock = \"auto\"";
      ok = any (hasInfix ''set landlock = "auto"'') got;
    }

    (rejects "no store at all" {
      store = null;
      instances.vm1.blobServiceAddr = "grpc+unix:///b.sock";
    } "set store, or all three of blobServiceAddr")
    (rejects "a certificate without a key" {
      store = "grpc+https://10.0.0.5:443";
      ipAddressAllow = [ "10.0.0.5" ];
      storeCert = "/run/keys/c.pem";
      instances.vm1 = { };
    } "storeCert and storeKey go together")
    (rejects "TLS files for a unix store" {
      storeCa = "/etc/ssl/ca.pem";
      instances.vm1 = { };
    } "used only for grpc+https:// stores")
    (rejects "a key in the Nix store" {
      store = "grpc+https://10.0.0.5:443";
      ipAddressAllow = [ "10.0.0.5" ];
      instances.vm1.storeCert = "/run/keys/c.pem";
      instances.vm1.storeKey = "${builtins.storeDir}/00000000000000000000000000000000-key.pem";
    } "keep the key outside it")
    (rejects "a TCP store with all IP denied" {
      store = "grpc+http://10.0.0.5:8000";
      instances.vm1 = { };
    } "add the store's address to services.tvix-virtiofsd.ipAddressAllow")
    (rejects "a socket in another instance's directory" {
      instances.vm1.socketPath = "/run/tvix-virtiofsd/vm2/vhost-user.sock";
    } "under /run/tvix-virtiofsd use /run/tvix-virtiofsd/vm1/")
    (rejects "a metrics socket hidden from the instance" {
      instances.vm1.metricsListen = "/run/tvix-virtiofsd/metrics.sock";
    } "use /run/tvix-virtiofsd/vm1/metrics.sock")
    (rejects "a metrics socket in the directory a socket-activated instance lacks" {
      instances.vm1.socketActivation = true;
      instances.vm1.metricsListen = "/run/tvix-virtiofsd/vm1/metrics.sock";
    } "a socket-activated instance has no directory there")
    (rejects "a metrics file hidden from the instance" {
      instances.vm1.metricsFile = "/run/tvix-virtiofsd/vm1.prom";
    } "metricsFile /run/tvix-virtiofsd/vm1.prom is hidden")
    (rejects "metrics on a public address with all IP denied" {
      instances.vm1.metricsListen = "0.0.0.0:9851";
    } "add the scraper's address")
    (rejects "two instances on one metrics port" {
      instances.vm1.metricsListen = "127.0.0.1:9851";
      instances.vm2.metricsListen = "127.0.0.1:9851";
    } "instances.{vm1,vm2}: the same metricsListen 127.0.0.1:9851")
    (rejects "two instances on one socket" {
      instances.vm1.socketPath = "/srv/vm.sock";
      instances.vm2.socketPath = "/srv/vm.sock";
    } "the same socketPath /srv/vm.sock")
    (rejects "memoryMax below the memory cache" {
      memoryCacheSize = "2G";
      instances.vm1.memoryMax = "1G";
    } "raise memoryMax (null: no limit) or lower memoryCacheSize")
    (rejects "an instance name the daemon refuses" { instances.".hidden" = { }; } "not starting with a dot")
    (rejects "an instance name no unit name can hold" { instances."vm@1" = { }; } "must be 1 to 200 of A-Z a-z 0-9 _ - . :")
    (throwsOnType "the key as a Nix path (it would be copied to the store)" {
      store = "grpc+https://10.0.0.5:443";
      storeCert = "/run/keys/c.pem";
      storeKey = ./check.nix;
      instances.vm1 = { };
    })
    (throwsOnType "an address of an unknown scheme" {
      store = "unix:///run/tvix-store.sock";
      instances.vm1 = { };
    })
    (throwsOnType "an unknown log level" { instances.vm1.logLevel = "verbose"; })
    (throwsOnType "a queue size that is no power of two" { instances.vm1.queueSize = 1000; })
  ]
  ++ sameAsUnit "vm1" vm1 "hardening" hardeningBlock
  ++ sameAsUnit "vm1" vm1 "mount view" mountViewBlock
  ++ sameAsUnit "vm3" vm3.serviceConfig "hardening" (t.unitBlock "hardening" "vm3" activatedTemplate)
  ++ sameAsUnit "vm3" vm3.serviceConfig "mount view" activatedMountView
  ++ layoutChecks;
in
t.report "nixos-module.nix" checks
// {
  mountViewCompared = mountViewBlock != { };
}
