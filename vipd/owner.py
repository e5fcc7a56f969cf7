"""What the daemon asks of anything that holds VIPs: a VRRP instance, an etcd election or an anycast
announcement. `lbctl maintenance` goes through this and nothing else."""
from __future__ import annotations

from typing import Any, Protocol


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


class CoreOwner:
    """The VipOwner reading of a shell whose pure core keeps the state and the maintenance flag
    (elections and anycast; a VRRP instance reads its FSM)."""
    config: Any
    core: Any

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def state(self) -> str:
        return self.core.state.value

    @property
    def maintenance(self) -> bool:
        return self.core.maintenance
