"""What a config check may learn about this host now: its interfaces, its addresses, its CPUs and
its programs. The checks take a Host, so a test can hand them another one."""
from __future__ import annotations

import ipaddress
import os
import shutil
import socket


class Host:
    def has_interface(self, name: str) -> bool:
        # if_nametoindex asks this network namespace; /sys/class/net may be another one's mount.
        try:
            socket.if_nametoindex(name)
        except OSError:
            return False
        return True

    def holds_address(self, address: str, interface: str | None = None) -> bool:
        """True when a socket can bind `address`: the kernel's own answer to "is it local"
        (a link-local IPv6 address is looked up on `interface`)."""
        ip = ipaddress.ip_address(address)
        if ip.version == 4:
            family, where = socket.AF_INET, (address, 0)
        else:
            scope = 0
            if ip.is_link_local:
                if interface is None or not self.has_interface(interface):
                    return False
                scope = socket.if_nametoindex(interface)
            family, where = socket.AF_INET6, (address, 0, 0, scope)
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind(where)
            except OSError:
                return False
        return True

    def cpu_count(self) -> int:
        return os.cpu_count() or 1

    def which(self, program: str, path: str | None = None) -> str | None:
        """The program's path as a shell would find it on `path` (default: this process's PATH)."""
        return shutil.which(program, path=path)

    def cannot_execute(self, path: str) -> str | None:
        """Why `path` cannot be executed, or None."""
        if not os.path.lexists(path):
            return "does not exist"
        if not os.path.exists(path):
            return "is a dangling symlink"
        if os.path.isdir(path):
            return "is a directory"
        if not os.access(path, os.X_OK):
            return "is not executable (chmod +x)"
        return None
