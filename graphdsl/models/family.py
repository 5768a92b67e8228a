"""A model family's Hugging Face conventions in one record, declared next to its
constructor (``llama.LLAMA``, ``gpt2.GPT2``, ``bert.BERT``) and collected in
``graphdsl.models.FAMILIES``. graphdsl.hf reads these records and knows no family by
name: adding a family takes its module and its record."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..node import Node


@dataclass(frozen=True, eq=False)
class HFFamily:
    """How one family's models meet transformers' configs, classes and checkpoints.

    Layer names are ours (the Hugging Face module paths); a checkpoint key is a layer name,
    a dot and transformers' parameter name (``model.embed_tokens.weight``). graphdsl.hf
    reads these records (``graphdsl.models.FAMILIES``) and knows no family by name:
    adding a family takes its module and its record (see the architecture page).

    Attributes:
        name: ``models.<name>``; also the model_type of a config that names none.
        build: the constructor, ``build(config, **options) -> Node``.
        model_types: config ``model_type`` -> the transformers class it loads as.
        task: PEFT's ``task_type`` of its models.
        base_model_prefix: transformers' ``base_model_prefix``, with its dot.
        prefixed: whether our layer names carry that prefix.
        blocks: the prefix of the numbered blocks (``"model.layers."``).
        block_count: the config field counting them.
        embedding: the token embedding's layer.
        embedding_fields: the config fields of its ``[rows, columns]``.
        defaults: by model_type, its config class' defaults.
        base_models: base class -> head class.
        head: the output Linear outside the base model, or None.
        conv1d: the dense kernels but the head's are Conv1D weights ``[in, out]`` (GPT-2).
        ignored: regexes of checkpoint buffers that are not weights.
        options: ``{checkpoint key: constructor flag}`` turned on when a checkpoint holds
            the key.

    Examples:
        >>> from graphdsl import models
        >>> [f.name for f in models.FAMILIES], models.LLAMA.model_types["mistral"]
        (['llama', 'gpt2', 'bert'], 'MistralForCausalLM')
    """

    name: str  # models.<name>; also the model_type of a config that names none
    build: Callable[..., Node]  # the constructor: build(config, **options) -> Node
    model_types: Mapping[str, str]  # config model_type -> the class it loads as
    task: str  # PEFT's task_type of its models
    base_model_prefix: str  # transformers' base_model_prefix, with its dot
    prefixed: bool  # whether our layer names carry that prefix
    blocks: str  # the prefix of the numbered blocks ("model.layers.")
    block_count: str  # the config field counting them
    embedding: str  # the token embedding's layer
    embedding_fields: tuple[str, str]  # the config fields of its [rows, columns]
    defaults: Mapping[str, Mapping[str, Any]]  # by model_type: its config class' defaults
    base_models: Mapping[str, str] = field(default_factory=dict)  # base class -> head class
    #: the output layer outside the base model, a Linear; a checkpoint may hold its weight
    #: when it is tied to the embedding
    head: str | None = None
    conv1d: bool = False  # the dense kernels but head's are Conv1D weights [in, out]
    ignored: tuple[str, ...] = ()  # regexes (searched) of checkpoint buffers, not weights
    #: {checkpoint key: constructor flag} turned on when a checkpoint holds the key
    options: Mapping[str, str] = field(default_factory=dict)
