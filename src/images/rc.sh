#!/bin/sh
# vmcheck guest bring-up, run once by busybox init (sysinit). Everything the guest contract
# promises is set up here: filesystems, modules, the test network, configfs, hostnqn.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm /run /tmp /var/tmp /root
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp

arg() { for w in $(cat /proc/cmdline); do case "$w" in "$1="*) echo "${w#*=}";; esac; done; }

# Kernel messages at info level reach the console (nvme connect, hot-plug), as on NixOS.
dmesg -n 7

while read -r m; do
  insmod "/lib/modules/$m" 2>/dev/null || echo "vmcheck: insmod $m failed"
done < /etc/vmcheck/modules

[ -d /sys/kernel/config ] && mount -t configfs configfs /sys/kernel/config

# The role's tools (and their libraries) are on a read-only ext4 disk with serial vmcheck-tools;
# the initramfs links their usual paths into /tools. virtio_blk has probed it by now; wait up to
# 10 s for its node all the same.
tools=
for i in $(seq 100); do
  for b in /sys/block/vd*; do
    [ "$(cat "$b/serial" 2>/dev/null)" = vmcheck-tools ] && tools=/dev/${b##*/}
  done
  [ -n "$tools" ] && [ -b "$tools" ] && break
  sleep 0.1
done
if [ -n "$tools" ]; then
  mount -t ext4 -o ro "$tools" /tools || echo "vmcheck: mounting the tools disk $tools failed"
else
  echo "vmcheck: no tools disk (serial vmcheck-tools)"
fi

name=$(arg vmcheck.name)
hostname "${name:-vmcheck}"
ip link set lo up

# vmcheck.net=MAC,ADDR/LEN[;MAC,ADDR/LEN]: the NIC with that MAC gets that address.
for spec in $(arg vmcheck.net | tr ';' ' '); do
  mac=${spec%%,*}; addr=${spec#*,}
  for dev in /sys/class/net/*; do
    if [ "$(cat "$dev/address")" = "$mac" ]; then
      ip addr add "$addr" dev "${dev##*/}"
      ip link set "${dev##*/}" up
    fi
  done
done

mkdir -p /etc/nvme
if [ ! -s /etc/nvme/hostnqn ]; then
  # The same host identity after every boot, and a different one on every machine of a run:
  # made from the first test NIC's MAC (52:54:00:12:<vlan>:<host>); random without a NIC.
  first=$(arg vmcheck.net | cut -d';' -f1)
  mac=$(echo "${first%%,*}" | tr -d :)
  if [ -n "$mac" ]; then
    id="766d6368-6563-4b00-8000-$mac"
  else
    id=$(cat /proc/sys/kernel/random/uuid)
  fi
  echo "nqn.2014-08.org.nvmexpress:uuid:$id" > /etc/nvme/hostnqn
  echo "$id" > /etc/nvme/hostid
fi
echo "vmcheck: $(hostname) is up"
