"""Input-shape signatures checked by pattern: a new sequence length runs few shape rules.

A decoding loop calls a model with new input sizes at every token; running every shape
rule again for each (graph.infer_shapes) walks the whole graph. Instead the rules run
once per *pattern* of a signature: each free size (an axis the input declares None) of 2
or more becomes a ``Size``, an int a rule may pass on and compare but whose value
it cannot read, equal sizes the same one. A rule that holds on Sizes holds for every
signature of the pattern; the few that read a value (arithmetic, ordering, equality with
another constant) run again, with the concrete sizes, for each new signature.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from .errors import RuleError
from .graph import Graph, infer_shapes, input_fits, rule_error
from .node import Node
from .registry import OPS

Signature = tuple  # one shape (tuple of ints) or None (an optional input left out) per input


class ValueNeeded(Exception):
    """A shape rule read the value of a ``Size``: it runs per signature."""


def _value_needed(self: Size, *args: Any) -> Any:
    raise ValueNeeded


def _is(x: Any, k: int) -> bool:
    return type(x) is int and x == k


class Size(int):
    """A free input size >= 2 known by identity. Equal to itself; unequal to other Sizes
    (a pattern gives equal sizes one Size), to None and to numbers below 2; any other use
    (arithmetic, ordering, printing, equality with another number) raises ValueNeeded.
    Its int value is a negative sentinel, so that code reading it in C fails loudly."""

    def __new__(cls, index: int) -> Size:
        self = super().__new__(cls, -(2 ** 62))
        self.index = index
        return self

    def __eq__(self, other: Any) -> bool:
        if other is self:
            return True
        if other is None or isinstance(other, Size) or (type(other) in (int, bool)
                                                         and other < 2):
            return False
        raise ValueNeeded

    def __ne__(self, other: Any) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return id(self)

    def __bool__(self) -> bool:
        return True

    # the arithmetic whose result does not depend on the value (reshape's -1 of a mask)
    def __mul__(self, other: Any) -> Any:
        return self if _is(other, 1) else 0 if _is(other, 0) else _value_needed(self)

    __rmul__ = __mul__

    def __floordiv__(self, other: Any) -> Any:
        return self if _is(other, 1) else _value_needed(self)

    def __mod__(self, other: Any) -> Any:
        return 0 if _is(other, 1) else _value_needed(self)

    def __add__(self, other: Any) -> Any:
        return self if _is(other, 0) else _value_needed(self)

    __radd__ = __add__
    __sub__ = __add__  # x - 0 is x, as x + 0

    def __copy__(self) -> Size:
        return self

    def __deepcopy__(self, memo: dict) -> Size:
        return self


for _m in ("lt le gt ge rsub rfloordiv truediv rtruediv "
           "rmod divmod rdivmod pow rpow neg pos abs invert and rand or ror xor rxor lshift "
           "rlshift rshift rrshift int index float round trunc floor ceil str repr "
           "format").split():
    setattr(Size, f"__{_m}__", _value_needed)


def _bind(shape: Any, values: list[int]) -> Any:
    """``shape`` (a tuple, or a container's tuple/dict of them) with each Size's value."""
    if isinstance(shape, Size):
        return values[shape.index]
    if isinstance(shape, (tuple, list)):
        return type(shape)(_bind(d, values) for d in shape)
    if isinstance(shape, dict):
        return {k: _bind(v, values) for k, v in shape.items()}
    return shape


class Pattern:
    """The shape rules of a graph for one pattern of input sizes: each node's shape in
    Sizes where its rule holds for every value (``shapes``), and the nodes whose rules
    read a value or follow such a node (``steps``), run again for each signature."""

    def __init__(self, g: Graph, key: Signature, n_sizes: int) -> None:
        sizes = [Size(i) for i in range(n_sizes)]
        shapes: dict[int, Any] = {}
        steps: list[Node] = []
        for n, given in zip(g.input_nodes, key):
            shapes[n.id] = n.shape if given is None else tuple(
                sizes[~d] if d < 0 else d for d in given)
        for n in g.order:
            if n.id in shapes:
                continue
            try:
                shapes[n.id] = OPS[n.op].infer_shape([shapes[i.id] for i in n.inputs],
                                                     n.attrs)
            except Exception:  # a value was read, a rule failed on Sizes, or an input did
                steps.append(n)
        self.g, self.shapes, self.steps = g, shapes, steps

    def holds(self, values: list[int], full: Mapping[int, Any]) -> bool:
        """Whether the Size-shapes, given ``values``, are the shapes of ``full`` (the
        checked shapes of one signature of the pattern)."""
        try:
            return all(_bind(s, values) == full[k] for k, s in self.shapes.items())
        except ValueNeeded:  # a Size in a form _bind does not know: learn nothing
            return False

    def check(self, values: list[int]) -> None:
        """Run the rules of ``steps`` for the sizes ``values``; the first that fails raises
        the error graph.infer_shapes raises for this signature."""
        done: dict[int, Any] = {}
        for n in self.steps:
            ins = [done[i.id] if i.id in done else _bind(self.shapes[i.id], values)
                   for i in n.inputs]
            try:
                done[n.id] = OPS[n.op].infer_shape(ins, n.attrs)
            except RuleError as e:
                raise rule_error(self.g, n, ins, e) from None


class SignatureChecker:
    """Checks input-shape signatures of ``g`` (one shape or None per input, in
    ``g.input_nodes`` order): a signature seen before costs a lookup; the first of a
    pattern runs graph.infer_shapes and learns the pattern; later ones run only the rules
    that read a size."""

    def __init__(self, g: Graph, kept: int = 64) -> None:
        self.g, self.kept = g, kept
        self.seen: OrderedDict[Signature, None] = OrderedDict()
        self.patterns: OrderedDict[Signature, Pattern | None] = OrderedDict()

    def __call__(self, sig: Signature) -> None:
        """Check ``sig``: the error graph.infer_shapes raises for it, if any."""
        if sig in self.seen:
            return
        split = self._pattern(sig)
        if split is not None and self.patterns.get(split[0]) is not None:
            self.patterns[split[0]].check(split[1])
        else:
            full = infer_shapes(self.g, {self.g.name(n): s for n, s in
                                         zip(self.g.input_nodes, sig) if s is not None})
            if split is not None and split[0] not in self.patterns:
                learnt = Pattern(self.g, split[0], len(split[1]))
                self._keep(self.patterns, split[0],
                           learnt if learnt.holds(split[1], full) else None)
        self._keep(self.seen, sig, None)

    def _pattern(self, sig: Signature) -> tuple[Signature, list[int]] | None:
        """``(pattern, sizes)``: ``sig`` with each free size >= 2 written ``~k``, k its
        index in ``sizes`` (equal sizes share one); None for a signature whose input
        shapes do not fit (graph.infer_shapes reports it)."""
        sizes: dict[int, int] = {}
        key = []
        for n, shape in zip(self.g.input_nodes, sig):
            if shape is None:
                key.append(None)
                continue
            if not input_fits(n.shape, shape):
                return None
            key.append(tuple(d if w is not None or d < 2 else ~sizes.setdefault(d, len(sizes))
                             for w, d in zip(n.shape, shape)))
        return tuple(key), list(sizes)

    def _keep(self, cache: OrderedDict, key: Signature, value: Any) -> None:
        cache[key] = value
        if len(cache) > self.kept:
            cache.popitem(last=False)
