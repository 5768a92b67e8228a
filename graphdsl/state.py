"""ModelState: the parameters and state entries of a model, as immutable NumPy arrays.

Values are immutable, as in Axon: storing an array in a ``ModelState`` (constructor,
``state.data[layer][param] = value``, ``state.data[layer] = {...}``, ``update``) copies
it into read-only memory that nobody else can write, so a backend may cache anything it
derives from a value on the value's identity (a merged adapter kernel, a converted
tensor) and never serve stale weights. To change a weight, store a new array; an
in-place write (``arr[...] = v``, ``arr += 1``) raises a ``StateError`` that says so.
"""
from __future__ import annotations

import mmap
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from .arrays import as_numpy
from .dtypes import is_float, np_dtype
from .errors import ImmutableStateError, StateError

Predicate = Callable[[str, str], bool]

_IMMUTABLE_FIX = ("state values are immutable; store a new array instead, e.g. "
                  "state.data[layer][param] = state.data[layer][param] + 1 "
                  "(or work on a copy: arr.copy())")


class StateArray(np.ndarray):
    """A read-only ``np.ndarray`` whose memory belongs to a ``ModelState``.

    It behaves as any array in expressions (results are plain, writable arrays); views of
    it (``a[0]``, ``a.reshape(-1)``, ``a.T``) are read-only too, and any in-place write
    raises a ``StateError`` explaining how to replace the value. Shape: any.
    """

    def __array_wrap__(self, obj: np.ndarray, context: Any = None,
                       return_scalar: bool = False) -> Any:
        if return_scalar:
            return obj[()]
        return obj if type(obj) is np.ndarray else obj.view(np.ndarray)

    def _refuse(self) -> None:
        raise ImmutableStateError("cannot write into a ModelState value in place",
                         fix=_IMMUTABLE_FIX)


def _inplace(name: str) -> Callable:
    """``np.ndarray.<name>`` (a writing method), refused on a read-only StateArray."""
    base = getattr(np.ndarray, name)

    def op(self: StateArray, *args: Any) -> Any:
        if not self.flags.writeable:
            self._refuse()
        return base(self, *args)

    op.__name__ = name
    return op


for _name in ("__setitem__", "fill", "__iadd__", "__isub__", "__imul__", "__imatmul__",
              "__itruediv__", "__ifloordiv__", "__imod__", "__ipow__", "__ilshift__",
              "__irshift__", "__iand__", "__ixor__", "__ior__"):
    setattr(StateArray, _name, _inplace(_name))


def _immutable_memory(a: np.ndarray) -> bool:
    """Whether ``a``'s memory can be written through no reference at all: read-only,
    and every array in its base chain read-only down to an immutable ``bytes`` or a
    read-only map of a file (``mmap.ACCESS_READ``, as graphdsl's loaders map weights; a
    save replaces a file by renaming a new one over it, so the mapped bytes stay)."""
    while isinstance(a, np.ndarray):
        if a.flags.writeable or a.flags.owndata:
            return False
        a = a.base
    if isinstance(a, memoryview) and a.readonly:
        a = a.obj
    return isinstance(a, bytes) or (isinstance(a, mmap.mmap) and memoryview(a).readonly)


def _numeric(value: Any, where: str) -> np.ndarray:
    try:
        arr = as_numpy(value)
    except (TypeError, ValueError) as e:
        raise StateError(f"state value {where} is not an array ({type(value).__name__}: {e})",
                         fix="pass a NumPy array (or a tensor, list or number)") from None
    if arr.dtype.kind not in "biuf" and not is_float(arr.dtype):  # bfloat16's kind is 'V'
        raise StateError(f"state value {where} has dtype {arr.dtype}; values must be real "
                         "numbers (bool, int or float: float16, bfloat16, float32, float64)",
                         fix="pass a real numeric array (e.g. arr.real.astype(np.float32))")
    return arr


