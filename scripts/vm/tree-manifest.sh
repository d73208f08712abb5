#!/bin/sh
# tree-manifest.sh — print a canonical manifest of a directory tree.
#
# Usage: tree-manifest.sh [DIR]        (DIR defaults to .)
#
# One line per entry below DIR (DIR itself is not listed), sorted by relative
# path in byte order (LC_ALL=C):
#
#   <type> <mode> <size> <content> <path>
#
#   type     f regular file, d directory, l symlink, p fifo, s socket,
#            c char device, b block device
#   mode     permission bits incl. setuid/setgid/sticky, 4 octal digits
#   size     bytes for f and l (a symlink's size is its target's length);
#            "-" for everything else (directory sizes differ between
#            file systems, e.g. ext4 vs virtio-fs)
#   content  sha256 of the data for f, the target for l, "-" otherwise
#   path     relative to DIR, without a leading "./"
#
# The output is identical under busybox (sh, find, stat, sha256sum, readlink,
# sort) and under bash/dash with GNU findutils/coreutils, so a test can run it
# on the host over a source tree and in a guest over the virtio-fs mount and
# diff the two. Names may contain spaces and any bytes except newline
# (newlines in names are not supported). Ownership and times are not listed.
#
# The guest initramfs built by build-guest.sh has this script as
# /bin/tree-manifest.
set -eu
# pipefail is not POSIX (dash lacks it); busybox sh and bash have it.
# shellcheck disable=SC3040
if (set -o pipefail) 2>/dev/null; then set -o pipefail; fi
LC_ALL=C
export LC_ALL

cd "${1:-.}"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tree-manifest.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# One walk, batched (few forks: this also runs in slow emulated guests).
#   stat:   "<hex raw mode> <size> ./path", sorted by path (field 3 on)
#   hashes: "<sha256>  ./path" for the regular files (raw mode 0x8xxx), in
#           the same order. GNU sha256sum escapes names that contain a
#           backslash, so those are left out here and hashed one by one below.
find . -mindepth 1 -exec stat -c '%f %s %n' {} + |
  sort -t ' ' -k 3 >"$tmp/stat"
sed -n '/\\/d; s/^8[0-9a-f][0-9a-f][0-9a-f] [0-9]* //p' "$tmp/stat" |
  tr '\n' '\0' | xargs -0 -r sha256sum >"$tmp/hashes"

# Next line of the hash list: hash_path / hash_sum ("" at the end).
next_hash() {
  if IFS= read -r hline <&3; then
    hash_sum=${hline%% *}
    hash_path=${hline#*  }
  else
    hash_sum=
    hash_path=
  fi
}

exec 3<"$tmp/hashes"
next_hash
while IFS= read -r line; do
  hex=${line%% *}
  rest=${line#* }
  size=${rest%% *}
  path=${rest#* }
  mode=$(( 0x$hex ))
  # 4 octal digits without a command substitution (a fork per entry is
  # slow in an emulated guest)
  perm=$(( mode >> 9 & 7 ))$(( mode >> 6 & 7 ))$(( mode >> 3 & 7 ))$(( mode & 7 ))
  content=-
  case $(( mode & 0170000 )) in
    32768) # 0100000 regular file
      type=f
      if [ "$path" = "$hash_path" ]; then
        content=$hash_sum
        next_hash
      else
        # not in the batch (backslash in the name, or unreadable)
        sum=$(sha256sum <"$path" 2>/dev/null) || sum='?'
        content=${sum%% *}
      fi ;;
    16384) type=d; size=- ;;                               # 0040000
    40960) type=l; content=$(readlink "$path") ;;          # 0120000
    4096)  type=p; size=- ;;                               # 0010000
    49152) type=s; size=- ;;                               # 0140000
    8192)  type=c; size=- ;;                               # 0020000
    24576) type=b; size=- ;;                               # 0060000
    *)     type='?'; size=- ;;
  esac
  printf '%s %s %s %s %s\n' "$type" "$perm" "$size" "$content" "${path#./}"
done <"$tmp/stat"
exec 3<&-
