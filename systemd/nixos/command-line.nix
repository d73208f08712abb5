# The daemon's command line for one instance, as an ExecStart= value, and
# the TLS files it gets as systemd credentials.
{
  lib,
  utils,
  common,
}:

let
  inherit (lib)
    concatMap
    concatStringsSep
    filter
    optional
    optionals
    ;
  inherit (common) cfg;

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
      "--prefetch-bytes"
      inst.prefetchBytes
      "--prefetch-guess"
      inst.prefetchGuess
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
      "--queue-poll-us"
      (toString inst.queuePollUs)
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

in
{
  inherit credentials;
  # ExecStart= of the instance `name`.
  execStart =
    name: inst:
    "${cfg.package}/bin/tvix-virtiofsd ${concatStringsSep " " (map renderArg (args name inst))}";
}
