"""The search language of a sweep: grid and sampled keys (``space``), cases (``cases``) and
``--only`` filters (``only``), parsed once into a ``Search``.

A ``Search`` is the ``search:`` section of an experiment file, checked against the experiment
kind's keys: it yields the grid points, Tune's ``param_space``, the case lookup the trials
expand their case names with, and narrower searches for ``--only``. Ray is imported only to
build the ``param_space``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kdci_ray.search.cases import NAME, config_layer, expand, is_case_key
from kdci_ray.search.space import _domain, _parsed

KeyCheck = Callable[[dict[str, Any], str], None]


@dataclass(frozen=True)
class Search:
    """One parsed ``search:`` section (``section`` as written; ``specs``: param key ->
    ``(kind, args)``, a case group's args being its case mappings)."""

    section: dict[str, Any]
    specs: dict[str, tuple[str, list[Any]]]
    where: str = ""
    check: KeyCheck | None = field(default=None, compare=False, repr=False)

    @classmethod
    def parse(cls, section: dict[str, Any] | None, where: str = "",
              check: KeyCheck | None = None) -> Search:
        """Parse and check ``section`` (``check``: the kind's key check; the distillation
        config's by default); raises a ConfigError naming the problem."""
        section = {} if section is None else section
        specs = _parsed(section, where, check) if check is not None else _parsed(section, where)
        return cls(dict(section), specs, where, check)

    def points(self) -> list[dict[str, Any]]:
        """Every grid combination (last key varies fastest); case groups as case mappings;
        sampled keys left out. No grid key gives ``[{}]``."""
        grids = {k: args for k, (kind, args) in self.specs.items() if kind == "grid"}
        return [dict(zip(grids, combo, strict=True))
                for combo in itertools.product(*grids.values())]

    def count(self, num_samples: int = 1) -> int:
        """Trials Tune runs: the grid's size times ``num_samples``."""
        return math.prod(len(a) for kind, a in self.specs.values() if kind == "grid") * \
            num_samples

    def sampled(self) -> dict[str, tuple[str, list[Any]]]:
        """The keys Tune samples (not grid keys)."""
        return {k: spec for k, spec in self.specs.items() if spec[0] != "grid"}

    def param_space(self) -> dict[str, Any]:
        """Tune's ``param_space``: dotted keys; a case group is a grid over its case names."""
        return {key: _domain(kind, [c[NAME] for c in args] if is_case_key(key) else args)
                for key, (kind, args) in self.specs.items()}

    def cases(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``{param key: {case name: case}}`` (``{}`` without cases)."""
        return {key: {case[NAME]: case for case in args}
                for key, (_, args) in self.specs.items() if is_case_key(key)}

    def layer(self, params: dict[str, Any]) -> dict[str, Any]:
        """A trial's Tune parameters (case names) as one layer of dotted config keys."""
        return config_layer(expand(params, self.cases()))

    def restrict(self, kept: list[dict[str, Any]]) -> Search:
        """This search cut to the grid points ``kept`` (``--only``; ``only.restrict``)."""
        from kdci_ray.search.only import restrict

        cut = restrict(self.section, kept, self.where, *(() if self.check is None else
                                                          (self.check,)))
        return Search.parse(cut, self.where, self.check)
