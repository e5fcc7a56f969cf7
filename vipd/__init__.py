"""vipd: VRRP virtual IP daemon with a built-in L4 load balancer."""
__version__ = "0.1.0"
