"""``adapter_config.json`` of a Hugging Face PEFT LoRA/DoRA adapter: read and checked
(every field graphdsl does not implement is an error, never ignored) and written.

PEFT's matching rules, mirrored here: a ``target_modules`` list entry matches the module
named exactly that or ending in ``"." + entry``, a string is a regex that must match the
whole name; a ``modules_to_save`` entry matches every module whose name ends in it
(a plain suffix), and a module matched by ``modules_to_save`` is never a target.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from typing import Any

from ..errors import GraphDSLError
from ..models import FAMILIES

CONFIG_FILE = "adapter_config.json"
#: the fields graphdsl implements (everything else must be at its do-nothing value)
USED = ("peft_type", "r", "lora_alpha", "target_modules", "use_dora", "use_rslora",
        "lora_dropout", "fan_in_fan_out", "bias", "modules_to_save", "task_type")
#: fields that say where the adapter came from, not what it computes
METADATA = frozenset({"base_model_name_or_path", "revision", "inference_mode",
                      "peft_version", "auto_mapping", "megatron_core"})
#: ``init_lora_weights`` values that only chose the starting A/B (others, e.g. "pissa",
#: "olora", "loftq", rewrite the base weights, which the adapter then depends on)
PLAIN_INITS = (True, False, "gaussian")
#: the task types of the architectures graphdsl.hf builds (and "no task")
TASKS = (None, *sorted({f.task for f in FAMILIES}))
#: the fields the check of unimplemented fields passes over: those above,
#: ``init_lora_weights`` (checked on its own) and ``qalora_group_size`` (read only with
#: ``use_qalora``, itself refused)
_SKIPPED = frozenset({*USED, *METADATA, "init_lora_weights", "qalora_group_size"})


def _is_off(value: Any) -> bool:
    return value is None or value is False or (isinstance(value, (dict, list, str))
                                               and not value)


def _fail(folder: str, what: str, fix: str) -> GraphDSLError:
    return GraphDSLError(f"{os.path.join(folder, CONFIG_FILE)}: {what}", fix=fix)


def read_config(folder: str) -> dict[str, Any]:
    """The checked config of the PEFT adapter in ``folder``: ``{field: value}`` for the
    fields in ``USED`` (with PEFT's defaults filled in)."""
    path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(path):
        raise GraphDSLError(f"{folder} has no {CONFIG_FILE}",
                            fix="pass the directory PeftModel.save_pretrained wrote")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        raise _fail(folder, f"cannot be read as JSON ({e})", "re-save the adapter") from None
    if not isinstance(raw, dict):
        raise _fail(folder, "is not a JSON object", "re-save the adapter")
    if raw.get("peft_type") != "LORA":
        raise _fail(folder, f"peft_type is {raw.get('peft_type')!r}; graphdsl reads LORA "
                    "adapters (LoRA and DoRA) only", "train the adapter with LoraConfig")
    if raw.get("init_lora_weights", True) not in PLAIN_INITS:
        raise _fail(folder, f"init_lora_weights={raw['init_lora_weights']!r} changes the "
                    "base weights the adapter was trained on; graphdsl does not implement "
                    "it", "convert the adapter to plain LoRA when saving it (PEFT's "
                    "path_initial_model_for_weight_conversion)")
    for key, value in raw.items():
        if key not in _SKIPPED and not _is_off(value):
            raise _fail(folder, f"{key}={value!r} is set; graphdsl.hf.load_peft does not "
                        f"implement {key}", f"use an adapter without {key} (it would change "
                        "what the adapter computes, so it is not ignored)")
    cfg = {"use_dora": False, "use_rslora": False, "lora_dropout": 0.0,
           "fan_in_fan_out": False, "bias": "none", "modules_to_save": None,
           "task_type": None, "lora_alpha": 8, "r": 8, **{k: raw[k] for k in USED if k in raw}}
    _check_values(folder, cfg)
    return cfg


def _check_values(folder: str, cfg: dict[str, Any]) -> None:
    if cfg["bias"] != "none":
        raise _fail(folder, f"bias={cfg['bias']!r}: the adapter trains bias terms, which "
                    "graphdsl does not implement", "train with bias='none'")
    if cfg["task_type"] not in TASKS:
        raise _fail(folder, f"task_type={cfg['task_type']!r}: graphdsl.hf builds "
                    f"{[t for t in TASKS if t]} models only", "use a causal LM or BertModel "
                    "adapter")
    r = cfg["r"]
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise _fail(folder, f"r={r!r} is not a positive integer", "re-save the adapter")
    alpha = cfg["lora_alpha"]
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        raise _fail(folder, f"lora_alpha={alpha!r} is not a number", "re-save the adapter")
    for flag in ("use_dora", "use_rslora", "fan_in_fan_out"):
        if not isinstance(cfg[flag], bool):
            raise _fail(folder, f"{flag}={cfg[flag]!r} is not true/false",
                        "re-save the adapter")
    tm = cfg.get("target_modules")
    if not (isinstance(tm, str) or (isinstance(tm, list) and tm
                                    and all(isinstance(t, str) for t in tm))):
        raise _fail(folder, f"target_modules={tm!r}: graphdsl needs a list of module names "
                    "or a regex", "re-save the adapter with target_modules")
    if isinstance(tm, str):
        try:
            re.compile(tm)
        except re.error as e:
            raise _fail(folder, f"target_modules={tm!r} is not a valid regular expression "
                        f"({e})", "write target_modules as a regex that matches whole module "
                        r"names (e.g. '.*\\.(q|v)_proj') or as a list of names") from None
    mts = cfg["modules_to_save"]
    if mts is not None and not (isinstance(mts, list) and all(isinstance(m, str)
                                                                for m in mts)):
        raise _fail(folder, f"modules_to_save={mts!r} is not a list of names",
                    "re-save the adapter")


def is_target(target_modules: str | list[str], name: str) -> bool:
    """PEFT's ``target_modules`` rule for one module name."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == t or name.endswith("." + t) for t in target_modules)


def is_saved(modules_to_save: Iterable[str] | None, name: str) -> bool:
    """PEFT's ``modules_to_save`` rule for one module name (a plain suffix)."""
    return any(name.endswith(m) for m in modules_to_save or ())


def short_targets(adapted: list[str], layers: list[str]) -> list[str]:
    """A ``target_modules`` list that selects exactly ``adapted`` among ``layers`` (every
    module with parameters): a last name segment (``"q_proj"``) where it selects only
    adapted layers, the full names of the others."""
    chosen = set(adapted)
    out: set[str] = set()
    for name in adapted:
        seg = name.rsplit(".", 1)[-1]
        if all(lay in chosen for lay in layers if is_target([seg], lay)):
            out.add(seg)
        else:
            out.add(name)
    return sorted(out)


def write_config(fields: dict[str, Any]) -> bytes:
    """The bytes of an ``adapter_config.json`` with ``fields`` (see ``USED``) and
    the do-nothing values of the fields PEFT would otherwise default."""
    cfg = {"peft_type": "LORA", "base_model_name_or_path": None, "revision": None,
           "inference_mode": True, "init_lora_weights": True, "bias": "none",
           "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None,
           "layers_pattern": None, "exclude_modules": None, **fields}
    return json.dumps(cfg, indent=2, sort_keys=True).encode("utf-8")
