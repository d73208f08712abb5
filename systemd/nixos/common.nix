# What the parts of the NixOS module share: the configuration, option types,
# the layout of the cache and runtime directories (which parts of them an
# instance sees), and what the configured kernel can enforce.
{
  config,
  lib,
  options,
}:

let
  inherit (lib)
    elem
    hasPrefix
    match
    optional
    types
    versionAtLeast
    ;
in
rec {
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

  # The shared objects, and an instance's private directories: its own
  # mappings and its own sockets.
  objectsDir = "${cfg.cacheDir}/v2/objects";
  mappingsDir = name: "${cfg.cacheDir}/v2/instances/${name}";
  runtimeDir = name: "${runtimeRoot}/${name}";
  cacheInVarCache = cfg.cacheDir != null && hasPrefix varCache cfg.cacheDir;

  # metricsListen: a unix socket path, or a TCP host:port (maybe on loopback).
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
}
