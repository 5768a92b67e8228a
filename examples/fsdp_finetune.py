"""Fine-tune a DoRA-adapted LLaMA with PyTorch FSDP2, sharded per decoder block.

A tiny LLaMA (``graphdsl.models.llama``) gets DoRA adapters on ``q_proj``, ``v_proj`` and
``down_proj`` (base weights frozen). Under torchrun, ``fully_shard`` is applied to each
decoder block ``model.layers.N`` and then to the whole module, as one does with a
transformers model: each process keeps 1/world of every parameter and trains on its shard
of the batch; FSDP gathers a block's weights for that block's forward and backward and
averages the gradients, so the result equals full-batch training in one process. At the
end the full state is gathered to rank 0, which saves the adapters. CPU + gloo by
default, one GPU per process + nccl when CUDA is available.

    torchrun --nproc_per_node=2 examples/fsdp_finetune.py [--steps 20] [--out adapters.gdsl]
    python examples/fsdp_finetune.py            # the same training, one process, no FSDP
    python examples/fsdp_finetune.py --quick    # 3 steps, a smoke run

The logged loss is the global one: each rank's next-token loss on its shard, all-reduced
(mean over the ranks weighted by their predicted-token counts), i.e. the loss over the
whole batch of 8 sequences, the number one process training on the full batch prints.

``--out PATH`` makes rank 0 write the trained adapters, and only those (every
``*_dora`` layer's A, B and magnitude with the adapters' settings; no base weights), with
``gd.save_adapters`` to one graphdsl adapter file at PATH (any extension; the usage line
says ``.gdsl``). Read it back onto the base state with
``gd.load_adapters(PATH, make_model(), initial_state(make_model()))``. Without ``--out``
nothing is written.

Run time on the 2-core development machine (CPU): about 5 s under torchrun with 2
processes and 2.5 s in one process when lightly loaded (load average ~2.7), 10 s and 8 s
at load ~7; nearly all of it start-up (importing torch, the process group): the 20 steps
take about a second. ``--quick`` (3 steps) is barely faster.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
import torch.distributed as dist

import graphdsl as gd
from graphdsl import dora, models

CONFIG = {"model_type": "llama", "vocab_size": 64, "hidden_size": 32,
          "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
          "intermediate_size": 64, "rms_norm_eps": 1e-6, "tie_word_embeddings": False}
N, SEQ = 8, 16  # sequences in the (global) batch, tokens per sequence


def make_model() -> gd.Node:
    """The tiny LLaMA with DoRA (rank 4) on q_proj, v_proj and down_proj of every block."""
    return dora.adapt(models.llama(CONFIG), ["q_proj", "v_proj", "down_proj"], rank=4,
                      alpha=8.0)


def make_data(n: int = N, seed: int = 0) -> np.ndarray:
    """Token ids (n, SEQ), int64: arithmetic sequences mod the vocabulary (learnable)."""
    rng = np.random.default_rng(seed)
    start = rng.integers(0, CONFIG["vocab_size"], (n, 1))
    stride = rng.integers(1, 4, (n, 1))
    return ((start + stride * np.arange(SEQ)) % CONFIG["vocab_size"]).astype(np.int64)


def initial_state(model: gd.Node, seed: int = 0) -> gd.ModelState:
    """The same weights on every rank: graphdsl initializes from the seed in NumPy."""
    return gd.build(model, seed=seed)[0]({"input_ids": np.zeros((1, SEQ), np.int64)})


def next_token_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting token t+1 from tokens <= t."""
    vocab = logits.shape[-1]
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, vocab),
                                             ids[:, 1:].reshape(-1))


def shard(module: torch.nn.Module) -> None:
    """FSDP2 per decoder block, then the root (embeddings, final norm, lm_head)."""
    from torch.distributed.fsdp import fully_shard

    for i in range(CONFIG["num_hidden_layers"]):
        fully_shard(module.get_submodule(f"model.layers.{i}"))
    fully_shard(module)


def global_mean(loss: torch.Tensor, n: int, fsdp: bool) -> float:
    """The mean of ``loss`` over the global batch: this rank's mean over its ``n`` values,
    weighted by ``n`` and summed over the ranks (a collective: every rank calls it)."""
    if not fsdp:
        return loss.item()
    both = torch.stack([loss.detach() * n, torch.tensor(float(n), device=loss.device)])
    dist.all_reduce(both)
    return (both[0] / both[1]).item()


def train(model: gd.Node, state: gd.ModelState, ids: np.ndarray, steps: int, lr: float,
          device: str = "cpu", fsdp: bool = False, log: bool = False) -> gd.ModelState | None:
    """``steps`` SGD steps of next-token loss on ``ids``; returns the trained state. With
    ``fsdp=True`` (process group initialized, ``ids`` this rank's shard) the module is
    sharded per block and the state is gathered to rank 0: other ranks return None. Every
    5th step (and the last) the global loss is computed (all ranks take part) and printed
    where ``log``."""
    module = gd.to_torch(model, state, device=device)
    if fsdp:
        shard(module)
        held = sum(p.to_local().numel() for p in module.parameters())
        total = sum(p.numel() for p in module.parameters())
        print(f"rank {dist.get_rank()} holds {held} of {total} parameter values", flush=True)
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=lr)
    xb = torch.from_numpy(ids).to(device)
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = next_token_loss(module(xb), xb)
        loss.backward()
        opt.step()
        if step % 5 == 0 or step == steps - 1:
            # the loss the step came from, over every predicted token of the global batch
            value = global_mean(loss, ids.shape[0] * (ids.shape[1] - 1), fsdp)
            if log:
                print(f"step {step:3d}  loss {value:.6f}", flush=True)
    if not fsdp:
        return gd.from_torch(module)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    # a collective: every rank takes part; rank 0 receives the full tensors, on the CPU
    full = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True,
                                                                 cpu_offload=True))
    return gd.from_torch(module, full) if dist.get_rank() == 0 else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="3 steps (a smoke run)")
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--out", default=None, metavar="PATH",
                    help="rank 0 writes the trained adapters only (A, B, magnitude of "
                    "every DoRA layer; no base weights) with gd.save_adapters to PATH; "
                    "read back with gd.load_adapters; default: write nothing")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps = 3

    distributed = "WORLD_SIZE" in os.environ
    rank, world, device = 0, 1, "cpu"
    if distributed:
        cuda = torch.cuda.is_available()
        local = int(os.environ.get("LOCAL_RANK", 0))
        if cuda:
            torch.cuda.set_device(local)
            device = f"cuda:{local}"
        dist.init_process_group("nccl" if cuda else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    model = make_model()
    state = initial_state(model)
    ids = make_data()
    if N % world:
        raise SystemExit(f"the batch of {N} does not split evenly over {world} processes")
    part = ids[rank * N // world:(rank + 1) * N // world]
    if rank == 0:
        print(f"{world} process(es) on {device}; trainable "
              f"{state.trainable_parameter_count()} of {state.parameter_count()} parameters; "
              f"loss: next-token cross-entropy over the global batch of {N} sequences")
    trained = train(model, state, part, args.steps, args.lr, device, fsdp=distributed,
                    log=rank == 0)
    if rank == 0 and args.out:
        gd.save_adapters(args.out, model, trained)
        print(f"saved {args.out}")
    if distributed:
        # rank 0 may still be saving: tearing the group down under it aborts rank 0
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
