"""Lay out the generated ``forward`` of a ``to_torch`` module as nested calls of its
block submodules.

A *block* is a submodule that groups layers (``model``, ``model.layers.0``,
``model.layers.0.mlp``, ...; a single layer is not one) whose steps can run as one call:
the plan's steps from the first to the last that reads one of its parameters use no
parameter from outside it, and no other block's steps interleave with them. Each block
runs as ``block(*values)`` from its parent's code, so module hooks on it fire the way
they do for a transformers module: ``torch.distributed.fsdp.fully_shard`` per block
all-gathers the block's parameters for its forward and backward, forward hooks see its
inputs and outputs. A block's inputs and outputs are the values that cross its span of
steps (hidden state, rotary positions, masks, ...), in slot order.

Pure bookkeeping on the plan: no torch here.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from graphdsl.compiler import Plan


@dataclass(frozen=True)
class Func:
    """One generated function: the root ``forward`` (``path == ""``) or a block's."""

    path: str
    lo: int  # first step (inclusive)
    hi: int  # last step (inclusive)
    ins: tuple[int, ...]  # slots it takes
    outs: tuple[int, ...]  # slots it returns
    body: tuple[int | Func, ...]  # a step index, or a child block's call


def _under(name: str, path: str) -> bool:
    return name == path or name.startswith(path + ".")


def _owners(plan: Plan, i: int) -> set[str]:
    s = plan.steps[i]
    return {r.owner for r in s.params} | ({s.name} if s.op == "constant" else set())


def choose_blocks(plan: Plan, candidates: Iterable[str]) -> dict[str, tuple[int, int]]:
    """``{path: (first step, last step)}`` of the candidate submodule paths that can run
    as one call (see the module docstring); shallower paths are chosen first."""
    cands = set(candidates)
    owners = [_owners(plan, i) for i in range(len(plan.steps))]
    spans: dict[str, list[int]] = {}
    for i, own in enumerate(owners):
        for o in own:
            segs = o.split(".")
            for k in range(1, len(segs)):
                p = ".".join(segs[:k])
                if p in cands:
                    span = spans.setdefault(p, [i, i])
                    span[1] = i
    chosen: dict[str, tuple[int, int]] = {}
    for p in sorted(spans, key=lambda p: (p.count("."), spans[p][0], p)):
        lo, hi = spans[p]
        if any(not _under(o, p) for own in owners[lo:hi + 1] for o in own):
            continue  # its steps read a parameter from outside (interleaved, or shared)
        if all(_under(p, q) or hi < qlo or lo > qhi for q, (qlo, qhi) in chosen.items()):
            chosen[p] = (lo, hi)
    return chosen


def layout(plan: Plan, blocks: dict[str, tuple[int, int]]) -> Func:
    """The root function with every chosen block nested as a call in its parent."""
    defined = {slot: -1 for _, slot, _ in plan.inputs}
    last_read: dict[int, int] = {}
    for i, s in enumerate(plan.steps):
        defined[s.out] = i
        for x in s.ins:
            last_read[x] = i

    def parent(p: str) -> str:
        segs = p.split(".")
        for k in range(len(segs) - 1, 0, -1):
            q = ".".join(segs[:k])
            if q in blocks:
                return q
        return ""

    kids: dict[str, list[str]] = {}
    for p in sorted(blocks, key=lambda p: blocks[p][0]):
        kids.setdefault(parent(p), []).append(p)

    def build(path: str, lo: int, hi: int) -> Func:
        body: list[int | Func] = []
        starts = {blocks[k][0]: k for k in kids.get(path, [])}
        i = lo
        while i <= hi:
            if i in starts:
                klo, khi = blocks[starts[i]]
                body.append(build(starts[i], klo, khi))
                i = khi + 1
            else:
                body.append(i)
                i += 1
        reads = {x for s in plan.steps[lo:hi + 1] for x in s.ins}
        ins = tuple(sorted(x for x in reads if defined[x] < lo))
        outs = tuple(sorted(s.out for s in plan.steps[lo:hi + 1]
                            if last_read.get(s.out, -1) > hi or s.out == plan.output))
        return Func(path, lo, hi, ins, outs, tuple(body))

    return replace(build("", 0, len(plan.steps) - 1),
                   ins=tuple(s for _, s, _ in plan.inputs), outs=(plan.output,))


def body_lines(plan: Plan, f: Func, step_line: Callable[[int, dict[str, str]], str]
               ) -> list[str]:
    """The body of ``f`` (indented 4): lookups of the holder submodules its own steps use
    and of its child blocks (relative to ``self``), each step's line from
    ``step_line(i, {layer: local holder variable})`` followed by the slots it frees, and
    each child block's call."""
    steps = [b for b in f.body if isinstance(b, int)]
    calls = [b for b in f.body if isinstance(b, Func)]
    used = sorted({o for i in steps for o in _owners(plan, i)} | {c.path for c in calls})
    lines = ["    _m = self._modules"]
    local: dict[str, str] = {}
    for j, owner in enumerate(used):
        rel = owner[len(f.path) + 1:] if f.path else owner
        segs = rel.split(".")
        local[owner] = f"_h{j}"
        path = "".join(f"._modules[{seg!r}]" for seg in segs[1:])
        lines.append(f"    _h{j} = _m[{segs[0]!r}]{path}  # {owner}")
    visible = set(f.ins)
    for b in f.body:
        if isinstance(b, int):
            lines.append(step_line(b, local))
            visible.add(plan.steps[b].out)
            lines += [f"    v{x} = None" for x in plan.steps[b].free]
            continue
        args = ", ".join(f"v{x}" for x in b.ins)
        outs = ", ".join(f"v{x}" for x in b.outs)
        lhs = f"{outs} = " if b.outs else ""  # a block returns one value bare
        lines.append(f"    {lhs}{local[b.path]}({args})  # block {b.path}")
        visible.update(b.outs)
        freed = {x for s in plan.steps[b.lo:b.hi + 1] for x in s.free} & visible
        lines += [f"    v{x} = None" for x in sorted(freed)]
    return lines


def block_funcs(root: Func) -> list[Func]:
    """Every block function under ``root``, parents first."""
    out, todo = [], [b for b in root.body if isinstance(b, Func)]
    while todo:
        f = todo.pop(0)
        out.append(f)
        todo += [b for b in f.body if isinstance(b, Func)]
    return out


def quiet_view_warning() -> None:
    """FSDP2 warns when a sharded module returns a view (an in-place op on it by the caller
    would skip the pre-backward hook). A block's outputs (often a reshape's view) go only to
    the generated code, which never writes in place, so the warning is dropped for blocks."""
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPGraphBlock\)",
                            category=UserWarning)


__all__ = ["quiet_view_warning", "Func", "choose_blocks", "layout", "body_lines", "block_funcs"]
