# The options of services.tvix-virtiofsd: the top-level ones, and per
# instance those that may differ between VMs (most default to the top-level
# option of the same name).
{
  config,
  lib,
  options,
  pkgs,
  ...
}:

let
  inherit (lib)
    hasPrefix
    literalExpression
    mkEnableOption
    mkOption
    types
    ;
  common = import ./common.nix { inherit config lib options; };
  inherit (common)
    absolutePath
    cfg
    kernelHasLandlock
    mib
    runtimeDir
    size
    sizeBytes
    storeAddress
    tlsFile
    ;

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
        prefetchBytes = inherited "prefetchBytes" { };
        prefetchGuess = inherited "prefetchGuess" { };
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
          # Virtqueue sizes are powers of two.
          type = types.addCheck (types.ints.between 2 32768) (n: builtins.bitAnd n (n - 1) == 0);
          default = 1024;
          example = 256;
          description = "Largest virtqueue size offered to the VMM (`--queue-size`), a power of two.";
        };
        threadPoolSize = mkOption {
          type = types.ints.unsigned;
          default = 0;
          example = 4;
          description = "Extra threads per queue (`--thread-pool-size`; 0: in order).";
        };
        queuePollUs = mkOption {
          type = types.ints.between 0 100000;
          default = 64;
          example = 0;
          description = ''
            Longest a queue thread watches its ring for the guest's next
            request before it sleeps (`--queue-poll-us`, adaptive; 0: never).
          '';
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

in
{
  options.services.tvix-virtiofsd = {
    enable = mkEnableOption "tvix-virtiofsd, read-only Nix stores for microVMs from a tvix-store";

    package = mkOption {
      type = types.package;
      default =
        pkgs.tvix-virtiofsd
          or (throw "services.tvix-virtiofsd.package: set it (e.g. to pkgs.callPackage ./tvix-virtiofsd/package.nix { }), add the flake's overlays.default, or import its nixosModules.default.");
      defaultText = literalExpression "pkgs.tvix-virtiofsd";
      example = literalExpression "pkgs.callPackage ./tvix-virtiofsd/package.nix { }";
      description = ''
        The tvix-virtiofsd package (its `bin/tvix-virtiofsd`): by default
        the one the flake's `overlays.default` adds; the flake's
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

    prefetchBytes = mkOption {
      type = size;
      default = "64M";
      example = "0";
      description = "Bytes fetched ahead per store path at most, only while the guest waits for nothing else: its access trace, else the guess (`--prefetch-bytes`; 0: no prefetch and no trace).";
    };

    prefetchGuess = mkOption {
      type = types.enum [
        "directory"
        "tree"
        "none"
      ];
      default = "directory";
      example = "tree";
      description = "What to prefetch of a store path without an access trace (`--prefetch-guess`): a directory's small files once the guest opens a file in it, every small file of the store path when it is looked up, or nothing.";
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

}
