#!/usr/bin/env bash
# Test hosts as network namespaces, for the multi-host tests (tests/netns.rs) and by hand.
#
#   hosts.sh up PREFIX N            a bridge namespace PREFIXbr and hosts PREFIXh1..N on
#                                   10.77.0.1..N/24, each with eth0 on the bridge
#   hosts.sh shape PREFIX I RATE [DELAY [LOSS]]
#                                   shape what host I sends: tbf RATE (- for none), then
#                                   netem DELAY/LOSS (exit 3 when the kernel has no netem)
#   hosts.sh unshape PREFIX I       remove host I's shaping
#   hosts.sh cut PREFIX I           cut host I's link (its bridge port down)
#   hosts.sh heal PREFIX I          restore it
#   hosts.sh nat PREFIX I           put host I behind a NAT: its eth0 gets 10.78.I.1/24 (no
#                                   other host can reach it), the bridge namespace routes
#                                   (10.77.0.254) and maps 10.79.0.I, every port, to it (nft
#                                   dnat and snat); the other hosts route 10.79.0.0/24 there
#   hosts.sh down PREFIX            remove every namespace of PREFIX
#
# Needs root (or CAP_NET_ADMIN) and iproute2, and nftables for nat. Exits 2 when namespaces
# cannot be made here, 4 when nat has no nft.
set -euo pipefail
cmd=${1:-}
prefix=${2:-}
[ -n "$cmd" ] && [ -n "$prefix" ] || { sed -n '2,18p' "$0"; exit 64; }
bridge="${prefix}br"

case "$cmd" in
up)
    n=${3:?number of hosts}
    ip netns add "$bridge" 2>/dev/null || { echo "cannot create network namespaces here" >&2; exit 2; }
    ip -n "$bridge" link add br0 type bridge
    ip -n "$bridge" link set br0 up
    for i in $(seq 1 "$n"); do
        ns="${prefix}h$i"
        ip netns add "$ns"
        ip -n "$ns" link add eth0 type veth peer name "p$i" netns "$bridge"
        ip -n "$bridge" link set "p$i" master br0
        ip -n "$bridge" link set "p$i" up
        ip -n "$ns" addr add "10.77.0.$i/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
    done
    ;;
shape)
    i=${3:?host}; rate=${4:?rate}; delay=${5:-0ms}; loss=${6:-0%}
    ns="${prefix}h$i"
    parent="root"
    if [ "$rate" != "-" ]; then
        ip netns exec "$ns" tc qdisc add dev eth0 root handle 1: tbf rate "$rate" burst 32kbit latency 400ms
        parent="parent 1:1"
    fi
    if [ "$delay" != "0ms" ] || [ "$loss" != "0%" ]; then
        # shellcheck disable=SC2086
        ip netns exec "$ns" tc qdisc add dev eth0 $parent handle 10: netem delay "$delay" loss "$loss" 2>/dev/null \
            || { echo "no netem in this kernel: host $i is not delayed nor lossy" >&2; exit 3; }
    fi
    ;;
unshape)
    ip netns exec "${prefix}h${3:?host}" tc qdisc del dev eth0 root 2>/dev/null || true
    ;;
cut)
    ip -n "$bridge" link set "p${3:?host}" down
    ;;
heal)
    ip -n "$bridge" link set "p${3:?host}" up
    ;;
nat)
    i=${3:?host}
    command -v nft >/dev/null || { echo "no nft (nftables): cannot make a NAT" >&2; exit 4; }
    ns="${prefix}h$i"
    ip -n "$bridge" addr replace 10.77.0.254/24 dev br0
    ip netns exec "$bridge" sysctl -qw net.ipv4.ip_forward=1
    # Host I leaves the bridge for a link of its own to the router (the bridge namespace).
    ip -n "$bridge" link set "p$i" nomaster
    ip -n "$bridge" addr add "10.78.$i.254/24" dev "p$i"
    ip -n "$ns" addr flush dev eth0
    ip -n "$ns" addr add "10.78.$i.1/24" dev eth0
    ip -n "$ns" route add default via "10.78.$i.254"
    ip netns exec "$bridge" nft -f - <<EOF
table ip nat {
    chain pre { type nat hook prerouting priority -100; }
    chain post { type nat hook postrouting priority 100; }
}
add rule ip nat pre ip daddr 10.79.0.$i dnat to 10.78.$i.1
add rule ip nat post oifname "br0" ip saddr 10.78.$i.1 snat to 10.79.0.$i
EOF
    for other in $(ip netns list | awk '{print $1}' | grep -E "^${prefix}h[0-9]+$"); do
        [ "$other" = "$ns" ] && continue
        ip -n "$other" route replace 10.79.0.0/24 via 10.77.0.254
    done
    ;;
down)
    for ns in $(ip netns list | awk '{print $1}' | grep -E "^${prefix}(br|h[0-9]+)$"); do
        ip netns del "$ns" || true
    done
    ;;
*)
    sed -n '2,18p' "$0"; exit 64
    ;;
esac
