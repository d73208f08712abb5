# The sandbox systemd gives every instance, the same as the hardening block
# of systemd/tvix-virtiofsd@.service and tvix-virtiofsd-activated@.service
# (tests/nixos/eval-module.nix compares them).
{
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
}
