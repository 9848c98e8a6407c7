"""Communication strategies: pure functions from (topology, rank groups, buffer) to a Plan.

Every strategy synchronizes the same thing — the element-wise sum of each group's buffers —
and differs in which collectives it uses, over which sub-groups, and in what order. A strategy
never knows which executor will run its plan.

One file per strategy in this package; each registers itself (`@register`), and every module
here is imported below, so adding a strategy is adding one file (docs/distributed.md,
"Adding a strategy").
"""
from __future__ import annotations

import importlib
import pkgutil

from hdc.strategies.base import (REGISTRY, TIER_ORDER, OuterStep, Strategy, append_chunks, bucketed, by_site,
                                 knob_names, knobs, make_strategy, register, strategy_from_dict, strategy_table,
                                 widest_tier)

for _m in pkgutil.iter_modules(__path__):
    if _m.name not in ("base", "docs"):  # every other module here is a strategy
        importlib.import_module(f"{__name__}.{_m.name}")

from hdc.strategies.chunked import Chunked  # noqa: E402
from hdc.strategies.distributed_optimizer import DistributedOptimizer  # noqa: E402
from hdc.strategies.flat_ring import FlatRing  # noqa: E402
from hdc.strategies.hierarchical import Hierarchical  # noqa: E402
from hdc.strategies.local_sgd import LocalSGD  # noqa: E402

STRATEGY_NAMES = tuple(REGISTRY)

__all__ = ["REGISTRY", "STRATEGY_NAMES", "TIER_ORDER", "OuterStep", "Strategy", "append_chunks", "bucketed", "by_site",
           "knob_names", "knobs", "make_strategy", "register", "strategy_from_dict", "strategy_table",
           "widest_tier", "Chunked", "DistributedOptimizer", "FlatRing", "Hierarchical", "LocalSGD"]
