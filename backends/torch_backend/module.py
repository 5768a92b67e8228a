"""Lower a graphdsl model to a real ``torch.nn.Module`` and read it back.

``to_torch(model, state)`` registers every parameter up front (state_dict keys
``"<layer>.<param>"``, e.g. ``"fc1.kernel"``, in the model's parameter order) and
generates a straight-line ``forward`` that calls the torch backend's kernels, so
``torch.compile(module, fullgraph=True)``, ``copy.deepcopy``,
``DistributedDataParallel`` and ``.to("cuda")`` all work; the steps of each block (a
submodule grouping layers, e.g. ``model.layers.0``) run as a call of that submodule, so
FSDP2's ``fully_shard`` per block works (``.blocks``).
``from_torch(module)`` gives back a ``ModelState`` (frozen = ``requires_grad`` is
False).

``gd.to_torch``/``gd.from_torch`` import this module on first use: ``import graphdsl``
never imports torch.
"""
from __future__ import annotations

import hashlib
import linecache
from collections.abc import Iterable, Mapping
from functools import partial, reduce
from typing import Any

import numpy as np
import torch

from graphdsl.adapters.contract import owns
from graphdsl.compiler import InputChecker, make_plan
from graphdsl.dtypes import FLOATS, HALF, dtype_name, float_name, is_float
from graphdsl.errors import BackendError, GraphDSLError, InputError, StateError, fmt_shape
from graphdsl.graph import check_input_names, check_known_keys, state_value
from graphdsl.io.filemap import private_view
from graphdsl.node import Node
from graphdsl.state import ModelState, need_state

from ..base import Stateful, copy_outputs
from . import (
    KERNELS,
    TorchContext,
    compiling,
    integer_input,
    numpy_view,
    resolve_device,
    tensor_numpy,
)
from . import blocks as tblocks
from .kernels import step_dtype


def _dtype_name(dtype: Any, what: str) -> str | None:
    """The float dtype name of ``dtype`` (a name, NumPy or torch dtype); None stays None."""
    if dtype is None:
        return None
    name = float_name(dtype)
    if name is None:
        raise GraphDSLError(f"unsupported module {what} {dtype!r}",
                            fix=f"use {what}=None (keep the state's dtypes) or one of "
                                f"{', '.join(FLOATS)}")
    return name


def _value_dtype(stored: np.dtype, adapter: bool, dtype: str | None,
                 adapter_dtype: str | None) -> Any:
    """The torch dtype a float state value stored as ``stored`` gets in the module:
    ``dtype`` (None: its own); an adapter's value (A, B, magnitude) ``adapter_dtype``,
    by default float32 over a half-precision base (PEFT's ``autocast_adapter_dtype``).
    None for integer values (kept)."""
    if not is_float(stored):
        return None
    name = dtype or dtype_name(stored)
    if adapter:
        name = adapter_dtype or ("float32" if name in HALF else name)
    return getattr(torch, name)


def policied_keys(g: Any) -> frozenset:
    """``{(layer, param)}`` read by layers with a mixed-precision policy: their dtype is
    the policy's, not the one the module's inputs and other layers compute in."""
    return frozenset(g.param_ref(n, s) for n in g.order if n.policy is not None
                     for s in n.params)


def _adapter_keys(g: Any) -> frozenset:
    """``{(layer, param)}`` of the values adapters own (A, B, magnitude, not the base's)."""
    return frozenset(g.param_ref(n, spec) for n in g.order for spec in n.params
                     if owns(n, spec))


class ModuleInfo:
    """What the module needs besides tensors: the model, its plan, the parameter table.
    Immutable and shared by copies (deepcopy returns it as is)."""

    def __init__(self, model: Node, plan: Any, entries: list, dtype: Any,
                 blocks: tuple[str, ...] = (), adapters: frozenset = frozenset()) -> None:
        self.model, self.plan, self.entries, self.dtype = model, plan, entries, dtype
        self.adapters = adapters  # (layer, param) of adapter values (their own dtype)
        self.policied = policied_keys(plan.graph)
        self.blocks = blocks  # submodules that run as calls (.blocks)
        self.input_names = [name for name, _, _ in plan.inputs]
        self.input_nodes = [node for _, _, node in plan.inputs]
        self.check = InputChecker(plan)

    def __deepcopy__(self, memo: dict) -> ModuleInfo:
        return self

    def __reduce__(self):  # pragma: no cover - modules are saved through state_dict
        raise GraphDSLError("a graphdsl torch module cannot be pickled whole",
                            fix="save module.state_dict() (or gd.from_torch(module) + "
                                "gd.save) and rebuild with gd.to_torch")


