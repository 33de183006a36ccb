#!/bin/sh
# Test network of namespaces for cluster benchmarks: `netns.sh up N` creates hosts
# ${P}h1..${P}hN (P: $NETNS_PREFIX, default `rl`), host i at 198.18.0.i/24 on ${P}0, a veth
# whose other end ${P}vi is on bridge ${P}br0 in namespace ${P}br, lo up everywhere (the
# names of `ringleader-tools netns up`; give another prefix to keep clear of its network); `netns.sh down N` removes them (and
# whatever a failed `up` left). Nothing is created or addressed in the root namespace
# except the veth pairs' creation, which happens inside the namespaces.
# Run a process on host i with `ip netns exec ${P}hi COMMAND`.
set -eu
P=${NETNS_PREFIX:-rl}
cmd=${1:-}
n=${2:-4}
case "$n" in ''|*[!0-9]*) echo "netns.sh: N must be a number" >&2; exit 2;; esac
[ "$n" -ge 1 ] && [ "$n" -le 250 ] || { echo "netns.sh: N must be 1 to 250" >&2; exit 2; }

down() {
    i=1
    while [ "$i" -le "$n" ]; do
        ip netns del "${P}h$i" 2>/dev/null || true
        i=$((i + 1))
    done
    ip netns del "${P}br" 2>/dev/null || true
}

case "$cmd" in
up)
    if ip netns list | grep -q "^${P}br\b"; then
        echo "netns.sh: namespace ${P}br exists: another test network is up (netns.sh down first)" >&2
        exit 1
    fi
    trap 'down' EXIT
    ip netns add "${P}br"
    ip -n "${P}br" link set lo up
    ip -n "${P}br" link add "${P}br0" type bridge
    ip -n "${P}br" link set "${P}br0" up
    i=1
    while [ "$i" -le "$n" ]; do
        h="${P}h$i"
        ip netns add "$h"
        ip -n "$h" link set lo up
        # Both ends are created inside their namespaces.
        ip -n "$h" link add "${P}0" type veth peer name "${P}v$i" netns "${P}br"
        ip -n "${P}br" link set "${P}v$i" master "${P}br0" up
        ip -n "$h" addr add "198.18.0.$i/24" dev "${P}0"
        ip -n "$h" link set "${P}0" up
        i=$((i + 1))
    done
    trap - EXIT
    ;;
down)
    down
    ;;
*)
    echo "usage: netns.sh up|down [N]" >&2
    exit 2
    ;;
esac
