#!/bin/sh
# open-iscsi's daemon on the initiator, restarted by init if it dies. iscsiadm needs it for
# every login and logout, and it re-logs in sessions the target dropped.
mkdir -p /etc/iscsi /run/lock/iscsi /var/lib/iscsi
# One initiator name per boot (the image is an initramfs): the target admits any initiator.
if [ ! -s /etc/iscsi/initiatorname.iscsi ]; then
  echo "InitiatorName=iqn.2019-05.io.vmcheck:$(hostname)-$(cut -c1-8 /proc/sys/kernel/random/uuid)" > /etc/iscsi/initiatorname.iscsi
fi
exec /usr/sbin/iscsid -f
