#!/bin/sh
# Regenerate the fio-<version>_* fixtures from a real fio on the host: the fio on PATH names the
# files (Debian 12: fio 3.33; `PATH=/path/to/fio-3.38:$PATH ./capture_fio.sh` for a fio built
# from its fio-3.38 tag). Needs no devices: every job runs on files under $dir. Run from this
# directory.
set -u
dir=${1:-/tmp/fio-seed}
out=$(pwd)
v=$(fio --version) || exit 1
rm -rf "$dir" && mkdir -p "$dir" || exit 1
cd "$dir" || exit 1

# The seed's job (mayastor fio_nvme_basic) for 2 s on a 512 MiB file instead of /dev/nvme0n1.
fio --thread=1 --ioengine=libaio --direct=1 --bs=4k --iodepth=1 --rw=randrw --verify=crc32 \
  --numjobs=1 --group_reporting=1 --runtime=2 --name=job --filename="$dir/disk" --size=512M \
  --output-format=json >"$out/${v}_randrw_verify_libaio.json"

# Write 4 MiB with crc32 headers, then corrupt block 10's data (after its header).
fio --name=job --filename="$dir/v" --size=4M --bs=4k --rw=write --verify=crc32 --do_verify=0 \
  --ioengine=psync --output-format=json >/dev/null
printf 'CORRUPTCORRUPT' | dd of="$dir/v" bs=1 seek=$((10 * 4096 + 100)) conv=notrunc 2>/dev/null
verify_only="--name=job --filename=$dir/v --size=4M --bs=4k --rw=write --verify=crc32 --verify_only --ioengine=psync --output-format=json"
# shellcheck disable=SC2086
fio $verify_only >"$out/${v}_verify_only_crc_fail.stdout" 2>"$out/${v}_verify_only_crc_fail.stderr"
# shellcheck disable=SC2086
fio $verify_only >"$out/${v}_verify_only_crc_fail_merged.txt" 2>&1

# Also break block 20's header, and let fio carry on over verify errors.
printf 'XXXXXXXX' | dd of="$dir/v" bs=1 seek=$((20 * 4096)) conv=notrunc 2>/dev/null
# shellcheck disable=SC2086
fio $verify_only --continue_on_error=verify >"$out/${v}_verify_continue_on_error.json" \
  2>"$out/${v}_verify_continue_on_error.stderr"

# A synchronous engine with iodepth > 1: fio prints a note on stdout before the JSON.
fio --name=job --filename="$dir/v" --size=1M --bs=4k --rw=read --iodepth=4 --ioengine=psync \
  --output-format=json >"$out/${v}_psync_iodepth_note.stdout"

# An I/O error that is not a verify failure: writing to /dev/full fails with ENOSPC.
fio --name=job --filename=/dev/full --size=1M --bs=4k --rw=write --ioengine=psync \
  --output-format=json >"$out/${v}_write_dev_full_enospc.stdout" 2>/dev/null

# Two jobs without group_reporting: two entries in "jobs".
fio --ioengine=psync --rw=write --bs=4k --size=4M --name=a --filename="$dir/a" \
  --name=b --filename="$dir/b" --output-format=json >"$out/${v}_two_jobs.json"

# The interval logs the timeline asks for (workload::IntervalLogs): IOPS and latency once a
# second, Unix-epoch times, for the seed's job for 3 s; fio names them PREFIX_iops.1.log etc.
fio --thread=1 --ioengine=libaio --direct=1 --bs=4k --iodepth=1 --rw=randrw --verify=crc32 \
  --numjobs=1 --group_reporting=1 --runtime=3 --time_based=1 --name=job --filename="$dir/disk" \
  --size=64M --write_iops_log="$dir/p" --write_lat_log="$dir/p" --log_avg_msec=1000 \
  --log_unix_epoch=1 --output-format=json >/dev/null
cp "$dir/p_iops.1.log" "$out/${v}_randrw_iops.1.log"
cp "$dir/p_lat.1.log" "$out/${v}_randrw_lat.1.log"

# vmcheck's integrity job (workload::integrity_job) stopped by SIGINT after 2 s, as FioRun::stop
# does: "fio: terminating on signal 2" before the JSON; the exit status (128) in .status.
fio --thread=1 --ioengine=libaio --direct=1 --bs=4k --iodepth=8 --rw=randwrite --verify=crc32c \
  --verify_backlog=16 --do_verify=1 --size=64m --time_based=1 --runtime=60 --numjobs=1 \
  --group_reporting=1 --name=integrity --filename="$dir/disk" --output-format=json \
  >"$out/${v}_integrity_sigint.stdout" 2>/dev/null &
pid=$!
sleep 2
kill -INT $pid
wait $pid
echo "exit status $?" >"$out/${v}_integrity_sigint.status"

rm -rf "$dir"
