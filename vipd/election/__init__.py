"""VIPs held through an etcd lease: config, the pure core, the etcd gateway client, the shell."""
