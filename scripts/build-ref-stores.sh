#!/usr/bin/env bash
# build-ref-stores.sh — builds the reference tvix-store and/or snix-store
# that the real-store tests and benchmarks run against, from source
# checkouts, the way ../shared/ref/README.md describes:
#   cargo build --release -p <name>-store --no-default-features --features fuse,virtiofs
# then strips the binary and copies it to the output directory.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out="$(dirname "$repo")/shared/ref/bin"
features="fuse,virtiofs"

usage() {
	cat <<EOF
usage: $0 [-o OUT_DIR] [--features LIST] SOURCE...

Builds tvix-store or snix-store from each SOURCE checkout and copies the
stripped binary to OUT_DIR (default: $out).

SOURCE is one of
  - the TVL depot's tvix/ directory (its Cargo workspace), or the depot
    root (tvix/ is then used): builds tvix-store;
  - the snix repository root (or its Cargo workspace directory): builds
    snix-store.
Which store a checkout holds is found from its store/Cargo.toml.

Options:
  -o, --out DIR      where to put the binaries (created if missing)
      --features L   cargo features (default: $features; default features off)
  -h, --help         this text

CARGO_TARGET_DIR and other cargo settings from the environment are honoured.
The binaries need only glibc and liblzma at run time.
EOF
}

die() {
	echo "$0: $*" >&2
	exit 1
}

sources=()
while [ $# -gt 0 ]; do
	case "$1" in
	-o | --out)
		[ $# -ge 2 ] || die "$1 needs a directory"
		out=$2
		shift 2
		;;
	--features)
		[ $# -ge 2 ] || die "$1 needs a list"
		features=$2
		shift 2
		;;
	-h | --help)
		usage
		exit 0
		;;
	--)
		shift
		sources+=("$@")
		break
		;;
	-*)
		usage >&2
		die "unknown option $1"
		;;
	*)
		sources+=("$1")
		shift
		;;
	esac
done
if [ ${#sources[@]} -eq 0 ]; then
	usage >&2
	exit 2
fi

command -v cargo >/dev/null || die "cargo not found"

# The Cargo workspace in $1 (or its tvix/ or snix/ subdirectory) whose
# store/Cargo.toml is tvix-store's or snix-store's: prints
# "<workspace dir> <package name>".
find_workspace() {
	local dir name
	for dir in "$1" "$1/tvix" "$1/snix"; do
		if [ ! -f "$dir/Cargo.toml" ] || [ ! -f "$dir/store/Cargo.toml" ]; then
			continue
		fi
		name=$(sed -n 's/^name *= *"\(\(tvix\|snix\)-store\)".*/\1/p' "$dir/store/Cargo.toml" | head -n 1)
		if [ -n "$name" ]; then
			echo "$(cd "$dir" && pwd) $name"
			return 0
		fi
	done
	return 1
}

mkdir -p "$out"
out=$(cd "$out" && pwd)

for src in "${sources[@]}"; do
	[ -d "$src" ] || die "$src: not a directory"
	found=$(find_workspace "$src") ||
		die "$src: no tvix-store or snix-store workspace here (expected store/Cargo.toml in $src, $src/tvix or $src/snix)"
	ws=${found% *}
	name=${found##* }
	commit=$(git -C "$ws" rev-parse --short=9 HEAD 2>/dev/null || echo "unknown commit")

	echo "== $name from $ws ($commit), features $features"
	(cd "$ws" && cargo build --release -p "$name" --no-default-features --features "$features")

	target=${CARGO_TARGET_DIR:-$ws/target}
	case "$target" in
	/*) ;;
	*) target="$ws/$target" ;;
	esac
	bin="$target/release/$name"
	[ -x "$bin" ] || die "$name: no binary at $bin after the build"

	tmp=$(mktemp "$out/.$name.XXXXXX")
	cp "$bin" "$tmp"
	if command -v strip >/dev/null; then
		strip "$tmp"
	else
		echo "$0: warning: strip not found; $name left unstripped" >&2
	fi
	chmod 0755 "$tmp"
	mv -f "$tmp" "$out/$name"
	echo "== $out/$name ($commit): $(du -h "$out/$name" | cut -f1)"
done
