"""The namespace lab behind `vipd demo`, the namespace tests and the benches. Never imported by
the daemon: only the CLI's `demo` command reaches it."""