def seal(value: Any, where: str = "value") -> StateArray:
    """``value`` (array, number, tensor) as a ``StateArray``: no copy when it is one
    already or its memory is immutable (e.g. read from a file), one copy otherwise.
    Non-numeric values (object, complex, strings) raise a StateError. Shape: unchanged."""
    if type(value) is StateArray and not value.flags.writeable:
        return value
    arr = _numeric(value, where)
    if not _immutable_memory(arr):  # one copy, in the array's own layout (a kernel read
        # transposed from a Hugging Face weight stays Fortran-ordered: no transposing copy)
        fortran = arr.flags.f_contiguous and not arr.flags.c_contiguous
        buf = arr.tobytes(order="F" if fortran else "C")
        flat = np.frombuffer(buf, dtype=arr.dtype)
        arr = flat.reshape(arr.shape[::-1]).T if fortran else flat.reshape(arr.shape)
    return arr.view(StateArray)


class _StoringDict(dict):
    """A dict whose every way of storing (``d[k] = v``, ``update``, ``setdefault``,
    ``|=``) goes through ``__setitem__``, which subclasses use to convert the value."""

    def __init__(self, values: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if values:
            self.update(values)

    def update(self, other: Any = (), **kw: Any) -> None:  # type: ignore[override]
        items = other.items() if isinstance(other, Mapping) else other
        for k, v in items:
            self[k] = v
        for k, v in kw.items():
            self[k] = v

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = self._default() if default is None else default
        return self[key]

    def _default(self) -> Any:
        return None

    def __ior__(self, other: Any) -> _StoringDict:
        self.update(other)
        return self


class LayerValues(_StoringDict):
    """``{param: StateArray}`` of one layer; every stored value is sealed."""

    def __init__(self, layer: str = "", values: Mapping[str, Any] | None = None) -> None:
        self.layer = layer  # before the values: sealing names them "layer.param"
        super().__init__(values)

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, seal(value, f"{self.layer}.{key}"))

    def copy(self) -> LayerValues:
        out = LayerValues(self.layer)
        dict.update(out, self)  # already sealed
        return out

    def __reduce__(self) -> Any:
        return (LayerValues, (self.layer, dict(self)))


class StateData(_StoringDict):
    """``{layer: LayerValues}``: assigning a mapping to a layer seals its values."""

    def __setitem__(self, layer: str, values: Mapping[str, Any]) -> None:
        if not isinstance(values, LayerValues) or values.layer != layer:
            if not isinstance(values, Mapping):
                raise StateError(f"state.data[{layer!r}] must be a mapping "
                                 f"{{param: array}}, got {type(values).__name__}",
                                 fix="assign a dict, e.g. {'kernel': k, 'bias': b}")
            values = LayerValues(layer, values)
        super().__setitem__(layer, values)

    def _default(self) -> Any:
        return {}

    def copy(self) -> StateData:
        out = StateData()
        for layer, values in self.items():
            dict.__setitem__(out, layer, values.copy())
        return out

    def __reduce__(self) -> Any:
        return (StateData, ({k: dict(v) for k, v in self.items()},))


def _predicate(pred: Predicate | Iterable[str] | str | None) -> Predicate:
    if pred is None:
        return lambda layer, param: True
    if callable(pred):
        return pred
    names = {pred} if isinstance(pred, str) else set(pred)
    return lambda layer, param: layer in names


