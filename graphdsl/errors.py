"""The one exception family users see.

Every error caused by user input is a ``GraphDSLError`` whose message names
the layer, its op, the shapes involved, where the layer was defined and the fix.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def fmt_shape(shape: Any) -> str:
    """``(None, 16)`` -> ``"(None, 16)"``; containers format element-wise."""
    if shape is None:
        return "None"
    if isinstance(shape, dict):
        return "{" + ", ".join(f"{k!r}: {fmt_shape(v)}" for k, v in shape.items()) + "}"
    if isinstance(shape, tuple) and all(isinstance(s, (tuple, dict)) for s in shape) and shape:
        return "(" + ", ".join(fmt_shape(s) for s in shape) + ")"
    if isinstance(shape, (tuple, list)):
        inner = ", ".join("None" if d is None else str(d) for d in shape)
        return f"({inner},)" if len(shape) == 1 else f"({inner})"
    return repr(shape)


class GraphDSLError(Exception):
    """An error caused by user input, with a message that says what and how to fix it.

    Every error a user can cause is one (or a subclass): the message names the layer, its
    op, the shapes involved, where the layer was defined (file:line) and the fix. Raw NumPy
    or torch exceptions never reach the user for a mistake the library can detect.

    Attributes:
        what: the first line of the message.
        layer: the layer's name, or None.
        op: the layer's op, or None.
        shapes: the shapes involved (a dict or a list), or None.
        where: where the layer was defined (``file:line``), or None.
        fix: how to fix it, or None.

    Examples:
        >>> x = gd.input("x", shape=(None, 4))
        >>> try:
        ...     gd.dense(x, 0, name="fc")
        ... except gd.GraphDSLError as e:
        ...     print(e.layer, e.op, "|", e.fix)
        fc dense | pass units=<int >= 1>
    """

    def __init__(
        self,
        what: str,
        *,
        layer: str | None = None,
        op: str | None = None,
        shapes: Iterable[Any] | dict[str, Any] | None = None,
        where: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.what, self.layer, self.op, self.where, self.fix = what, layer, op, where, fix
        self.shapes = shapes
        lines = [what]
        if layer is not None or op is not None:
            loc = f"layer '{layer}'" if layer is not None else "an unnamed layer"
            if op is not None:
                loc += f" (op {op})"
            if where:
                loc += f", defined at {where}"
            lines.append(f"  in {loc}")
        elif where:
            lines.append(f"  defined at {where}")
        if shapes:
            if isinstance(shapes, dict):
                txt = ", ".join(f"{k}={fmt_shape(v)}" for k, v in shapes.items())
            else:
                txt = ", ".join(fmt_shape(s) for s in shapes)
            lines.append(f"  shapes: {txt}")
        if fix:
            lines.append(f"  fix: {fix}")
        super().__init__("\n".join(lines))


class ShapeError(GraphDSLError):
    """The shapes of a layer's inputs do not fit its op.

    Examples:
        >>> x = gd.input("x", shape=(None, 4))
        >>> try:
        ...     gd.add(x, gd.input("y", shape=(None, 3)))
        ... except gd.errors.ShapeError as e:
        ...     print(type(e).__name__, "|", e.fix)
        ShapeError | make the sizes equal, or 1 on one side (NumPy broadcasting)
    """


class OptionError(GraphDSLError):
    """A layer option (units, rate, axis, activation, ...) is invalid.

    Examples:
        >>> x = gd.input("x", shape=(None, 4))
        >>> try:
        ...     gd.dropout(x, rate=1.5)
        ... except gd.errors.OptionError as e:
        ...     print(type(e).__name__, "|", e.fix)
        OptionError | pass rate within [0.0, 1.0)
    """


class LayerNameError(GraphDSLError):
    """A layer name is malformed or used twice.

    Examples:
        >>> x = gd.input("x", shape=(None, 4))
        >>> try:
        ...     gd.dense(x, 2, name="bad name")
        ... except gd.errors.LayerNameError as e:
        ...     print(type(e).__name__, "|", e.fix)
        LayerNameError | pass a name like name="encoder_fc1" or "model.layers.0.mlp.up_proj"
    """


# the names these had in 0.1 (they read like Python's built-in exceptions)
AttributeError_ = OptionError
NameError_ = LayerNameError


class InputError(GraphDSLError):
    """The arrays passed to predict do not match the model's inputs.

    Examples:
        >>> x = gd.input("x", shape=(None, 4))
        >>> try:
        ...     gd.predict(gd.relu(x), gd.ModelState.empty(), np.zeros((1, 5), np.float32))
        ... except gd.errors.InputError as e:
        ...     print(type(e).__name__, "|", e.fix)
        InputError | pass an array of rank 2 matching (None, 4) (None = any size)
    """


class StateError(GraphDSLError):
    """A ModelState does not fit the model (missing, unknown or mis-shaped values).

    Examples:
        >>> x = gd.input("x", shape=(None, 4))
        >>> try:
        ...     gd.predict(gd.dense(x, 2), gd.ModelState.empty(), np.zeros((1, 4), np.float32))
        ... except gd.errors.StateError as e:
        ...     print(type(e).__name__, "|", e.fix)
        StateError | initialize the state with init_fn(template, state) ...
    """


class ImmutableStateError(StateError, ValueError):
    """An in-place write into a ModelState value (values are immutable; store a new one).

    Also a ValueError, the exception NumPy raises for a write into read-only memory.

    Examples:
        >>> x = gd.input("x", shape=(None, 4))
        >>> state = gd.build(gd.dense(x, 2, name="fc"))[0](np.zeros((1, 4), np.float32))
        >>> try:
        ...     state.data["fc"]["bias"][0] = 1.0
        ... except gd.errors.ImmutableStateError:
        ...     state.data["fc"]["bias"] = np.ones(2, np.float32)    # store a new array
        >>> state.data["fc"]["bias"].tolist()
        [1.0, 1.0]
    """


class BackendError(GraphDSLError):
    """An unknown or unavailable backend, or a backend-specific failure.

    Examples:
        >>> x = gd.input("x", shape=(None, 4))
        >>> try:
        ...     gd.build(x, backend="jax")
        ... except gd.errors.BackendError as e:
        ...     print(type(e).__name__, "|", e.fix)
        BackendError | use one of: numpy...
    """


class SerializationError(GraphDSLError):
    """A model file or JSON definition is invalid, corrupt or hostile.

    Examples:
        >>> try:
        ...     gd.from_json("{")
        ... except gd.errors.SerializationError as e:
        ...     print(type(e).__name__, "|", e.fix)
        SerializationError | fix the JSON syntax
    """


class RuleError(Exception):
    """Raised by op rules (shape rules, attribute checks); the caller turns it into a
    GraphDSLError that carries the layer, op, shapes and location."""

    def __init__(self, what: str, fix: str | None = None, cls: type[GraphDSLError] = ShapeError):
        super().__init__(what)
        self.what, self.fix, self.cls = what, fix, cls
