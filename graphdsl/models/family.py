"""A model family's Hugging Face conventions in one record, declared next to its
constructor (``llama.LLAMA``, ``gpt2.GPT2``, ``bert.BERT``) and collected in
:data:`graphdsl.models.FAMILIES`. graphdsl.hf reads these records and knows no family by
name: adding a family takes its module and its record."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..node import Node


@dataclass(frozen=True, eq=False)
class HFFamily:
    """How one family's models meet transformers' configs, classes and checkpoints.

    Layer names are ours (the Hugging Face module paths, e.g. ``model.embed_tokens``); a
    checkpoint key is a layer name, a dot and transformers' parameter name."""

    #: ``models.<name>``, also the ``model_type`` a config without one is read as
    name: str
    #: the constructor, ``build(config, **options) -> Node``
    build: Callable[..., Node]
    #: config ``model_type`` -> the architecture (transformers class) it loads as
    model_types: Mapping[str, str]
    #: PEFT's ``task_type`` of the models this family builds
    task: str
    #: transformers' ``base_model_prefix`` with its dot, and whether our names carry it
    base_model_prefix: str
    prefixed: bool
    #: the prefix of the numbered blocks (``model.layers.``) and the config field counting them
    blocks: str
    block_count: str
    #: the token embedding's layer and the config fields of its ``[rows, columns]``
    embedding: str
    embedding_fields: tuple[str, str]
    #: by ``model_type``: the math-relevant defaults of its transformers config class
    defaults: Mapping[str, Mapping[str, Any]]
    #: a base model class (no head) -> the architecture it loads as (AutoModelFor* does so)
    base_models: Mapping[str, str] = field(default_factory=dict)
    #: the output layer outside the base model, a Linear; a tied checkpoint may hold its
    #: weight, which is then the embedding's
    head: str | None = None
    #: the dense kernels are Conv1D weights ``[in, out]`` (all but ``head``'s)
    conv1d: bool = False
    #: regexes (searched) of checkpoint keys that are buffers, not weights
    ignored: tuple[str, ...] = ()
    #: ``{checkpoint key: constructor flag}`` turned on when a checkpoint holds the key
    options: Mapping[str, str] = field(default_factory=dict)
