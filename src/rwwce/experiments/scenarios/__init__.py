"""The paper's experiments as scenario objects, one module each, registered here (one place).

Each scenario (a :class:`~rwwce.experiments.scenarios.base.Scenario`) owns its groups of models,
its arms, its metrics, its headline metric and table columns, its plots and the paper's figures;
the runner and the report iterate over :data:`SCENARIOS`. Adding a scenario is adding one module
with a ``Scenario`` subclass and one entry below.
"""

from __future__ import annotations

from .base import Scenario
from .fp_pair import FpPair
from .imbalance import Imbalance
from .medical import Medical

__all__ = ["SCENARIOS", "Scenario", "get"]

SCENARIOS: dict[str, Scenario] = {s.name: s for s in (FpPair(), Medical(), Imbalance())}


def get(name: str) -> Scenario:
    """The scenario called ``name`` (ValueError naming the known ones otherwise)."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(
            f"--scenario must be one of {', '.join(SCENARIOS)} or all, got {name!r}"
        ) from None
