# Evaluates package.nix with the real nixpkgs library and a stand-in
# `rustPlatform.buildRustPackage` that returns its arguments, and checks
# them: name and version from Cargo.toml, Cargo.lock as the lock file, the
# source filter (what the build needs is in, target/ and the integration
# tests are out), the build and test flags, the install steps and meta.
# Nothing is built. Throws on any mismatch.
{ nixpkgsLib }:
let
  lib = import nixpkgsLib;
  inherit (lib) hasInfix all;
  inherit (import ./check.nix { inherit lib; }) check report;

  root = ../..;
  coreutils = {
    type = "derivation";
    outPath = "/nix/store/00000000000000000000000000000000-coreutils";
  };
  args = import ../../package.nix {
    inherit lib coreutils;
    rustPlatform.buildRustPackage = arguments: arguments;
  };
  manifest = builtins.fromTOML (builtins.readFile (root + "/Cargo.toml"));

  # The source filter as cleanSourceWith calls it: absolute path, file type.
  included = relative: type: args.src.filter "${toString root}/${relative}" type;
  wanted = [
    "Cargo.toml"
    "Cargo.lock"
    "build.rs"
    "src"
    "src/main.rs"
    "src/store/address.rs"
    "protos"
    "protos/tvix/castore/protos/castore.proto"
    "seccomp/x86_64.json"
    "seccomp/aarch64.json"
    "systemd/tvix-virtiofsd@.service"
    "systemd/tvix-virtiofsd.conf"
    "README.md"
    "docs/benchmarks.md"
    "tests"
    "tests/fixture-store"
    "tests/fixture-store/Cargo.toml"
    "tests/fixture-store/src/main.rs"
    "tests/support/Cargo.toml"
    "tests/support/src/vhost_frontend.rs"
    "benches/loadgen/Cargo.toml"
    "fuzz/Cargo.toml"
    "fuzz/fuzz_targets/fuse_server.rs"
  ];
  unwanted = [
    "target"
    "tests/fixture-store/target"
    "tests/fuse_e2e.rs"
    "tests/nixos"
    "fuzz/corpus"
    "fuzz/tests"
    "scripts"
    ".git"
    "flake.nix"
    "package.nix"
  ];
  typeOf = relative: (builtins.readDir (dirOf "${toString root}/${relative}")).${baseNameOf relative} or "regular";
in
report "package.nix" [
  (check "name and version from Cargo.toml" [ args.pname args.version ] [
    manifest.package.name
    manifest.package.version
  ])
  (check "the lock file is Cargo.lock and exists" [
    (toString args.cargoLock.lockFile)
    (builtins.pathExists args.cargoLock.lockFile)
  ] [ "${toString root}/Cargo.lock" true ])
  (check "the source's root is the repository" (toString args.src.origSrc) (toString root))
  (check "everything the build reads exists" (all (p: builtins.pathExists (root + "/${p}")) wanted) true)
  (check "the source holds what the build reads" (lib.filter (p: !included p (typeOf p)) wanted) [ ])
  (check "the source leaves out the rest" (lib.filter (p: included p "directory" || included p "regular") unwanted) [ ])
  (check "only the daemon is built" args.cargoBuildFlags [ "--package" "tvix-virtiofsd" ])
  (check "only the library's unit tests run" args.cargoTestFlags [ "--package" "tvix-virtiofsd" "--lib" ])
  (check "no protoc or other native build input" [ (args.nativeBuildInputs or [ ]) (args.buildInputs or [ ]) ] [ [ ] [ ] ])
  (check "build.rs compiles the protos with protox" (hasInfix "protox::compile" (builtins.readFile (root + "/build.rs"))) true)
  (check "units, sysusers file and docs are installed" (map (s: hasInfix s args.postInstall) [
    "$out/lib/systemd/system systemd/*.service systemd/*.socket"
    "$out/lib/sysusers.d/tvix-virtiofsd.conf"
    "#ExecStart=$out/bin/tvix-virtiofsd"
    "#ExecStartPost=${coreutils}/bin/chmod #"
    "$out/share/doc/tvix-virtiofsd README.md docs/*.md"
  ]) [ true true true true true ])
  (check "meta" [
    args.meta.description
    args.meta.mainProgram
    (map (l: l.spdxId) args.meta.license)
    args.meta.platforms
  ] [
    manifest.package.description
    "tvix-virtiofsd"
    [ "MIT" "Apache-2.0" ]
    [ "x86_64-linux" "aarch64-linux" ]
  ])
  (check "the license list matches Cargo.toml" manifest.package.license "MIT OR Apache-2.0")
]
// {
  inherit (args) postInstall;
}
