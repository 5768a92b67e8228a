"""Reading a Hugging Face config (a dict, or an object with HF's field names such as
``transformers.LlamaConfig``) for the model constructors, with errors that name the
field and what was expected. A field the config lacks takes the default of that
family's transformers config class (``HFFamily.defaults``), as transformers does."""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..errors import GraphDSLError
from .family import HFFamily

_REQUIRED = object()

#: Hugging Face activation names -> (graphdsl activation op, its options)
ACTIVATIONS = {"silu": ("silu", {}), "swish": ("silu", {}), "relu": ("relu", {}),
               "gelu": ("gelu", {}), "gelu_new": ("gelu", {"approximate": True}),
               "gelu_pytorch_tanh": ("gelu", {"approximate": True}),
               "gelu_python": ("gelu", {}), "tanh": ("tanh", {}), "sigmoid": ("sigmoid", {}),
               "relu6": ("relu6", {}), "mish": ("mish", {}), "linear": ("linear", {}),
               "leaky_relu": ("leaky_relu", {"alpha": 0.01}),
               "hardswish": ("hard_silu", {"alpha": 1 / 6, "beta": 0.5})}

_KINDS = {int: "integer", float: "number", bool: "boolean", str: "string", dict: "JSON object",
          list: "list", type(None): "null"}


class Config:
    """Field access on a Hugging Face config for ``family`` (its record: llama, gpt2, ...);
    ``kind`` is its ``model_type`` (mistral and qwen2 are built by the llama family)."""

    def __init__(self, config: Any, family: HFFamily) -> None:
        if isinstance(config, Mapping):
            data = dict(config)
        elif hasattr(config, "to_json_string"):  # a transformers PretrainedConfig
            data = json.loads(config.to_json_string(use_diff=False))
        elif hasattr(config, "__dict__"):
            data = {k: v for k, v in vars(config).items() if not k.startswith("_")}
        else:
            raise GraphDSLError(f"models.{family.name}: the config must be a dict or an object "
                                f"with Hugging Face's field names, got {type(config).__name__}",
                                fix="pass transformers' config or json.load(config.json)")
        self.data, self.family = data, family.name
        self.kind = data.get("model_type", family.name)
        self.defaults = family.defaults.get(self.kind, {}) if isinstance(self.kind, str) else {}

    def get(self, key: str, default: Any = _REQUIRED, kind: type | tuple = (int,),
            lo: int = 1) -> Any:
        """``config[key]`` (else transformers' default, else ``default``) checked to be of
        ``kind`` (default: an int >= ``lo``; ``None`` allowed where the default is None); a
        missing required field or a wrong type is a GraphDSLError naming the field."""
        default = self.defaults.get(key, default)
        value = self.data.get(key, default)
        if value is _REQUIRED:
            raise GraphDSLError(f"models.{self.family}: the config has no {key!r}",
                                fix=f"add {key!r} (Hugging Face's {self.kind} config field)")
        kinds = kind if isinstance(kind, tuple) else (kind,)
        ok = (value is None and default is None) or (
            isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds))
        counts = int in kinds and float not in kinds and bool not in kinds
        if ok and counts and value is not None:
            ok = value >= lo
        if not ok:
            names = " or ".join(_KINDS[k] for k in kinds if not (k is int and float in kinds))
            names = ("an " if names[0] in "aeiou" else "a ") + names.replace(
                "integer", f"integer >= {lo}" if counts else "integer")
            raise GraphDSLError(
                f"models.{self.family}: config.json field {key!r} is {value!r}, not {names}",
                fix=f"set {key!r} to {names}, or drop it for transformers' default "
                    f"{default!r}")
        return value

    def flag(self, key: str) -> bool:
        """A boolean field (``attention_bias``, ``is_decoder``, ...)."""
        return self.get(key, False, bool)

    def rate(self, key: str) -> float:
        """A dropout probability in [0, 1) (``attention_dropout``, ``resid_pdrop``, ...)."""
        value = float(self.get(key, 0.0, (int, float)))
        if not 0.0 <= value < 1.0:
            raise GraphDSLError(f"models.{self.family}: config.json field {key!r} is "
                                f"{value!r}, not a dropout rate in [0, 1)",
                                fix=f"set {key!r} to a number in [0, 1), e.g. 0.1")
        return value

    def unsupported(self, key: str, value: Any, allowed: str) -> GraphDSLError:
        return GraphDSLError(f"models.{self.family}: config {key}={value!r} is not supported",
                             fix=f"graphdsl implements {allowed}; it guesses nothing else")

    def activation(self, key: str) -> tuple[str, dict]:
        name = self.get(key, kind=str)
        if name not in ACTIVATIONS:
            raise self.unsupported(key, name, f"the activations {sorted(ACTIVATIONS)}")
        return ACTIVATIONS[name]

    def rope_theta(self) -> float:
        """``rope_theta`` of the default rotary embedding; other rope types are errors."""
        params = self.get("rope_parameters", None, dict) or {}
        scaling = self.get("rope_scaling", None, dict) or {}
        kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") \
            or "default"
        if kind != "default":
            raise self.unsupported("rope_type", kind, "the default rotary embedding")
        factor = params.get("partial_rotary_factor",
                            self.data.get("partial_rotary_factor", 1.0))
        if factor != 1.0:
            raise self.unsupported("partial_rotary_factor", factor, "a factor of 1.0")
        theta = params.get("rope_theta", self.data.get("rope_theta", 10000.0))
        if isinstance(theta, bool) or not isinstance(theta, (int, float)) or theta <= 0:
            raise self.unsupported("rope_theta", theta, "a positive number")
        return float(theta)

    def meta(self) -> dict[str, Any]:
        """What the model keeps with it (``gd.input(..., meta=)``): the whole config."""
        return {"hf_config": self.data}
