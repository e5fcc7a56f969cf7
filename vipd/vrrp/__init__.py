"""VRRP (RFC 5798 v3, RFC 3768 v2): the codec, the pure state machine, and the shell that runs it
on real sockets, addresses and links."""