class ModelState:
    """Parameters (``data``), frozen flags and state-entry names of a model (Axon's ``ModelState``).

    ``data`` is ``{layer: {param: array}}``, a plain mutable mapping of immutable NumPy
    arrays (store a new array to change a value; the next call uses it, no cache serves
    stale weights). ``frozen`` is a set of ``(layer, param)``; ``entries`` is ``{layer:
    [names]}`` of the non-parameter state entries (a dropout RNG key, batch-norm
    statistics). Usually made by ``init_fn``; ``freeze``/``unfreeze``/``astype`` return new
    states sharing the arrays.

    Args:
        data: ``{layer: {param: array-like}}`` (copied into read-only arrays).
        frozen: the frozen ``(layer, param)`` pairs.
        entries: ``{layer: [names]}`` of state entries.

    Raises:
        StateError: ``data`` is not a mapping of mappings.
        ImmutableStateError: an in-place write into a value.

    Examples:
        >>> x = gd.input("x", shape=(None, 4))
        >>> model = gd.dense(gd.dense(x, 8, name="base"), 2, name="head")
        >>> state = gd.build(model)[0](np.zeros((1, 4), np.float32))
        >>> state.data["base"]["kernel"].shape          # Axon layout: kernel [in, out]
        (4, 8)
        >>> state.freeze("base").trainable_parameter_count()
        18
        >>> state
        ModelState(layers=2, parameters=58, trainable=58, frozen=0)
    """

    def __init__(self, data: Mapping[str, Mapping[str, Any]] | None = None,
                 frozen: Iterable[tuple[str, str]] = (),
                 entries: Mapping[str, Iterable[str]] | None = None) -> None:
        if data is not None and not isinstance(data, Mapping):
            raise StateError(f"ModelState data must be a mapping {{layer: {{param: array}}}}, "
                             f"got {type(data).__name__}",
                             fix="e.g. gd.ModelState({'fc1': {'kernel': k, 'bias': b}})")
        self.data = data  # type: ignore[assignment]
        self.frozen: set[tuple[str, str]] = {tuple(x) for x in frozen}  # type: ignore[misc]
        self.entries: dict[str, list[str]] = {k: list(v) for k, v in (entries or {}).items()}

    @property
    def data(self) -> StateData:
        """``{layer: {param: array}}``: the values; an assigned value is sealed read-only.

        Returns:
            (StateData): the mutable mapping of layers.
        """
        return self._data

    @data.setter
    def data(self, values: Mapping[str, Mapping[str, Any]] | None) -> None:
        self._data = values if isinstance(values, StateData) else StateData(values)

    @property
    def state(self) -> dict[str, list[str]]:
        """Deprecated alias of ``entries``."""
        return self.entries

    @classmethod
    def empty(cls) -> ModelState:
        """A state with nothing in it (``init_fn`` then creates every value).

        Returns:
            (ModelState): empty.
        """
        return cls()

    def copy(self) -> ModelState:
        """A new state with new dicts and the same (immutable) arrays.

        Returns:
            (ModelState): the copy.
        """
        return ModelState(self._data.copy(), self.frozen, self.entries)

    def deepcopy(self) -> ModelState:
        """A new state with new dicts and new arrays (equal values).

        Returns:
            (ModelState): the copy.
        """
        return ModelState({k: {p: np.array(a, copy=True) for p, a in v.items()}
                           for k, v in self._data.items()}, self.frozen, self.entries)

    def astype(self, dtype: Any) -> ModelState:
        """A new state whose floating parameters are cast to ``dtype``.

        Integer values and state entries (a dropout key, batch-norm statistics) stay as they
        are, as do the frozen flags. A value already of ``dtype`` is shared, not copied.

        Args:
            dtype: ``"bfloat16"``, ``"float16"``, ``"float32"``, ``"float64"``, a NumPy or torch
                dtype (bfloat16 needs the ``half`` extra, ml_dtypes).

        Returns:
            (ModelState): the cast state, shapes unchanged.

        Raises:
            StateError: ``dtype`` is not a floating dtype.
            GraphDSLError: an unknown dtype, or bfloat16 without ml_dtypes.
        """
        dt = np_dtype(dtype)
        if not is_float(dt):
            raise StateError(f"ModelState.astype({dtype!r}): not a floating dtype",
                             fix="use one of float16, bfloat16, float32, float64")
        out = self.copy()
        for layer, params in out.data.items():
            for p, a in params.items():
                if a.dtype != dt and is_float(a.dtype) and not self.is_state(layer, p):
                    params[p] = a.astype(dt)
        return out

    def __deepcopy__(self, memo: dict) -> ModelState:
        return self.deepcopy()

    # -- classification ---------------------------------------------------------------------
    def is_state(self, layer: str, param: str) -> bool:
        """Whether ``layer.param`` is a state entry (not a parameter).

        Args:
            layer: layer name.
            param: value name under it.

        Returns:
            (bool): True for an entry such as a dropout ``key`` or batch-norm ``mean``.
        """
        return param in self.entries.get(layer, ())

    def is_frozen(self, layer: str, param: str) -> bool:
        """Whether ``layer.param`` is frozen.

        Args:
            layer: layer name.
            param: parameter name.

        Returns:
            (bool): True when frozen.
        """
        return (layer, param) in self.frozen

    def _params(self):
        for layer, params in self._data.items():
            for p, arr in params.items():
                if not self.is_state(layer, p):
                    yield layer, p, arr

    # -- freezing (returns a new ModelState sharing the arrays, like Axon) ------------------
    def freeze(self, predicate: Predicate | Iterable[str] | str | None = None) -> ModelState:
        """A new state with the parameters where ``predicate(layer, param)`` holds frozen.

        Args:
            predicate: ``predicate(layer, param) -> bool``, a layer name, a list of names, or
                None for every parameter.

        Returns:
            (ModelState): sharing the arrays.
        """
        pred = _predicate(predicate)
        out = self.copy()
        out.frozen |= {(layer, p) for layer, p, _ in self._params() if pred(layer, p)}
        return out

    def unfreeze(self, predicate: Predicate | Iterable[str] | str | None = None
                 ) -> ModelState:
        """A new state with the parameters where ``predicate(layer, param)`` holds unfrozen.

        Args:
            predicate: as ``freeze`` takes it; None for every parameter.

        Returns:
            (ModelState): sharing the arrays.
        """
        pred = _predicate(predicate)
        out = self.copy()
        out.frozen = {(layer, p) for layer, p in self.frozen if not pred(layer, p)}
        return out

    # -- views and counts --------------------------------------------------------------------
    def _parameters(self, frozen: bool) -> dict[str, dict[str, np.ndarray]]:
        out: dict[str, dict[str, np.ndarray]] = {}
        for layer, p, arr in self._params():
            if self.is_frozen(layer, p) == frozen:
                out.setdefault(layer, {})[p] = arr
        return out

    def trainable_parameters(self) -> dict[str, dict[str, np.ndarray]]:
        """The parameters that are not frozen.

        Returns:
            (dict[str, dict[str, np.ndarray]]): ``{layer: {param: array}}``, each of the shape its
            layer declares (e.g. ``kernel [in, out]``).
        """
        return self._parameters(frozen=False)

    def frozen_parameters(self) -> dict[str, dict[str, np.ndarray]]:
        """The frozen parameters.

        Returns:
            (dict[str, dict[str, np.ndarray]]): ``{layer: {param: array}}``.
        """
        return self._parameters(frozen=True)

    def parameter_count(self) -> int:
        """The number of scalars in all parameters (state entries excluded).

        Returns:
            (int): the count.
        """
        return sum(int(a.size) for _, _, a in self._params())

    def trainable_parameter_count(self) -> int:
        """The number of scalars in the trainable parameters.

        Returns:
            (int): the count.
        """
        return sum(int(a.size) for v in self.trainable_parameters().values()
                   for a in v.values())

    def frozen_parameter_count(self) -> int:
        """The number of scalars in the frozen parameters.

        Returns:
            (int): the count.
        """
        return sum(int(a.size) for v in self.frozen_parameters().values()
                   for a in v.values())

    def __repr__(self) -> str:
        return (f"ModelState(layers={len(self._data)}, parameters={self.parameter_count()}, "
                f"trainable={self.trainable_parameter_count()}, "
                f"frozen={self.frozen_parameter_count()})")

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, ModelState):
            return NotImplemented
        if self.frozen != other.frozen or self._data.keys() != other._data.keys():
            return False
        norm = {k: sorted(v) for k, v in self.entries.items() if v}
        if norm != {k: sorted(v) for k, v in other.entries.items() if v}:
            return False
        for layer, params in self._data.items():
            o = other._data[layer]
            if params.keys() != o.keys():
                return False
            for p, a in params.items():
                b = o[p]
                if a.dtype != b.dtype or not np.array_equal(a, b):
                    return False
        return True

    __hash__ = None  # type: ignore[assignment]


def need_state(value: Any, what: str, fix: str, where: str | None = None) -> None:
    """Refuse a ``value`` that is not a ``ModelState``: the StateError
    ``"{what} a ModelState, got {type}"`` (``what`` such as ``"predict needs"``)."""
    if not isinstance(value, ModelState):
        raise StateError(f"{what} a ModelState, got {type(value).__name__}", where=where,
                         fix=fix)
