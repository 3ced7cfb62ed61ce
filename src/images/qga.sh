#!/bin/sh
# Runs the QEMU guest agent on the virtio-serial port the driver named org.qemu.guest_agent.0.
for p in /sys/class/virtio-ports/*; do
  if [ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ]; then
    exec /usr/sbin/qemu-ga -m virtio-serial -p "/dev/${p##*/}" -t /run -f /run/qemu-ga.pid
  fi
done
echo "vmcheck: no virtio-serial port org.qemu.guest_agent.0"
sleep 5
