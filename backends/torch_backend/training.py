"""Training helpers for ``to_torch`` modules: LoRA+ optimizer parameter groups."""
from __future__ import annotations

from typing import Any

from graphdsl.adapters.contract import is_adapter
from graphdsl.errors import GraphDSLError

from .module import module_parameters, unwrap


def loraplus_param_groups(module: Any, lr: float, ratio: float = 16.0,
                          weight_decay: float = 0.0) -> list[dict[str, Any]]:
    """Optimizer param groups for LoRA+ (Hayou et al. 2024).

    The ``B`` matrices of ``lora``/``dora`` layers at ``ratio * lr``, every other trainable
    parameter (``A``, ``magnitude``, unfrozen base weights) at ``lr``; frozen parameters are
    left out. Also ``graphdsl.lora.loraplus_param_groups``.

    Args:
        module: a module from ``graphdsl.to_torch`` (or a wrapper around it).
        lr: the base learning rate.
        ratio: the ``B`` matrices' learning-rate multiplier (the paper's lambda).
        weight_decay: every group's weight decay.

    Returns:
        (list[dict[str, Any]]): param groups for a ``torch.optim`` optimizer.

    Raises:
        GraphDSLError: a bad ``lr``/``ratio``, or a module with no trainable parameter.

    Examples:
        >>> import torch
        >>> from graphdsl import lora
        >>> model = lora.adapt(gd.dense(gd.input("x", shape=(None, 4)), 4, name="q"), ["q"])
        >>> module = gd.to_torch(model, gd.build(model)[0](np.zeros((1, 4), np.float32)))
        >>> groups = gd.loraplus_param_groups(module, 1e-4)
        >>> opt = torch.optim.AdamW(groups)
        >>> sorted(g["lr"] for g in groups)
        [0.0001, 0.0016]
    """
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise GraphDSLError(f"lr must be a positive number, got {lr!r}", fix="e.g. lr=1e-4")
    if not (isinstance(ratio, (int, float)) and ratio > 0):
        raise GraphDSLError(f"ratio must be a positive number, got {ratio!r}",
                            fix="LoRA+ recommends ratio=16")
    mod = unwrap(module)
    adapters = {s.name for s in mod._graphdsl.plan.steps if is_adapter(s.op)}
    base, fast = [], []
    for owner, name, p in module_parameters(mod):
        if not p.requires_grad:
            continue
        (fast if owner in adapters and name == "B" else base).append(p)
    if not fast:
        raise GraphDSLError("the module has no trainable LoRA/DoRA B matrices",
                            fix="wrap layers with lora.adapt / dora.adapt before to_torch")
    groups = [{"params": fast, "lr": lr * ratio, "weight_decay": weight_decay,
               "name": "loraplus_B"}]
    if base:
        groups.insert(0, {"params": base, "lr": lr, "weight_decay": weight_decay,
                          "name": "loraplus_A"})
    return groups


__all__ = ["loraplus_param_groups"]
