#!/bin/sh
# Regenerate lsblk-2.38_* from the host's lsblk (util-linux 2.38). Needs root for a loop device
# with two partitions, so that the capture has "children". Run from this directory.
set -eu
img=$(mktemp /tmp/lsblk-capture.XXXXXX)
truncate -s 64M "$img"
# An MBR with two Linux partitions: 32 MiB at sector 2048, and the rest.
python3 - "$img" <<'PY'
import struct, sys
total = 64 * 1024 * 1024 // 512
entry = lambda start, n: struct.pack('<B3sB3sII', 0, b'\xff' * 3, 0x83, b'\xff' * 3, start, n)
with open(sys.argv[1], 'r+b') as f:
    mbr = bytearray(512)
    mbr[446:462] = entry(2048, 65536)
    mbr[462:478] = entry(67584, total - 67584)
    mbr[510:512] = b'\x55\xaa'
    f.write(mbr)
PY
dev=$(losetup -f --show -P "$img")
trap 'losetup -d "$dev"; rm -f "$img"' EXIT
# Without udev the kernel may not have scanned the table yet: ask it explicitly.
partx -a "$dev" 2>/dev/null || true
lsblk --json -b -o NAME,SIZE,TYPE,SERIAL,MODEL >lsblk-2.38_host_loop_partitions.json
# Without -b SIZE is a human-readable string; the parser must refuse it clearly.
lsblk --json -o NAME,SIZE,TYPE,SERIAL,MODEL >lsblk-2.38_host_human_sizes.json
