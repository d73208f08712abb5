# Evaluates flake.nix's outputs function with a stand-in nixpkgs input (the
# real library; `legacyPackages.<system>.callPackage` records what it is
# called with) and checks: packages.<system>.default is package.nix for
# both systems, overlays.default adds it as pkgs.tvix-virtiofsd, and
# nixosModules.default imports the module with that package as its default
# (evaluated with lib.evalModules and the NixOS stand-ins). Throws on any
# mismatch.
{ nixpkgsLib }:
let
  lib = import nixpkgsLib;
  inherit (import ./check.nix { inherit lib; }) check report;

  flake = import ../../flake.nix;
  callPackage = system: path: overrides: {
    type = "derivation";
    name = "tvix-virtiofsd-0.1.0";
    calledFrom = toString path;
    inherit system overrides;
    outPath = "/nix/store/11111111111111111111111111111111-tvix-virtiofsd-0.1.0";
  };
  nixpkgs = {
    inherit lib;
    legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" "riscv64-linux" ] (system: {
      callPackage = callPackage system;
    });
  };
  self = flake.outputs { inherit self nixpkgs; };

  package = toString ../../package.nix;
  overlaid = self.overlays.default { callPackage = callPackage "final"; } { };
  moduleConfig =
    (lib.evalModules {
      modules = [
        (import ./nixos-stand-ins.nix { hostSystem = "aarch64-linux"; })
        self.nixosModules.default
        {
          services.tvix-virtiofsd.enable = true;
          services.tvix-virtiofsd.instances.vm1 = { };
        }
      ];
    }).config;
in
report "flake.nix" [
  (check "inputs: nixpkgs only" (builtins.attrNames flake.inputs) [ "nixpkgs" ])
  (check "outputs" (builtins.attrNames self) [ "nixosModules" "overlays" "packages" ])
  (check "systems with a seccomp policy" (builtins.attrNames self.packages) [ "aarch64-linux" "x86_64-linux" ])
  (check "packages.x86_64-linux.default is package.nix" [
    self.packages.x86_64-linux.default.calledFrom
    self.packages.x86_64-linux.default.system
    self.packages.x86_64-linux.tvix-virtiofsd.calledFrom
  ] [ package "x86_64-linux" package ])
  (check "packages.aarch64-linux.default" self.packages.aarch64-linux.default.system "aarch64-linux")
  (check "overlays.default adds tvix-virtiofsd from package.nix" [
    (builtins.attrNames overlaid)
    overlaid.tvix-virtiofsd.calledFrom
    overlaid.tvix-virtiofsd.system
  ] [ [ "tvix-virtiofsd" ] package "final" ])
  (check "nixosModules.default: the host's package in ExecStart" (lib.hasPrefix
    "/nix/store/11111111111111111111111111111111-tvix-virtiofsd-0.1.0/bin/tvix-virtiofsd "
    moduleConfig.systemd.services."tvix-virtiofsd-vm1".serviceConfig.ExecStart
  ) true)
  (check "nixosModules.default: the package of the host's system" moduleConfig.services.tvix-virtiofsd.package.system "aarch64-linux")
]
