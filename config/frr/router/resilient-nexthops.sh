#!/bin/sh
# A resilient nexthop group on a Linux router (kernel >= 5.13): when an edge is added or removed
# only the flows of that edge move. With zebra's plain (hash-threshold) groups 45% of all
# established flows broke when a third edge was added, and 0 with this (research/bgp-anycast-frr.md).
# FRR 8.4 has no knob for it, so this is a static route instead of the BGP one; keep it in step
# with the edges that announce (or use it as the model for the router's own configuration).
#   resilient-nexthops.sh DEV VIP EDGE...   e.g. resilient-nexthops.sh eth0 198.19.0.100 198.18.0.11 198.18.0.12
set -eu
dev=$1; vip=$2; shift 2
ids=""
i=0
for edge in "$@"; do
    i=$((i + 1))
    ip nexthop replace id $((1000 + i)) via "$edge" dev "$dev"
    ids="${ids:+$ids/}$((1000 + i))"
done
# idle_timer: a bucket moves to a new edge only after this long without traffic.
ip nexthop replace id 1000 group "$ids" type resilient buckets 128 idle_timer 60
ip route replace "$vip/32" nhid 1000 proto static
