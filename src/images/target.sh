#!/bin/sh
# The storage target daemon, restarted by init if it dies.
traddr=$(for w in $(cat /proc/cmdline); do case "$w" in vmcheck.net=*) a=${w#*,}; echo "${a%%/*}";; esac; done | head -n 1)
exec /usr/bin/vmcheck-target --listen 0.0.0.0:10124 --traddr "${traddr:-0.0.0.0}"
