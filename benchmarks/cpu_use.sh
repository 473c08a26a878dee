#!/usr/bin/env bash
# The wall time of a command and what the whole machine's CPU did meanwhile (from /proc/stat): busy
# CPU-seconds and the idle fraction. For `make test` on a clean clone (README "Tests"):
#   d=$(mktemp -d) && git clone -q . "$d/c" && (cd "$d/c" && bash benchmarks/cpu_use.sh bash .ci/run); rm -rf "$d"
# Other load on the machine counts too: measure on an idle one.
set -u
read -r _ u n s i w x y z _ < /proc/stat; before=$((u + n + s + i + w + x + y + z)); before_idle=$((i + w))
start=$(date +%s.%N)
"$@"; rc=$?
read -r _ u n s i w x y z _ < /proc/stat; after=$((u + n + s + i + w + x + y + z)); after_idle=$((i + w))
tick=$(getconf CLK_TCK)
total=$((after - before)); idle=$((after_idle - before_idle))
echo "wall $(echo "$(date +%s.%N) - $start" | bc) s; busy $(echo "scale=1; ($total - $idle) / $tick" | bc) CPU-s;" \
  "idle fraction $(echo "scale=3; $idle / $total" | bc); rc $rc"
exit $rc
