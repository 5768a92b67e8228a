"""Reading a Hugging Face config (a dict, or an object with HF's field names such as
``transformers.LlamaConfig``) for the model constructors, with errors that name the
field and what was expected."""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..errors import GraphDSLError

_REQUIRED = object()

#: Hugging Face activation names -> (graphdsl activation op, its options)
ACTIVATIONS = {"silu": ("silu", {}), "swish": ("silu", {}), "relu": ("relu", {}),
               "gelu": ("gelu", {}), "gelu_new": ("gelu", {"approximate": True}),
               "gelu_pytorch_tanh": ("gelu", {"approximate": True}),
               "tanh": ("tanh", {})}


class Config:
    """Field access on a Hugging Face config for the family ``family`` (llama, gpt2, ...)."""

    def __init__(self, config: Any, family: str) -> None:
        if isinstance(config, Mapping):
            data = dict(config)
        elif hasattr(config, "to_json_string"):  # a transformers PretrainedConfig
            data = json.loads(config.to_json_string(use_diff=False))
        elif hasattr(config, "__dict__"):
            data = {k: v for k, v in vars(config).items() if not k.startswith("_")}
        else:
            raise GraphDSLError(f"models.{family}: the config must be a dict or an object "
                                f"with Hugging Face's field names, got {type(config).__name__}",
                                fix="pass transformers' config or json.load(config.json)")
        self.data, self.family = data, family

    def get(self, key: str, default: Any = _REQUIRED, kind: type | tuple = (int,)) -> Any:
        """``config[key]`` checked to be of ``kind`` (default: a positive int); a missing
        required field or a wrong type is a GraphDSLError naming the field."""
        value = self.data.get(key, default)
        if value is _REQUIRED:
            raise GraphDSLError(f"models.{self.family}: the config has no {key!r}",
                                fix=f"add {key!r} (Hugging Face's {self.family} config field)")
        if value is default and default is not _REQUIRED:
            return value
        ok = isinstance(value, kind) and not (isinstance(value, bool) and bool not in (
            kind if isinstance(kind, tuple) else (kind,)))
        if ok and kind == (int,):
            ok = value > 0
        if not ok:
            raise GraphDSLError(f"models.{self.family}: config field {key!r} is {value!r}",
                                fix=f"give {key!r} a value of type "
                                    f"{getattr(kind, '__name__', kind)}")
        return value

    def unsupported(self, key: str, value: Any, allowed: str) -> GraphDSLError:
        return GraphDSLError(f"models.{self.family}: config {key}={value!r} is not supported",
                             fix=f"graphdsl implements {allowed}; it guesses nothing else")

    def activation(self, key: str, default: str) -> tuple[str, dict]:
        name = self.data.get(key, default)
        if name not in ACTIVATIONS:
            raise self.unsupported(key, name, f"the activations {sorted(ACTIVATIONS)}")
        return ACTIVATIONS[name]

    def rope_theta(self) -> float:
        """``rope_theta`` of the default rotary embedding; other rope types are errors."""
        params = self.data.get("rope_parameters") or {}
        scaling = self.data.get("rope_scaling") or {}
        kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") \
            or "default"
        if kind != "default":
            raise self.unsupported("rope_type", kind, "the default rotary embedding")
        if self.data.get("partial_rotary_factor", 1.0) != 1.0:
            raise self.unsupported("partial_rotary_factor",
                                   self.data["partial_rotary_factor"], "a factor of 1.0")
        theta = params.get("rope_theta", self.data.get("rope_theta", 10000.0))
        if not isinstance(theta, (int, float)) or theta <= 0:
            raise self.unsupported("rope_theta", theta, "a positive number")
        return float(theta)

    def meta(self) -> dict[str, Any]:
        """What the model keeps with it (``gd.input(..., meta=)``): the whole config."""
        return {"hf_config": self.data}
