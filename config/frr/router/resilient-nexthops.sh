#!/bin/sh
# A resilient nexthop group on a Linux router (kernel >= 5.13): when an edge is added or removed
# only the flows of that edge move. Measured by bench/ecmp.py (`python bench/ecmp.py`: 300 long-lived
# flows, 3 edges, 2 rounds): with zebra's plain (hash-threshold) route, adding the third edge broke
# 51% of all established flows and removing it 25% of the other edges' flows; with this group 0 and
# 0. An added edge only gets buckets idle for idle_timer: under steady traffic none at first.
# Kernel >= 5.13; tests/netns/test_anycast_resilient_netns.py runs this script.
# FRR 8.4 has no knob for it, so this is a static route instead of the BGP one: at metric 0 it
# replaces zebra's BGP route (metric 20) in the FIB; zebra sees a "kernel" route (distance 0) beat
# its BGP route and takes that out of the FIB, and puts it back when this route is deleted. Rerun
# the script with the edges that announce whenever that set changes.
# Each edge keeps one nexthop id, derived from its address: re-pointing an id at another edge would
# move all of that id's buckets, and zebra reverts a nexthop it knows that changes under it.
#   resilient-nexthops.sh DEV VIP EDGE...   e.g. resilient-nexthops.sh eth0 198.19.0.100 198.18.0.11 198.18.0.12
set -eu
dev=$1; vip=$2; shift 2
group=1000
ids=""
for edge in "$@"; do
    # From 2^24 up: far above the ids zebra gives its own nexthops (it counts up from 1).
    id=$(( (1 << 24) + $(printf %s "$edge" | cksum | cut -d' ' -f1) % (1 << 24) ))
    case "/$ids/" in
        */$id/*) echo "resilient-nexthops.sh: $edge has the nexthop id of another edge ($id)" >&2; exit 1 ;;
    esac
    ip nexthop replace id "$id" via "$edge" dev "$dev"
    ids="${ids:+$ids/}$id"
done
# idle_timer: a bucket moves to a new edge only after this long without traffic.
ip nexthop replace id $group group "$ids" type resilient buckets 128 idle_timer 60
ip route replace "$vip/32" nhid $group proto static
