# Evaluates nixos-module.nix with a sample configuration and checks what it
# produces: the ExecStart of each instance, the sandbox (against the
# hardening block of systemd/tvix-virtiofsd@.service, so the two stay the
# same), the static user, the cache directory. Fails (throws) on any
# mismatch:
#   nix-instantiate --store dummy:// --eval --strict tests/nixos/eval-module.nix
let
  lib = import ./lib-stub.nix;
  inherit (builtins)
    attrNames
    concatStringsSep
    elemAt
    filter
    foldl'
    head
    isBool
    isList
    length
    match
    split
    toJSON
    ;

  package = {
    outPath = "/nix/store/11111111111111111111111111111111-tvix-virtiofsd-0.1.0";
  };
  bin = "${package}/bin/tvix-virtiofsd";
  coreutils = "/nix/store/00000000000000000000000000000000-coreutils";

  eval = definitions: lib.evalModule (import ../../nixos-module.nix) definitions;

  on = eval {
    services.tvix-virtiofsd = {
      enable = true;
      inherit package;
      diskCacheSize = "20G";
      instances.vm1 = { };
      instances.vm2 = {
        store = null;
        blobServiceAddr = "grpc+http://10.0.0.5:8000";
        directoryServiceAddr = "grpc+unix:///run/dir.sock";
        pathInfoServiceAddr = "grpc+unix:///run/pathinfo.sock";
        storeProtocol = "snix";
        listRoot = true;
        numRequestQueues = 2;
        threadPoolSize = 4;
        persistent = false;
        socketGroup = "kvm";
        socketPath = "/var/lib/microvms/vm2/store.sock";
        extraArgs = [
          "--log-level"
          "debug"
        ];
      };
    };
  };
  off = eval { services.tvix-virtiofsd.instances.vm1 = { }; };
  customCache = eval {
    services.tvix-virtiofsd = {
      enable = true;
      inherit package;
      cacheDir = "/srv/tvix-cache";
      instances.vm1 = { };
    };
  };

  services = on.output.systemd.services;
  vm1 = services."tvix-virtiofsd-vm1".serviceConfig;
  vm2 = services."tvix-virtiofsd-vm2".serviceConfig;
  q = s: ''"${s}"'';
  cmd = args: concatStringsSep " " (map q args);

  # The hardening block of the template unit: KEY -> all its values, joined.
  unitLines = filter (l: builtins.isString l) (split "\n" (builtins.readFile (../../systemd + "/tvix-virtiofsd@.service")));
  between =
    foldl'
      (
        acc: line:
        if match "# --- hardening.*" line != null then
          acc // { inside = true; }
        else if match "# --- end of hardening.*" line != null then
          acc // { inside = false; }
        else if acc.inside then
          let
            kv = match "([A-Za-z]+)=(.*)" line;
          in
          if kv == null then
            acc
          else
            acc
            // {
              values = acc.values // {
                ${head kv} = (acc.values.${head kv} or [ ]) ++ [ (elemAt kv 1) ];
              };
            }
        else
          acc
      )
      {
        inside = false;
        values = { };
      }
      unitLines;
  unitHardening = builtins.mapAttrs (_: vs: concatStringsSep " " vs) between.values;
  render =
    v:
    if isBool v then
      (if v then "yes" else "no")
    else if isList v then
      concatStringsSep " " v
    else
      toString v;
  hardeningChecks = map (key: {
    name = "vm1 ${key} as in the template unit";
    ok = vm1 ? ${key} && render vm1.${key} == unitHardening.${key};
    got = vm1.${key} or null;
    want = unitHardening.${key};
  }) (attrNames unitHardening);

  check = name: got: want: { inherit name got want; ok = got == want; };

  checks = [
    (check "template unit has a hardening block" (length (attrNames unitHardening) >= 30) true)
    (check "services" (attrNames services) [
      "tvix-virtiofsd-vm1"
      "tvix-virtiofsd-vm2"
    ])
    (check "vm1 ExecStart" vm1.ExecStart "${bin} ${
      cmd [
        "--socket-path"
        "/run/tvix-virtiofsd/vm1.sock"
        "--store"
        "grpc+unix:///run/tvix-store.sock"
        "--store-protocol"
        "tvix"
        "--memory-cache-size"
        "128M"
        "--cache-dir"
        "/var/cache/tvix-virtiofsd"
        "--disk-cache-size"
        "20G"
        "--num-request-queues"
        "1"
        "--thread-pool-size"
        "0"
        "--persistent"
      ]
    }")
    (check "vm2 ExecStart" vm2.ExecStart "${bin} ${
      cmd [
        "--socket-path"
        "/var/lib/microvms/vm2/store.sock"
        "--blob-service-addr"
        "grpc+http://10.0.0.5:8000"
        "--directory-service-addr"
        "grpc+unix:///run/dir.sock"
        "--path-info-service-addr"
        "grpc+unix:///run/pathinfo.sock"
        "--store-protocol"
        "snix"
        "--memory-cache-size"
        "128M"
        "--cache-dir"
        "/var/cache/tvix-virtiofsd"
        "--disk-cache-size"
        "20G"
        "--num-request-queues"
        "2"
        "--thread-pool-size"
        "4"
        "--list-root"
        "--log-level"
        "debug"
      ]
    }")
    (check "vm1 opens its socket to its group" vm1.ExecStartPost [
      (cmd [ "${coreutils}/bin/chmod" "0660" "/run/tvix-virtiofsd/vm1.sock" ])
    ])
    (check "vm2 hands its socket to kvm" vm2.ExecStartPost [
      (cmd [ "${coreutils}/bin/chgrp" "kvm" "/var/lib/microvms/vm2/store.sock" ])
      (cmd [ "${coreutils}/bin/chmod" "0660" "/var/lib/microvms/vm2/store.sock" ])
    ])
    (check "vm1 Type" vm1.Type "notify")
    (check "vm1 identity" [ vm1.User vm1.Group vm1.UMask vm1.SupplementaryGroups ] [
      "tvix-virtiofsd"
      "tvix-virtiofsd"
      "0077"
      [ ]
    ])
    (check "vm2 groups" [ vm2.SupplementaryGroups vm2.PrivateUsers ] [ [ "kvm" ] false ])
    (check "vm1 directories" [
      vm1.CacheDirectory
      vm1.CacheDirectoryMode
      vm1.RuntimeDirectory
      vm1.RuntimeDirectoryPreserve
      vm1.ReadWritePaths
    ] [ "tvix-virtiofsd" "0700" "tvix-virtiofsd" true [ ] ])
    (check "vm2 may write its socket's directory" vm2.ReadWritePaths [ "/var/lib/microvms/vm2" ])
    (check "vm1 restart" [ vm1.Restart services."tvix-virtiofsd-vm1".wantedBy ] [
      "on-failure"
      [ "multi-user.target" ]
    ])
    (check "assertions hold" (map (a: a.assertion) on.output.assertions) [ true true ])
    (check "static user" on.output.users.users.tvix-virtiofsd {
      isSystemUser = true;
      group = "tvix-virtiofsd";
      description = "tvix-virtiofsd (Nix store for microVMs)";
    })
    (check "its group" on.output.users.groups { tvix-virtiofsd = { }; })
    (check "no tmpfiles for /var/cache" on.output.systemd.tmpfiles.rules [ ])
    (check "cache elsewhere: tmpfiles" customCache.output.systemd.tmpfiles.rules [
      "d /srv/tvix-cache 0700 tvix-virtiofsd tvix-virtiofsd - -"
    ])
    (check "cache elsewhere: writable, no CacheDirectory" [
      (customCache.output.systemd.services."tvix-virtiofsd-vm1".serviceConfig.ReadWritePaths)
      (customCache.output.systemd.services."tvix-virtiofsd-vm1".serviceConfig ? CacheDirectory)
    ] [ [ "/srv/tvix-cache" ] false ])
    (check "disabled: nothing" off.output { })
  ] ++ hardeningChecks;

  failed = filter (c: !c.ok) checks;
in
if failed == [ ] then
  "${toString (length checks)} passed, 0 failed"
else
  throw "nixos-module.nix: ${toString (length failed)} of ${toString (length checks)} checks failed:\n${
    concatStringsSep "\n" (map (c: "- ${c.name}: got ${toJSON c.got}, want ${toJSON c.want}") failed)
  }"
