"""DoRA fine-tuning of a LLaMA: one SGD training step (forward, cross-entropy, backward,
step) through ``gd.to_torch`` against PEFT's DoRA and LoRA on the same transformers model,
timed round-robin in one process with 2 threads (``settled``: each timed step after an
untimed one of the same). hidden 512, 2 layers, 8 heads / 4 kv
heads, intermediate 1376, vocab 1000, batch 4 x 128 tokens, rank 16, alpha 32, all seven
projections adapted; the graphdsl model is the user's path (``hf.from_transformers``,
``dora.adapt``) with PEFT's adapter values copied in, and the losses are checked equal.
Peak memory: the peak of live tensor bytes during one step (the profiler's timeline)."""
from __future__ import annotations

import sys

import numpy as np

from benchmarks.bench_torch_dora import peak_bytes, settled
from benchmarks.harness import Row, machine, table

THREADS = 2
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA, LR = 16, 32.0, 1e-3


def _config(quick: bool):
    import transformers

    size = (dict(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=100) if quick else
            dict(hidden_size=512, intermediate_size=1376, num_attention_heads=8,
                 num_key_value_heads=4, vocab_size=1000))
    return transformers.LlamaConfig(num_hidden_layers=2, attn_implementation="eager", **size)


def _peft(cfg, use_dora: bool):
    """PEFT on a fresh transformers model, and that model's graphdsl form (read before
    PEFT wraps its layers)."""
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    from graphdsl import hf

    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(cfg)
    ours = hf.from_transformers(base)
    net = get_peft_model(base, LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS,
                                          use_dora=use_dora))
    with torch.no_grad():  # a trained adapter, not the zero init
        for n, p in net.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.01)
    return net, ours


def _ours(peft_model, model, state):
    """graphdsl's DoRA of the same base weights, with PEFT's adapter values."""
    import graphdsl as gd
    from graphdsl import dora

    base = peft_model.get_base_model()
    adapted = dora.adapt(model, targets=TARGETS, rank=RANK, alpha=ALPHA)
    state = gd.build(adapted)[0](None, state)
    for name, mod in base.named_modules():
        if hasattr(mod, "lora_A") and "default" in mod.lora_A:
            layer = f"{name}_dora"
            state.data[layer] = dict(
                state.data[layer],
                A=mod.lora_A["default"].weight.detach().numpy().T,
                B=mod.lora_B["default"].weight.detach().numpy().T,
                magnitude=mod.lora_magnitude_vector["default"].weight.detach().numpy())
    return gd.to_torch(adapted, state)


def _step(fn, params, ids):
    import torch

    opt = torch.optim.SGD([p for p in params if p.requires_grad], lr=LR)
    inputs, labels = ids[:, :-1], ids[:, 1:].reshape(-1)

    def step():
        opt.zero_grad(set_to_none=True)
        logits = fn(inputs)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels)
        loss.backward()
        opt.step()
        return loss

    return step


def run(quick: bool = False) -> list[Row]:
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(THREADS)
    cfg = _config(quick)
    batch, seq = (2, 32) if quick else (4, 128)
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, cfg.vocab_size,
                                                              (batch, seq + 1)))
    peft_dora, (model, state) = _peft(cfg, True)
    peft_lora = _peft(cfg, False)[0]
    ours = _ours(peft_dora, model, state)
    steps = {
        "ours": _step(ours, ours.parameters(), ids),
        "peft_dora": _step(lambda x: peft_dora(input_ids=x).logits, peft_dora.parameters(),
                           ids),
        "peft_lora": _step(lambda x: peft_lora(input_ids=x).logits, peft_lora.parameters(),
                           ids),
    }
    with threadpool_limits(THREADS):
        first = {k: float(steps[k]()) for k in ("ours", "peft_dora")}
        assert abs(first["ours"] - first["peft_dora"]) < 1e-4, first  # the same computation
        t = settled(steps, lambda: None, repeat=3 if quick else 15, warmup=2)
        mem = {k: peak_bytes(steps[k], "cpu") / 2**20 for k in ("ours", "peft_dora")}
    n = f"LLaMA {cfg.hidden_size}x2 DoRA r=16 train step, batch {batch}x{seq}"
    return [
        # issue 24: "<= 1.0x PEFT's LoRA step" replaces the unreachable 0.8x PEFT's DoRA
        Row(n, t["ours"], t["peft_dora"], "PEFT DoRA", None),
        Row(f"{n}, vs LoRA", t["ours"], t["peft_lora"], "PEFT LoRA", 1.0),
        Row(f"{n}: peak memory", mem["ours"], mem["peft_dora"], "PEFT DoRA", 1.0,
            unit="MiB"),
        Row(f"PEFT's own DoRA step vs its LoRA step ({cfg.hidden_size}x2)", t["peft_dora"],
            t["peft_lora"], "PEFT LoRA"),
    ]


if __name__ == "__main__":
    print(machine())
    print(table(run("--quick" in sys.argv)))