class Module(torch.nn.Module):  # named as the plain containers it replaces
    """A node of the module tree along the dots of the layer names. A layer segment
    may reuse a Module attribute's name ("a.training", "b.__class__"): setting that
    attribute (``train()`` sets ``training``, FSDP sets ``__class__``) goes to the
    object itself, the layer stays in ``_modules``."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._modules and not isinstance(value, torch.nn.Module):
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def get_submodule(self, target: str) -> torch.nn.Module:
        """Like nn.Module.get_submodule, along ``_modules`` (not attributes)."""
        mod = self
        for seg in target.split(".") if target else ():
            if seg not in mod._modules:
                raise AttributeError(f"{type(mod).__name__} has no submodule {seg!r} "
                                     f"(in {target!r})")
            mod = mod._modules[seg]
        return mod


class GraphModule(Module):
    """A graphdsl model lowered to torch. ``forward`` is generated straight-line code
    (see ``.code``); inputs positionally in ``gd.get_inputs`` order or by name;
    returns a tensor, or a tuple/dict for a container output."""

    code: str = ""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if compiling():  # traced as straight-line code
            return self._graph_forward(*args, **kwargs)
        try:
            return self._graph_forward(*args, **kwargs)
        except GraphDSLError:
            raise
        except Exception as e:  # a kernel failed: name the layer it failed in
            raise _locate(self, e) from e

    def extra_repr(self) -> str:
        m = self._graphdsl
        return f"inputs={m.input_names}, layers={len(m.plan.steps)}"


def _check_state(plan: Any, state: ModelState) -> None:
    g = plan.graph
    need_state(state, "to_torch needs", "create one with init_fn(template) from gd.build(model)")
    check_known_keys(g, state.data, "the state")
    for node in g.order:
        for spec in node.params:
            state_value(g, node, spec, state.data)


def to_torch(model: Node, state: ModelState, device: Any = None, dtype: Any = None,
             adapter_dtype: Any = None) -> torch.nn.Module:
    """An ``nn.Module`` computing ``model`` with a copy of ``state``'s values.

    Parameters are registered in the model's parameter order as ``<layer>.<param>`` (frozen
    ones with ``requires_grad=False``); state entries (dropout keys) are int64 buffers,
    batch-norm statistics buffers that ``train()`` updates. ``train()``/``eval()`` switch
    dropout (torch's RNG). It works under ``torch.compile``, ``copy.deepcopy``, DDP, FSDP2
    and on CUDA. Adapter values (A, B, magnitude) over a half-precision base are float32
    (PEFT's ``autocast_adapter_dtype``) unless ``adapter_dtype`` says otherwise; the
    adapters then compute in their dtype and return the base's, as PEFT does. Training the
    module never changes ``state``; read the values back with ``from_torch``. The
    module's ``forward`` takes the inputs positionally in ``graphdsl.get_inputs`` order
    (or by keyword) as tensors.

    Args:
        model: the output node.
        state: the values (copied).
        device: ``"cpu"``, ``"cuda"``, ... (default cpu).
        dtype: None keeps each value's dtype (a bfloat16 state gives a module computing in
            bfloat16); ``"bfloat16"``, ``"float16"``, ``"float32"`` or ``"float64"`` casts
            the floating values.
        adapter_dtype: the adapters' dtype over a half-precision base (default float32).

    Returns:
        (torch.nn.Module): the module.

    Raises:
        BackendError: torch is not installed (names the ``torch`` extra).
        StateError: ``state`` does not fit ``model``.
        GraphDSLError: a half-precision ``dtype`` over a mixed-precision policy.

    Examples:
        >>> import torch
        >>> model = gd.dense(gd.input("x", shape=(None, 4)), 2, name="fc")
        >>> module = gd.to_torch(model, gd.build(model)[0](np.zeros((1, 4), np.float32)))
        >>> list(module.state_dict()), module(torch.ones(3, 4)).shape
        (['fc.kernel', 'fc.bias'], torch.Size([3, 2]))
    """
    dev = resolve_device(device)
    dname, aname = _dtype_name(dtype, "dtype"), _dtype_name(adapter_dtype, "adapter_dtype")
    plan = make_plan(model, "train", "float64" if dname == "float64" else "float32")
    _check_state(plan, state)
    g = plan.graph
    root = Module()  # submodules along the dots of the layer names
    holder = partial(_holder, root, create=True)
    adapters, policied = _adapter_keys(g), policied_keys(g)
    if policied and dname in HALF:
        raise GraphDSLError(f"to_torch(dtype={dname!r}) of a model with a mixed-precision "
                            "policy: the policy sets each layer's dtypes", op="to_torch",
                            fix="pass dtype=None (the state's and the policy's dtypes), or "
                                "apply_policy a policy with params=" + repr(dname))

    entries = []  # (owner, name, kind, uint64)
    base_dtypes = []  # the module computes in these (promoted), adapters in their own
    for (owner, name), spec in g.params.items():
        value = state.data[owner][name].view(np.ndarray)
        u64 = spec.kind == "state" and value.dtype == np.uint64
        vdt = _value_dtype(value.dtype, (owner, name) in adapters, dname, aname)
        t = _module_tensor(value.view(np.int64) if u64 else value, dev, vdt)
        if vdt is not None and spec.kind != "state" and (owner, name) not in adapters \
                and (owner, name) not in policied:
            base_dtypes.append(vdt)
        if spec.kind == "state":
            _register(holder(owner), owner, name, t, "buffer")
        else:
            trainable = (owner, name) not in state.frozen and t.is_floating_point()
            _register(holder(owner), owner, name,
                      torch.nn.Parameter(t, requires_grad=trainable), "param")
        entries.append((owner, name, spec.kind, u64))
    tdtype = (getattr(torch, dname) if dname else
              reduce(torch.promote_types, base_dtypes) if base_dtypes else torch.float32)
    for step in plan.steps:  # constants travel with .to(device) but stay out of state_dict
        if step.op == "constant":
            _register(holder(step.name), step.name, "value",
                      _module_tensor(step.attrs["value"], dev, tdtype), "constant")

    # the holders that group layers (have child holders) may run as block calls
    blocks = tblocks.choose_blocks(
        plan, [name for name, m in root.named_modules() if name and m._modules])
    meta = ModuleInfo(model, plan, entries, tdtype, tuple(blocks), adapters)
    code, glb, block_fns = _generate(plan, tdtype, blocks)
    cls = type(f"GraphModule_{_ident(g.name(g.output))}", (GraphModule,),
               {"_graph_forward": glb["forward"], "code": code,
                "__module__": __name__})
    mod = cls()
    mod._graphdsl = meta
    mod._modules.update(root._modules)  # direct insertion: any segment is a valid key
    for path, fn in block_fns.items():  # a holder becomes callable: hooks (FSDP) fire
        _holder(mod, path).__class__ = type("GraphBlock", (Module,),
                                            {"forward": fn, "__module__": __name__})
    if block_fns:
        tblocks.quiet_view_warning()
    return mod


def _module_tensor(value: Any, dev: Any, tdtype: Any) -> torch.Tensor:
    """A copy of ``value`` (an array of any shape; bfloat16 from ml_dtypes too) on
    ``dev``, floats (running statistics too) in ``tdtype`` (None: their own dtype). A
    value mapped from a weights file (gd.load, hf.from_pretrained) that needs no cast is
    "copied" as a copy-on-write map of the same file bytes: its pages are shared with the
    state's until the module writes them, so a loaded model is not held twice."""
    arr = np.asarray(value)
    t = numpy_view(arr)
    if not t.is_floating_point():
        tdtype = None
    if dev.type == "cpu" and tdtype in (None, t.dtype):
        cow = private_view(arr)
        if cow is not None:
            return numpy_view(cow)
    return t.to(device=dev, dtype=tdtype, copy=True)


def _holder(root: Any, layer: str, create: bool = False) -> Any:
    """The submodule of ``root`` at the dotted path ``layer`` (created on the way when
    ``create``), which holds that layer's parameters and buffers."""
    node = root
    for seg in layer.split("."):
        child = node._modules.get(seg)
        if child is None:
            if not create:
                raise KeyError(layer)
            if seg in node._parameters or seg in node._buffers:
                raise _clash(layer, seg)
            child = node._modules[seg] = type(root)()
        node = child
    return node


def _register(h: Any, layer: str, name: str, value: Any, kind: str) -> None:
    """Register ``value`` on holder ``h`` as a parameter ("param"), a state buffer
    ("buffer", in state_dict) or a constant ("constant", not in state_dict)."""
    if name in h._modules:
        raise _clash(f"{layer}.{name}", name)
    if kind == "param":
        h.register_parameter(name, value)
    else:
        h.register_buffer(name, value, persistent=kind == "buffer")


def _clash(path: str, seg: str) -> GraphDSLError:
    return GraphDSLError(f"to_torch: {path!r} is both a parameter and a layer path "
                         f"({seg!r}): the module tree along the dots cannot hold both",
                         layer=path, fix="rename one of the layers so that no layer name "
                                         "continues another layer's parameter name")


def _ident(s: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in s)


def _generate(plan: Any, tdtype: Any, blocks: dict[str, tuple[int, int]]
              ) -> tuple[str, dict, dict[str, Any]]:
    """Source of ``forward`` (straight-line kernel calls, each block's steps as a call of
    that block: see ``.blocks``), its globals and ``{block path: forward
    function}``."""

    glb: dict[str, Any] = {"_bind": _bind, "_compiling": compiling,
                           "_write_state": _write_state, "torch": torch}
    for i, step in enumerate(plan.steps):
        if step.op not in KERNELS:
            raise plan.step_error(step, f"the torch backend has no kernel for op {step.op!r}",
                                  "register one with graphdsl.backends.torch_backend."
                                  "register_kernel", cls=BackendError)
        glb[f"_k{i}"] = KERNELS[step.op]
        glb[f"_a{i}"] = dict(step.attrs)
        cache: dict = {}  # one cache per layer (e.g. colsum(K*K)), in both modes
        glb[f"_c{i}"] = tuple(TorchContext(tr, step_dtype(step, tdtype), step.name, step.op,
                                           torch, cache,
                                           where=step.node.where, torch_rng=True)
                              for tr in (False, True))

    # with a policy, each layer reads its values as on the other backends: in its compute
    # dtype, else the plan's (not in the dtypes they are stored in)
    policied = any(step.node.policy is not None for step in plan.steps)

    def step_line(i: int, local: dict[str, str]) -> str:
        step = plan.steps[i]
        items = []
        for ref in step.params:
            coll = "_buffers" if ref.kind == "state" else "_parameters"
            cast = policied and ref.dtype in FLOATS  # the plan's read dtype (a policy's)
            items.append(f"{ref.local!r}: {local[ref.owner]}.{coll}[{ref.name!r}]"
                         + (f".to(torch.{ref.dtype})" if cast else ""))
        if step.op == "constant":
            items.append(f"'value': {local[step.name]}._buffers['value']")
        ins = ", ".join(f"v{s}" for s in step.ins)
        call = f"_k{i}([{ins}], {{{', '.join(items)}}}, _a{i}, _c{i}[_tr])"
        bufs = [f"{r.local!r}: {local[r.owner]}._buffers[{r.name!r}]"
                for r in step.params if r.kind == "state"]
        if bufs:  # the kernel may return Stateful: its new values go to these buffers
            call = f"_write_state({call}, {{{', '.join(bufs)}}})"
        return f"    v{step.out} = {call}  # {step.name} ({step.op})"

    root = tblocks.layout(plan, blocks)
    in_vars = [f"v{slot}" for _, slot, _ in plan.inputs]
    targets = f"{', '.join(in_vars)}{',' if len(in_vars) == 1 else ''} = " if in_vars else ""
    lines = ["def forward(self, *args, **kwargs):",
             "    _tr = self.training",
             f"    {targets}_bind(self, args, kwargs)",
             *tblocks.body_lines(plan, root, step_line)]
    if any(plan.copy_out):  # never hand out the module's own memory (a constant, ...)
        glb["_copy_outputs"], glb["_flags"] = copy_outputs, plan.copy_out
        lines.append(f"    return _copy_outputs(v{plan.output}, _flags, torch.clone)")
        glb["torch"] = torch
    else:
        lines.append(f"    return v{plan.output}")
    funcs = tblocks.block_funcs(root)
    for j, f in enumerate(funcs):
        outs = ", ".join(f"v{x}" for x in f.outs) if f.outs else "None"
        lines += ["", "", f"def block{j}(self{''.join(f', v{x}' for x in f.ins)}):"
                          f"  # {f.path}",
                  "    _tr = self.training",
                  *tblocks.body_lines(plan, f, step_line),
                  f"    return {outs}"]
    code = "\n".join(lines) + "\n"
    fname = f"<graphdsl forward {hashlib.sha1(code.encode()).hexdigest()[:12]}>"
    linecache.cache[fname] = (len(code), None, code.splitlines(True), fname)
    exec(compile(code, fname, "exec"), glb)
    return code, glb, {f.path: glb[f"block{j}"] for j, f in enumerate(funcs)}


def _write_state(y: Any, buffers: dict[str, Any]) -> Any:
    """The output of a kernel's result ``y``; the new state values of a
    ``Stateful`` ``y`` are copied into the module's
    ``buffers`` (``{local entry name: buffer}``), the one place a module's state changes."""
    if type(y) is not Stateful:
        return y
    with torch.no_grad():
        for local, value in y.updates.items():
            buf = buffers[local]
            buf.copy_(torch.as_tensor(value).to(buf.device, buf.dtype))
    return y.output


def _locate(module: Any, exc: Exception) -> GraphDSLError:
    """The GraphDSLError for an exception raised by the generated forward: the failing
    line of ``module.code`` names its step."""
    plan = module._graphdsl.plan
    lineno, tb = None, exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.startswith("<graphdsl forward"):
            lineno = tb.tb_lineno
        tb = tb.tb_next
    line = module.code.splitlines()[lineno - 1] if lineno else ""
    for step in plan.steps:
        if line.endswith(f"# {step.name} ({step.op})"):
            for ref in step.params:
                if _sharded(_holder(module, ref.owner)._parameters.get(ref.name)):
                    return _unsharded_use(module, step, ref.owner)
            return plan.kernel_failure(step, exc, [])
    return GraphDSLError(f"the module's forward failed: {type(exc).__name__}: {exc}",
                         fix="check the inputs' shapes and dtypes")


def _sharded(t: Any) -> bool:
    """Is ``t`` a DTensor (a parameter sharded by FSDP's ``fully_shard``)?"""
    if t is None or not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor
    return isinstance(t, DTensor)


def _unsharded_use(module: Any, step: Any, owner: str) -> GraphDSLError:
    blocks = module._graphdsl.blocks
    shown = ", ".join(blocks[:6]) + (", ..." if len(blocks) > 6 else "")
    return module._graphdsl.plan.step_error(
        step, f"layer {step.name!r} ran with the parameters of {owner!r} still sharded: "
              "fully_shard was applied to a submodule that the forward does not call, so "
              "its parameters are never gathered",
        f"apply fully_shard to the module's blocks (the submodules it calls: "
        f"{shown or 'none in this model'}) and to the module itself")


def _bind(self: Any, args: tuple, kwargs: dict) -> tuple:
    """Inputs in get_inputs order from positional args, keywords or one dict; checked
    (names, dtypes, devices, shapes) once per signature outside torch.compile."""
    meta: ModuleInfo = self._graphdsl
    names = meta.input_names
    if len(args) == 1 and not kwargs and isinstance(args[0], Mapping):
        kwargs, args = dict(args[0]), ()
    if kwargs or len(args) != len(names):
        if len(args) > len(names):
            raise _too_many(meta, args)
        kwargs = {**dict(zip(names, args)), **kwargs}  # fewer: optional ones left out
        check_input_names(meta.plan.graph, kwargs)
        args = tuple(kwargs.get(k) for k in names)
    if not compiling():
        args = _check_inputs(self, meta, args)
    return args


def _too_many(meta: ModuleInfo, args: tuple) -> InputError:
    return InputError(f"this model takes {len(meta.input_names)} input(s) "
                      f"{meta.input_names}, got {len(args)} positional argument(s)",
                      shapes=dict(meta.plan.graph.inputs),
                      fix="pass the inputs in gd.get_inputs(model) order, or by name")


def _module_device_dtype(self: Any, meta: ModuleInfo) -> tuple[Any, Any]:
    """The device and the float dtype of the module's base parameters (the inputs')."""
    first = None
    for owner, name, t in module_parameters(self):
        if t.is_floating_point() and (owner, name) not in meta.policied:
            if (owner, name) not in meta.adapters:
                return t.device, t.dtype
            first = first if first is not None else t
    if first is not None:  # adapters alone
        return first.device, first.dtype
    for b in self.buffers():  # constants only
        return b.device, meta.dtype
    return None, meta.dtype


def _check_inputs(self: Any, meta: ModuleInfo, args: tuple) -> tuple:
    dev, fdt = _module_device_dtype(self, meta)
    out = []
    for name, node, a in zip(meta.input_names, meta.input_nodes, args):
        if a is None and name in meta.plan.graph.optional:
            out.append(None)
            continue
        if not isinstance(a, torch.Tensor):
            if isinstance(a, np.ndarray) and (a.dtype.kind in "biuf" or is_float(a.dtype)):
                a = numpy_view(np.ascontiguousarray(a)).to(device=dev)
                if a.is_floating_point():
                    a = a.to(fdt)
            else:
                raise InputError(f"input {name!r} is a {type(a).__name__}, not a tensor",
                                 layer=name, op="input", where=node.where,
                                 shapes={"expected": node.shape},
                                 fix=f"pass a tensor of shape {fmt_shape(node.shape)}")
        want_int = node.dtype.startswith("int")
        if want_int:
            a = integer_input(a, name, node)
        elif a.dtype != fdt:
            raise InputError(f"input {name!r} has dtype {a.dtype}, the module computes in "
                             f"{fdt}", layer=name, op="input", where=node.where,
                             fix=f"convert it: x.to({fdt})")
        if dev is not None and a.device != dev:
            raise InputError(f"input {name!r} is on {a.device}, the module's parameters are "
                             f"on {dev}", layer=name, op="input", where=node.where,
                             fix=f"move it: x.to({str(dev)!r})")
        out.append(a)
    meta.check.check_shapes(tuple(None if a is None else tuple(a.shape) for a in out))
    return tuple(out)


def unwrap(module: Any) -> Any:
    """The module made by ``to_torch`` inside ``module`` (itself, or under DDP /
    ``torch.compile`` wrappers); a GraphDSLError for any other module."""
    seen = 0
    while "_graphdsl" not in getattr(module, "__dict__", {}) and seen < 8:
        inner = getattr(module, "module", None) or getattr(module, "_orig_mod", None)
        if inner is None:
            break
        module, seen = inner, seen + 1
    if "_graphdsl" not in getattr(module, "__dict__", {}):
        raise GraphDSLError(f"{type(module).__name__} is not a module made by gd.to_torch",
                            fix="pass the module returned by gd.to_torch (DDP and "
                                "torch.compile wrappers are fine)")
    return module


def from_torch(module: Any, state_dict: Mapping[str, Any] | None = None) -> ModelState:
    """The module's current values as a NumPy ``ModelState`` (copies).

    Frozen flags: parameters with ``requires_grad=False``. Values keep their dtype (a
    bfloat16 module gives ``ml_dtypes.bfloat16`` values, the ``half`` extra). Accepts the
    module from ``to_torch``, or a DDP / ``torch.compile`` / FSDP wrapper around it.

    Args:
        module: a module made by ``to_torch``, possibly wrapped.
        state_dict: values to read instead of the module's own tensors (keys as in
            ``module.state_dict()``): for a module sharded with ``fully_shard``, gather one
            on every rank with ``get_model_state_dict(module,
            options=StateDictOptions(full_state_dict=True))``.

    Returns:
        (ModelState): the values (``kernel [in, out]`` layout, as graphdsl keeps it).

    Raises:
        GraphDSLError: ``module`` was not made by ``to_torch``, or ``state_dict``
            misses or mis-shapes a value.

    Examples:
        >>> import torch
        >>> model = gd.dense(gd.input("x", shape=(None, 4)), 2, name="fc")
        >>> state = gd.build(model)[0](np.zeros((1, 4), np.float32))
        >>> module = gd.to_torch(model, state)
        >>> with torch.no_grad():
        ...     _ = module.get_parameter("fc.bias").fill_(1.0)
        >>> gd.from_torch(module).data["fc"]["bias"].tolist(), state.data["fc"]["bias"].tolist()
        ([1.0, 1.0], [0.0, 0.0])
    """
    mod = unwrap(module)
    meta: ModuleInfo = mod._graphdsl
    data: dict[str, dict[str, np.ndarray]] = {}
    frozen = set()
    state_names: dict[str, list[str]] = {}
    tensors = [(_holder(mod, owner)._buffers if kind == "state" else
                _holder(mod, owner)._parameters)[name] for owner, name, kind, _ in meta.entries]
    for (owner, name, _, _), t in zip(meta.entries, tensors):
        v = t if state_dict is None else _from_dict(state_dict, owner, name, t)
        if _sharded(v):  # checked before any value is read
            raise StateError(f"{owner}.{name} is sharded (a DTensor, from FSDP's "
                             "fully_shard): this rank holds only part of it",
                             layer=owner, fix="gather a full state dict on every rank, "
                             "sd = get_model_state_dict(module, options=StateDictOptions("
                             "full_state_dict=True, cpu_offload=True)) (torch.distributed."
                             "checkpoint.state_dict), then gd.from_torch(module, sd)")
    if state_dict is not None and len(state_dict) != len(meta.entries):
        extra = sorted(set(state_dict) - {f"{o}.{n}" for o, n, _, _ in meta.entries})
        raise StateError(f"the state_dict has keys the module does not: {extra[:8]}",
                         fix="pass the state dict of this module (module.state_dict() keys)")
    for (owner, name, kind, u64), t in zip(meta.entries, tensors):
        v = t if state_dict is None else state_dict[f"{owner}.{name}"]
        arr = tensor_numpy(v)
        if kind == "state":
            if u64:
                arr = arr.view(np.uint64)
            state_names.setdefault(owner, []).append(name)
        elif not t.requires_grad:
            frozen.add((owner, name))
        data.setdefault(owner, {})[name] = arr
    return ModelState(data, frozen, state_names)  # copies the arrays (immutable values)


def _from_dict(sd: Mapping[str, Any], owner: str, name: str, t: Any) -> Any:
    key = f"{owner}.{name}"
    v = sd.get(key)
    if not isinstance(v, torch.Tensor) or tuple(v.shape) != tuple(t.shape):
        got = "missing" if v is None else (f"shape {tuple(v.shape)}" if isinstance(
            v, torch.Tensor) else f"a {type(v).__name__}")
        raise StateError(f"state_dict[{key!r}] is {got}; the module's {key} is a tensor of "
                         f"shape {tuple(t.shape)}", layer=owner,
                         fix="pass the full state dict of this module (module.state_dict() "
                             "keys and shapes)")
    return v


def module_parameters(module: Any) -> Iterable[tuple[str, str, Any]]:
    """``(layer, param, Parameter)`` in registration order (state entries excluded)."""
    mod = unwrap(module)
    for owner, name, kind, _ in mod._graphdsl.entries:
        if kind == "param":
            yield owner, name, _holder(mod, owner)._parameters[name]


__all__ = ["from_torch", "module_parameters", "to_torch", "unwrap"]
