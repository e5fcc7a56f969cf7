"""Anycast VIPs: announced by the local routing daemon while this node can serve."""
