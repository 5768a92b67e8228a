"""ModelState: parameters and state of a model, as plain NumPy arrays.

``data[layer][param]`` is an ordinary mutable mapping: a value replaced between calls
is what the next call uses. Frozen flags live beside the data; non-trainable state
entries (e.g. a dropout RNG key) are listed in ``state`` and never count as parameters.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

Predicate = Callable[[str, str], bool]


def _predicate(pred: Predicate | Iterable[str] | str | None) -> Predicate:
    if pred is None:
        return lambda layer, param: True
    if callable(pred):
        return pred
    names = {pred} if isinstance(pred, str) else set(pred)
    return lambda layer, param: layer in names


class ModelState:
    """Parameters (``data``), frozen flags and state-entry names of a model.

    ``data``: ``{layer: {param: np.ndarray}}``; ``frozen``: set of ``(layer, param)``;
    ``state``: ``{layer: [entry names]}`` of non-parameter entries.
    """

    def __init__(self, data: dict[str, dict[str, np.ndarray]] | None = None,
                 frozen: Iterable[tuple[str, str]] = (),
                 state: dict[str, list[str]] | None = None) -> None:
        self.data: dict[str, dict[str, np.ndarray]] = data if data is not None else {}
        self.frozen: set[tuple[str, str]] = set(frozen)
        self.state: dict[str, list[str]] = state if state is not None else {}

    @classmethod
    def empty(cls) -> ModelState:
        """A state with nothing in it (init creates every value)."""
        return cls()

    def copy(self) -> ModelState:
        """New dicts, same arrays."""
        return ModelState({k: dict(v) for k, v in self.data.items()}, self.frozen,
                          {k: list(v) for k, v in self.state.items()})

    def deepcopy(self) -> ModelState:
        """New dicts and copied arrays."""
        return ModelState({k: {p: np.array(a, copy=True) for p, a in v.items()}
                           for k, v in self.data.items()}, self.frozen,
                          {k: list(v) for k, v in self.state.items()})

    # -- classification ---------------------------------------------------------------------
    def is_state(self, layer: str, param: str) -> bool:
        return param in self.state.get(layer, ())

    def is_frozen(self, layer: str, param: str) -> bool:
        return (layer, param) in self.frozen

    def _params(self):
        for layer, params in self.data.items():
            for p, arr in params.items():
                if not self.is_state(layer, p):
                    yield layer, p, arr

    # -- freezing (returns a new ModelState sharing the arrays, like Axon) ------------------
    def freeze(self, predicate: Predicate | Iterable[str] | str | None = None) -> ModelState:
        """Freeze parameters where ``predicate(layer, param)`` is true (default: all).
        A layer name or a list of names freezes those layers."""
        pred = _predicate(predicate)
        out = self.copy()
        out.frozen |= {(layer, p) for layer, p, _ in self._params() if pred(layer, p)}
        return out

    def unfreeze(self, predicate: Predicate | Iterable[str] | str | None = None
                 ) -> ModelState:
        """Unfreeze parameters where ``predicate(layer, param)`` is true (default: all)."""
        pred = _predicate(predicate)
        out = self.copy()
        out.frozen = {(layer, p) for layer, p in self.frozen if not pred(layer, p)}
        return out

    # -- views and counts --------------------------------------------------------------------
    def trainable_parameters(self) -> dict[str, dict[str, np.ndarray]]:
        """``{layer: {param: array}}`` of parameters that are not frozen."""
        out: dict[str, dict[str, np.ndarray]] = {}
        for layer, p, arr in self._params():
            if not self.is_frozen(layer, p):
                out.setdefault(layer, {})[p] = arr
        return out

    def frozen_parameters(self) -> dict[str, dict[str, np.ndarray]]:
        """``{layer: {param: array}}`` of frozen parameters."""
        out: dict[str, dict[str, np.ndarray]] = {}
        for layer, p, arr in self._params():
            if self.is_frozen(layer, p):
                out.setdefault(layer, {})[p] = arr
        return out

    def parameter_count(self) -> int:
        """Number of scalars in all parameters (state entries excluded)."""
        return sum(int(np.size(a)) for _, _, a in self._params())

    def trainable_parameter_count(self) -> int:
        return sum(int(np.size(a)) for v in self.trainable_parameters().values()
                   for a in v.values())

    def frozen_parameter_count(self) -> int:
        return sum(int(np.size(a)) for v in self.frozen_parameters().values()
                   for a in v.values())

    def parameter_bytes(self) -> int:
        return sum(int(np.asarray(a).nbytes) for _, _, a in self._params())

    def __repr__(self) -> str:
        return (f"ModelState(layers={len(self.data)}, parameters={self.parameter_count()}, "
                f"trainable={self.trainable_parameter_count()}, "
                f"frozen={self.frozen_parameter_count()})")

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, ModelState):
            return NotImplemented
        if self.frozen != other.frozen or self.data.keys() != other.data.keys():
            return False
        norm = {k: sorted(v) for k, v in self.state.items() if v}
        if norm != {k: sorted(v) for k, v in other.state.items() if v}:
            return False
        for layer, params in self.data.items():
            o = other.data[layer]
            if params.keys() != o.keys():
                return False
            for p, a in params.items():
                b = o[p]
                if np.asarray(a).dtype != np.asarray(b).dtype or not np.array_equal(a, b):
                    return False
        return True

    __hash__ = None  # type: ignore[assignment]
