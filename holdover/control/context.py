"""What the control plane's parts need of each other, as one Protocol.

The revision manager and the persistence layer act on the control plane that owns
them (holdover/control/facade.py's ``Control``); they see it through ``Context`` so that
no module of the control side imports the facade that imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..config import Config
    from ..core.lifecycle import RevisionState
    from ..proxy.endpoint import Stats
    from ..state import StateStore
    from ..supervisor.supervisor import Revision, Supervisor
    from ..supervisor.worker import Worker
    from .pins import PinDirectory
    from .router import Router
    from .ticker import Tasks


class Context(Protocol):
    config: Config
    supervisor: Supervisor
    sessions: PinDirectory
    router: Router
    store: StateStore
    tasks: Tasks
    rolling: Revision | None
    closing: bool
    revs: Any  # the RevisionManager (holdover/control/revisions.py)
    discovery: Any  # external revisions (holdover/control/external.py)

    def routing_changed(self) -> None: ...

    def revision_changed(self, rid: str, before: RevisionState, after: RevisionState
                         ) -> None: ...

    async def record_event(self, kind: str, message: str, revision: str | None = None,
                           worker: str | None = None, data: dict | None = None) -> None: ...

    async def save_revisions(self) -> None: ...

    def worker_status(self, w: Worker) -> dict[str, Any]: ...

    def end_sessions_of(self, revision: str, reason: str) -> int: ...

    def inflight(self, w: Worker) -> int: ...

    def stats(self, w: Worker) -> Stats: ...

    def runs_elsewhere(self, rid: str) -> bool: ...
