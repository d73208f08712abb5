# nixos-module.nix evaluated by the real lib.evalModules with the NixOS
# stand-ins and a package of a fixed store path, for the tests that read
# what it generates.
{ lib }:
rec {
  package = {
    type = "derivation";
    name = "tvix-virtiofsd-0.1.0";
    outPath = "/nix/store/11111111111111111111111111111111-tvix-virtiofsd-0.1.0";
  };
  coreutils = "/nix/store/00000000000000000000000000000000-coreutils";

  # lib.evalModules for `services.tvix-virtiofsd = settings`.
  evalModules =
    {
      kernelVersion ? "6.12.10",
      extraPackages ? { },
      extraModules ? [ ],
    }:
    settings:
    lib.evalModules {
      modules = [
        (import ./nixos-stand-ins.nix { inherit kernelVersion extraPackages; })
        ../../nixos-module.nix
        { services.tvix-virtiofsd = settings; }
      ]
      ++ extraModules;
    };
  # Its configuration.
  eval = args: settings: (evalModules args settings).config;
  enabled = settings: { enable = true; inherit package; } // settings;
}
