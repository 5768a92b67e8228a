"""The one exception family users see.

Every error caused by user input is a :class:`GraphDSLError` whose message names
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

    Attributes mirror the message: ``layer``, ``op``, ``shapes``, ``where``, ``fix``.
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
    """Shapes of a layer's inputs do not fit its op."""


class OptionError(GraphDSLError):
    """A layer option (units, rate, axis, activation, ...) is invalid."""


class LayerNameError(GraphDSLError):
    """A layer name is malformed or used twice."""


# the names these had in 0.1 (they read like Python's built-in exceptions)
AttributeError_ = OptionError
NameError_ = LayerNameError


class InputError(GraphDSLError):
    """Arrays passed to predict do not match the model's inputs."""


class StateError(GraphDSLError):
    """A ModelState does not fit the model (missing, unknown or mis-shaped values)."""


class ImmutableStateError(StateError, ValueError):
    """An in-place write into a ModelState value (values are immutable; store a new one).
    Also a ValueError, the exception NumPy raises for a write into read-only memory."""


class BackendError(GraphDSLError):
    """An unknown or unavailable backend, or a backend-specific failure."""


class SerializationError(GraphDSLError):
    """A model file or JSON definition is invalid, corrupt or hostile."""


class RuleError(Exception):
    """Raised by op rules (shape rules, attribute checks); the caller turns it into a
    GraphDSLError that carries the layer, op, shapes and location."""

    def __init__(self, what: str, fix: str | None = None, cls: type[GraphDSLError] = ShapeError):
        super().__init__(what)
        self.what, self.fix, self.cls = what, fix, cls
