# What the configuration must not combine, each with a message that says
# what to change, and what it may combine but should know about.
{
  lib,
  common,
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
    mapAttrsToList
    match
    ;
  inherit (common)
    cfg
    inOwnRuntimeDir
    isHttps
    isTcp
    kernelHasLandlock
    kernelVersion
    loopbackHosts
    lsmHasLandlock
    metricsSocket
    metricsTcpHost
    runtimeDir
    runtimeRoot
    sizeBytes
    underRuntimeRoot
    visibleToInstance
    ;

  # Per instance; each message says what to change.
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
        # What --instance accepts, less `@` and `\`, which a unit name
        # (tvix-virtiofsd-<name>.service) cannot hold outside templates.
        assertion = match "[A-Za-z0-9_:-][A-Za-z0-9_.:-]{0,199}" name != null;
        message = "${at}: the instance name must be 1 to 200 of A-Z a-z 0-9 _ - . :, not starting with a dot (it becomes --instance, a directory and a unit name).";
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
}
