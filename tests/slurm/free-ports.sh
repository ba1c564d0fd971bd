#!/usr/bin/env bash
# Print the first port P >= FIRST (FIRST, FIRST+COUNT, FIRST+2*COUNT, ...) such that P .. P+COUNT-1
# are all free on this machine: no TCP socket (IPv4 or IPv6, any address, any state but TIME_WAIT)
# uses them as its local port. Exit status 1 when there is no such block below 65536.
# start-cluster.sh uses it to move off ports that another cluster or program holds.
#
#   tests/slurm/free-ports.sh [FIRST [COUNT]]     # defaults: 6817 4
set -euo pipefail

FIRST="${1:-6817}"
COUNT="${2:-4}"
[[ "$FIRST" =~ ^[0-9]+$ && "$COUNT" =~ ^[0-9]+$ && "$COUNT" -ge 1 ]] \
    || { echo "free-ports: usage: free-ports.sh [FIRST [COUNT]]" >&2; exit 2; }

# /proc/net/tcp*: field 2 is local ADDRESS:PORT (hex), field 4 the state (06 = TIME_WAIT, which
# does not keep a listener from binding). Read /proc directly: ss/netstat may be missing; plain
# POSIX awk (Debian's mawk), the hex port converted by bash.
declare -A busy=()
while read -r hex; do
    busy[$((16#$hex))]=1
done < <(awk 'FNR > 1 && $4 != "06" { n = split($2, a, ":"); print a[n] }' /proc/net/tcp /proc/net/tcp6 2>/dev/null)

for ((base = FIRST; base + COUNT - 1 <= 65535; base += COUNT)); do
    taken=0
    for ((p = base; p < base + COUNT; p++)); do
        [ -n "${busy[$p]:-}" ] && { taken=1; break; }
    done
    if [ "$taken" = 0 ]; then
        echo "$base"
        exit 0
    fi
done
echo "free-ports: no $COUNT free TCP ports from $FIRST up" >&2
exit 1
