"""The backend interface.

A backend is a table of small kernels keyed by op name plus ``compile(plan)``, which
turns a :class:`graphdsl.compiler.Plan` into ``run(state, inputs) -> (output, updates)``.

A kernel is ``kernel(inputs, params, attrs, ctx) -> array``: ``inputs`` the parent
arrays in order, ``params`` the layer's parameters by local name (``kernel``, ``bias``,
``A`` ...), ``attrs`` the op's checked attributes. A kernel that changes its layer's
state entries (dropout's RNG key, batch-norm statistics, a recurrent state) returns
:class:`Stateful` ``(array, {entry: new value})`` instead, in any mode; the runner
collects the new values and a ``to_torch`` module writes them to its buffers.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from graphdsl.errors import BackendError, InputError, RuleError

Kernel = Callable[[list, Mapping[str, Any], Mapping[str, Any], "KernelContext"], Any]


@dataclass
class KernelContext:
    """Static facts a kernel may need: training flag, compute dtype, the layer's name
    and a per-layer cache (e.g. a merged adapter kernel)."""

    training: bool
    dtype: Any
    name: str
    op: str
    xp: Any
    cache: dict = field(default_factory=dict)


class Stateful(NamedTuple):
    """What a kernel returns when it changes state (Axon's ``StatefulOutput``): its
    ``output`` and ``updates``, ``{local entry name: new value}`` of the layer's state
    entries."""

    output: Any
    updates: Mapping[str, Any]


def with_updates(y: Any, updates: Mapping[str, Any]) -> Any:
    """``y`` as a kernel returns it: :class:`Stateful` when ``updates`` is not empty."""
    return Stateful(y, updates) if updates else y


_EMPTY: Mapping[str, Any] = {}


def check_positions(shape: Any, axes: Any, op: str) -> None:
    """Refuse a global pool of an input ``shape`` with size 0 on a spatial axis in
    ``axes``: the max of no positions has no value, their mean is NaN (every backend and
    the ONNX export refuse it alike)."""
    if any(shape[a] == 0 for a in axes):
        raise RuleError(f"{op} over 0 positions: the input of shape {tuple(shape)} has size "
                        "0 on a spatial axis", "give every spatial axis at least one "
                        "position", InputError)


def plan_runner(plan: Any, kernels: Mapping[str, Kernel],
                make_ctx: Callable[[Any], KernelContext],
                fetch: Callable[[Any, Mapping], Mapping[str, Any]],
                convert_input: Callable[[Any, bool, str, Any], Any],
                copy: Callable[[Any], Any], to_state: Callable[[Any], Any] = lambda v: v,
                then: Mapping[int, Callable[[Any, Mapping[str, Any]], Any]] | None = None
                ) -> Callable[[Any, list], tuple[Any, dict]]:
    """The executor every backend shares: a flat loop of kernel calls over numbered slots.

    ``fetch(step, state.data)`` returns the step's parameters by local name (checked and
    converted for the backend); ``convert_input(array, is_int, name, node)`` one input;
    ``to_state(value)`` a new state value as the ModelState holds it (a NumPy array);
    ``then`` a backend's fusions ``{slot: fn(x, attrs)}``: the step writing that slot
    (an activation) runs ``fn`` on its one input, within the call of the step just before
    it when that step makes the input (a failure there names that step's layer).
    Each intermediate is released after its last use; an exception inside a kernel comes
    back as a GraphDSLError naming the layer. An output that may share the model's memory
    (``plan.copy_out``) is returned as ``copy(array)``, so editing it changes nothing.

    Returns ``run(state, arrays)``: ``arrays`` one per model input in ``plan.inputs``
    order, each of the shape that input declares (None axes any size); it returns
    ``(output, updates)``, the output of the model's output shape (a tuple or dict for a
    container) and ``{(layer, entry): new value}`` of the state entries that kernels
    changed (:class:`Stateful`).
    """
    prog: list[tuple] = []
    then = then or {}
    written: set = set()
    for step in plan.steps:
        if step.op not in kernels:
            raise plan.step_error(step, f"this backend has no kernel for op {step.op!r}",
                                  "register one with the backend's register_kernel",
                                  cls=BackendError)
        fn = then.get(step.out)
        if fn is not None and prog and prog[-1][3] == step.ins[0]:
            kern, first, ins, _, free, attrs, ctx, refs, chain = prog.pop()
            prog.append((_then(kern, fn, step.attrs), first, ins, step.out, free + step.free,
                         attrs, ctx, refs, chain))
            continue
        kern = kernels[step.op] if fn is None else (lambda ins, p, a, ctx, f=fn: f(ins[0], a))
        refs = {r.local: (r.owner, r.name) for r in step.params}
        # state entries an earlier step (another use of a block's body) may have changed
        chain = tuple((r.local, (r.owner, r.name)) for r in step.params
                      if r.kind == "state" and (r.owner, r.name) in written)
        written.update((r.owner, r.name) for r in step.params if r.kind == "state")
        prog.append((kern, step, step.ins, step.out, step.free, step.attrs, make_ctx(step),
                     refs, chain))
    inputs = [(slot, node.dtype.startswith("int"), name, node)
              for name, slot, node in plan.inputs]
    n_slots, out_slot = plan.n_slots, plan.output

    def run(state: Any, arrays: list) -> tuple[Any, dict]:
        slots: list[Any] = [None] * n_slots
        for (slot, is_int, name, node), a in zip(inputs, arrays):
            slots[slot] = None if a is None else convert_input(a, is_int, name, node)
        data = state.data
        updates: dict = {}
        fresh: dict = {}  # (layer, entry) -> the kernel's new value, as the kernel made it
        step = None
        try:
            for kern, step, ins, out, free, attrs, ctx, refs, chain in prog:
                p = fetch(step, data) if step.params else _EMPTY
                if chain:  # read what the previous use left, as a torch module does
                    p = {**p, **{loc: fresh[k] for loc, k in chain if k in fresh}}
                y = kern([slots[i] for i in ins], p, attrs, ctx)
                if type(y) is Stateful:
                    y, new = y
                    for local, value in new.items():
                        updates[refs[local]] = to_state(value)
                        fresh[refs[local]] = value
                slots[out] = y
                for f in free:
                    slots[f] = None
        except Exception as e:
            if step is None:
                raise
            raise plan.kernel_failure(step, e, slots) from None
        out = slots[out_slot]
        if copy_out:
            out = copy_outputs(out, copy_out, copy)
        return out, updates

    copy_out = plan.copy_out if any(plan.copy_out) else None
    return run


def _then(kernel: Kernel, fn: Callable[[Any, Mapping[str, Any]], Any],
          attrs: Mapping[str, Any]) -> Kernel:
    """``kernel`` followed by ``fn(y, attrs)`` on its output (:class:`Stateful` kept)."""
    def run(ins: list, p: Mapping[str, Any], a: Mapping[str, Any], ctx: KernelContext) -> Any:
        y = kernel(ins, p, a, ctx)
        if type(y) is Stateful:
            return Stateful(fn(y.output, attrs), y.updates)
        return fn(y, attrs)

    return run


def state_fetch(plan: Any, convert: Callable[[Any, Any], Any]
                ) -> Callable[[Any, Mapping], dict[str, Any]]:
    """The ``fetch(step, state.data)`` of :func:`plan_runner`: each step's parameters by
    local name, as ``convert(value, ref)`` makes them for the backend.

    State values are immutable (graphdsl.state), so a value seen before (same identity)
    needs no check and no conversion: the converted value is kept per parameter, and
    kernels may cache what they derive from it on its identity. A missing value or one
    of the wrong shape is a StateError naming the layer (``plan.param_value``).
    """
    refs = {step.out: tuple((i, r.local, r.owner, r.name, r)
                            for i, r in enumerate(step.params)) for step in plan.steps}
    # per parameter: (state value, its converted value); one tuple store, thread-safe
    memo = {step.out: [(None, None)] * len(step.params) for step in plan.steps}

    def fetch(step: Any, data: Mapping) -> dict[str, Any]:
        p = {}
        seen = memo[step.out]
        for i, local, owner, pname, ref in refs[step.out]:
            try:
                arr = data[owner][pname]
            except (KeyError, TypeError):
                arr = None  # missing: param_value says so
            hit = seen[i]
            if arr is None or hit[0] is not arr:
                arr = plan.param_value(step, i, data)
                hit = seen[i] = (arr, convert(arr, ref))
            p[local] = hit[1]
        return p

    return fetch


def copy_outputs(out: Any, flags: tuple[bool, ...], copy: Callable[[Any], Any]) -> Any:
    """``out`` (an array, or a tuple/dict of them) with the flagged elements copied."""
    if isinstance(out, dict):
        return {k: copy(v) if f else v for (k, v), f in zip(out.items(), flags)}
    if isinstance(out, tuple):
        return tuple(copy(v) if f else v for v, f in zip(out, flags))
    return copy(out)


class Backend(ABC):
    """Base class: ``name``, ``kernels`` and ``compile``."""

    name: str = "?"
    kernels: Mapping[str, Kernel] = {}

    @abstractmethod
    def compile(self, plan: Any, **options: Any) -> Callable[[Any, list], tuple[Any, dict]]:
        """Turn a Plan into ``run(state, inputs) -> (output, {(layer, entry): value})``."""

    def __repr__(self) -> str:
        return f"<graphdsl backend {self.name}: {len(self.kernels)} kernels>"
