"""What the daemon asks of anything that holds VIPs: a VRRP instance today; an etcd election or an
anycast announcement would be one more kind. `lbctl maintenance` goes through this and nothing else."""
from __future__ import annotations

from typing import Protocol


class VipOwner(Protocol):
    kind: str                      # "vrrp", ...

    @property
    def name(self) -> str: ...

    @property
    def state(self) -> str: ...

    @property
    def maintenance(self) -> bool: ...

    def set_maintenance(self, on: bool) -> None:
        """On: hand the VIPs over as a stop would (no connection lost), then never take them while
        on. Off: be a candidate again. Kept across a restart of the owner itself."""
