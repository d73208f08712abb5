#!/bin/sh
# tree-manifest.sh — print a canonical manifest of a directory tree.
#
# Usage: tree-manifest.sh [--no-content-in NAME] [DIR]   (DIR defaults to .)
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
# diff the two. With --no-content-in NAME, regular files whose path contains
# "NAME/" are listed with content "-" and not read (a guest under emulation
# then lists a directory of 10,000 small files without opening each one).
# Names may contain spaces and any bytes except newline
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

skip=
if [ "${1:-}" = --no-content-in ]; then
  skip="${2:?--no-content-in needs a NAME}/"
  shift 2
fi
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
  { if [ -n "$skip" ]; then grep -v -F -e "$skip" || true; else cat; fi; } |
  tr '\n' '\0' | xargs -0 -r sha256sum >"$tmp/hashes"

# One pass over both lists in awk: a shell loop, even without forks, took
# most of the time in an emulated guest. awk forks only for symlinks
# (readlink) and for files not in the batch.
awk -v hashes="$tmp/hashes" -v skip="$skip" '
  function hex_value(s,   i, v) {
    v = 0
    for (i = 1; i <= length(s); i++) v = v * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1
    return v
  }
  # s in single quotes for sh, each of its own quotes as \047"\047"\047.
  function shell_quoted(s) { gsub(/\047/, "\047\"\047\"\047", s); return "\047" s "\047" }
  # The first line of what cmd prints, or "" (and ok = 0) if none.
  function first_line(cmd,   line) {
    ok = (cmd | getline line) > 0
    close(cmd)
    return ok ? line : ""
  }
  # Next line of the hash list: hash_sum / hash_path ("" at the end).
  function next_hash(   line) {
    if ((getline line < hashes) > 0) {
      hash_sum = substr(line, 1, index(line, " ") - 1)
      hash_path = substr(line, index(line, "  ") + 2)
    } else {
      hash_sum = ""
      hash_path = ""
    }
  }
  BEGIN { next_hash() }
  {
    mode = hex_value($1)
    size = $2
    path = $0
    sub(/^[^ ]* [^ ]* /, "", path)
    perm = sprintf("%d%d%d%d", int(mode / 512) % 8, int(mode / 64) % 8, int(mode / 8) % 8, mode % 8)
    content = "-"
    kind = int(mode / 4096)
    if (kind == 8) {
      type = "f"
      if (skip != "" && index(path, skip) > 0) {
        content = "-"
      } else if (path == hash_path) {
        content = hash_sum
        next_hash()
      } else {
        # not in the batch (backslash in the name, or unreadable)
        sum = first_line("sha256sum < " shell_quoted(path) " 2>/dev/null")
        content = ok ? substr(sum, 1, index(sum " ", " ") - 1) : "?"
      }
    } else if (kind == 4) { type = "d"; size = "-" }
    else if (kind == 10) { type = "l"; content = first_line("readlink " shell_quoted(path)) }
    else if (kind == 1) { type = "p"; size = "-" }
    else if (kind == 12) { type = "s"; size = "-" }
    else if (kind == 2) { type = "c"; size = "-" }
    else if (kind == 6) { type = "b"; size = "-" }
    else { type = "?"; size = "-" }
    sub(/^\.\//, "", path)
    printf "%s %s %s %s %s\n", type, perm, size, content, path
  }
' "$tmp/stat"
