{
  description = "tvix-virtiofsd: a read-only virtio-fs (vhost-user) daemon serving a Nix store from a tvix-store";

  # Only nixpkgs. No flake.lock is committed: a flake that uses this one
  # pins nixpkgs in its own lock (inputs.tvix-virtiofsd.inputs.nixpkgs.follows
  # = "nixpkgs"), and `nix build` in a checkout writes one on first use.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      # The architectures with a seccomp policy (seccomp/<arch>.json).
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (pkgs: rec {
        tvix-virtiofsd = pkgs.callPackage ./package.nix { };
        default = tvix-virtiofsd;
      });

      overlays.default = final: _prev: {
        tvix-virtiofsd = final.callPackage ./package.nix { };
      };

      # The module, with this flake's package as the default package.
      nixosModules.default =
        { lib, pkgs, ... }:
        {
          imports = [ ./nixos-module.nix ];
          services.tvix-virtiofsd.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        };
    };
}
