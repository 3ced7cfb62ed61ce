#!/bin/sh
# A recipe's service (src/recipe.rs), run by busybox init: /etc/vmcheck/service NAME respawn|once.
# Runs the command line in /etc/vmcheck/services/NAME.cmd with sh. Its stdout and stderr go to
# the console, each line prefixed "NAME: ", and to /run/vmcheck/services/NAME.log. Its pid is in
# NAME.pid while it runs; when it ends, its exit status is appended to NAME.exits and the console
# gets "vmcheck: service NAME exited with status N" with its last lines. A respawned service is
# started again by init one second later.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
name=$1
mode=$2
dir=/run/vmcheck/services
mkdir -p "$dir"
log=$dir/$name.log
echo "vmcheck: service $name starting"
# The log keeps every run's lines; the exit shows this run's.
before=$(cat "$log" 2>/dev/null | wc -l)
{
  sh "/etc/vmcheck/services/$name.cmd" </dev/null 2>&1 &
  echo $! > "$dir/$name.pid"
  wait $!
  echo $? > "$dir/$name.status"
} | while IFS= read -r line; do
  printf '%s\n' "$line" >> "$log"
  printf '%s: %s\n' "$name" "$line"
done
status=$(cat "$dir/$name.status" 2>/dev/null)
rm -f "$dir/$name.pid"
echo "${status:-unknown}" >> "$dir/$name.exits"
if [ "$mode" = respawn ]; then next="restarting in 1 s"; else next="not restarted"; fi
echo "vmcheck: service $name exited with status ${status:-unknown} ($next); its last lines:"
tail -n +$((before + 1)) "$log" 2>/dev/null | tail -n 10 | while IFS= read -r line; do printf 'vmcheck: | %s\n' "$line"; done
[ "$mode" = respawn ] && sleep 1
exit 0
