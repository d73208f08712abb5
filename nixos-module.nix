# Placeholder: the NixOS module `services.tvix-virtiofsd` (one hardened
# systemd service per microVM) lands here.
{ ... }:
{ }
