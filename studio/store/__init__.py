"""The SQLite project store: core (connection, write transactions, migrations, projects,
edits, adapters), pairs, proposals, runs and sources. Those import core only; this module joins them."""
from __future__ import annotations

from .core import BUSY_TIMEOUT_S, NotFoundError, StoreCore, now
from .migrations import SCHEMA_VERSION
from .pairs import Pairs
from .proposals import Proposals
from .runs import Runs
from .sources import Sources

__all__ = ["BUSY_TIMEOUT_S", "NotFoundError", "SCHEMA_VERSION", "Store", "now"]


class Store(StoreCore):
    @property
    def pairs(self) -> Pairs:
        return Pairs(self)

    @property
    def proposals(self) -> Proposals:
        return Proposals(self)

    @property
    def runs(self) -> Runs:
        return Runs(self)

    @property
    def sources(self) -> Sources:
        return Sources(self)
