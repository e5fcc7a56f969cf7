"""What the proxy tells its owner happened, besides health verdicts (`on_serving`): the names of
its events and the callback that receives them. The owner (vipd.daemon) puts them in its event
stream; lbproxy itself keeps no stream."""
from __future__ import annotations

import enum
from typing import Callable


class ProxyEvent(enum.StrEnum):
    BACKEND_STATE = "backend.state"          # health moved a backend up or down (with the reason)
    FRONTEND_ALL_DOWN = "frontend.all_down"  # no backend of a frontend takes new connections, or one does again
    WORKER_RESTART = "proxy.worker_restart"  # a worker died unexpectedly and is being replaced


OnEvent = Callable[[ProxyEvent, dict], None]    # (kind, fields)
