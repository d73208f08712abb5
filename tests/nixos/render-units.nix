# The services nixos-module.nix generates for a sample host, written out as
# unit files the way NixOS writes serviceConfig (one KEY=VALUE line per list
# element, booleans as true/false; nixos/lib/systemd-lib.nix), for
# scripts/check-nix.sh to hand to systemd-analyze. Store paths of the
# package and coreutils are left for the script to point at real files.
{ nixpkgsLib }:
let
  lib = import nixpkgsLib;
  inherit (import ./eval-config.nix { inherit lib; }) eval enabled;

  config = eval { } (enabled {
    store = "grpc+https://10.0.0.5:8000";
    ipAddressAllow = [ "10.0.0.5" ];
    storeCa = "/etc/ssl/store-ca.pem";
    storeCert = "/run/keys/store.crt";
    storeKey = "/run/keys/store.key";
    instances.vm1 = { };
    instances.vm2 = {
      socketGroup = "kvm";
      numRequestQueues = 2;
      threadPoolSize = 2;
      metricsListen = "127.0.0.1:9851";
      metricsFile = "/var/lib/node-exporter/vm2.prom";
    };
    instances.vm3 = {
      socketActivation = true;
      socketGroup = "kvm";
    };
  });

  value = v: if v == true then "true" else if v == false then "false" else toString v;
  section =
    settings:
    lib.concatStrings (
      lib.mapAttrsToList (key: v: lib.concatMapStrings (x: "${key}=${value x}\n") (lib.toList v)) settings
    );
  service = unit: ''
    [Unit]
    Description=${unit.description}
    ${section {
      After = unit.after;
      Wants = unit.wants;
      Requires = unit.requires;
    }}
    [Service]
    ${section unit.serviceConfig}
    [Install]
    ${section { WantedBy = unit.wantedBy; }}'';
  socket = unit: ''
    [Unit]
    Description=${unit.description}

    [Socket]
    ${section unit.socketConfig}
    [Install]
    ${section { WantedBy = unit.wantedBy; }}'';
  files = suffix: render: units: lib.mapAttrsToList (name: unit: "### ${name}.${suffix}\n${render unit}") units;
in
{
  text = lib.concatStrings (
    files "service" service config.systemd.services ++ files "socket" socket config.systemd.sockets
  );
}
