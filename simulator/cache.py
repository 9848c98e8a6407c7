"""What one simulation may reuse from another: one object, passed down by whoever runs many.

Routes, plans, step templates and single-site baselines depend only on what a topology
describes, not on which object holds it: a sweep rebuilds an equal topology for every
strategy and chunk count of a grid point. Routes (with their step templates) are keyed by
`Topology.content_key`, plans by `Topology.structure_key` (they never look at link speeds),
baselines by the whole configuration; each table is a small LRU.

A sweep worker makes one `SimCache` per batch of configs and passes it to `simulate`; calls
that pass none share `DEFAULT`.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

from hdc.topology import Topology, lru_get
from simulator.network import Routes


class SimCache:
    def __init__(self, routes: int = 16, plans: int = 64, baselines: int = 512):
        self._sizes = {"routes": routes, "plans": plans, "baselines": baselines}
        self._tables: dict[str, OrderedDict] = {name: OrderedDict() for name in self._sizes}

    def get(self, table: str, key: Any, make: Callable[[], Any]) -> Any:
        """`make()`'s value for `key` in `table` ('routes', 'plans', 'baselines'), made once."""
        return lru_get(self._tables[table], key, make, self._sizes[table])

    def routes(self, topology: Topology) -> Routes:
        """Routes for the topology, built once per distinct topology content."""
        return self.get("routes", topology.content_key, lambda: Routes(topology))

    def clear(self) -> None:
        for table in self._tables.values():
            table.clear()


DEFAULT = SimCache()
