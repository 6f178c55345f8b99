"""What the API process holds per collection, and what the manager's parts share.

``Served`` is one loaded version (its index and the encoder that matches it); ``CollectionState``
is a collection as served, with the lock that orders its writes against activation.
``ManagerBase`` declares what :mod:`strop.service.writes` and :mod:`strop.service.activation`
use of :class:`strop.service.manager.CollectionManager`, which mixes them in.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from strop.index.collection import ServedVersion
from strop.index.live import LiveIndex
from strop.index.store import CollectionRecord, DocumentStore
from strop.index.versions import VersionStore
from strop.service.models import LoadedModel, ModelRegistry


@dataclass
class Served:
    version: ServedVersion
    model: LoadedModel

    @property
    def id(self) -> str:
        return self.version.id

    @property
    def live(self) -> LiveIndex:
        return self.version.live


@dataclass
class CollectionState:
    record: CollectionRecord
    vstore: VersionStore
    served: Served
    cursor: int
    id_map: dict[str, int]
    write_lock: threading.Lock = field(default_factory=threading.Lock)
    compacting: bool = False
    active_mtime: float = 0.0
    teacher: LoadedModel | None = None


class ManagerBase:
    """The attributes and lookup the manager's mixins rely on (set by ``CollectionManager.__init__``)."""

    store: DocumentStore
    models: ModelRegistry
    data_dir: Path
    retention: int
    on_activate: Callable[[str, str], None] | None
    _states: dict[str, CollectionState]
    _lock: threading.RLock

    def state(self, name: str) -> CollectionState:
        raise NotImplementedError
