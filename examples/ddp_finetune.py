"""Fine-tune a DoRA-adapted MLP with torch DistributedDataParallel.

A small "pretrained" MLP gets DoRA adapters on both dense layers (base weights frozen);
each process trains on its shard of the batch and DDP averages the gradients, so the
result equals full-batch training in one process. CPU + gloo by default, one GPU per
process + nccl when CUDA is available.

    torchrun --nproc_per_node=2 examples/ddp_finetune.py [--steps 30] [--out adapters.npz]
    python examples/ddp_finetune.py            # the same training, one process, no DDP
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import graphdsl as gd
from graphdsl import dora

IN, HIDDEN, OUT, N = 16, 32, 4, 64


def make_model() -> gd.Node:
    """MLP 16 -> 32 (relu) -> 4 with DoRA (rank 4) on both layers."""
    x = gd.input("x", (None, IN))
    h = gd.dense(x, HIDDEN, activation="relu", name="fc1")
    y = gd.dense(h, OUT, name="out")
    return dora.adapt(y, ["fc1", "out"], rank=4, alpha=8.0)


def make_data(n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (n, 16) and targets (n, 4) from a fixed random teacher."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, IN)).astype(np.float32)
    teacher = rng.standard_normal((IN, OUT)).astype(np.float32) / np.sqrt(IN)
    return x, np.tanh(x @ teacher).astype(np.float32)


def initial_state(model: gd.Node, seed: int = 0) -> gd.ModelState:
    """The same weights on every rank: graphdsl initializes from the seed in NumPy."""
    return gd.build(model, seed=seed)[0]({"x": np.zeros((1, IN), np.float32)})


def train(model: gd.Node, state: gd.ModelState, x: np.ndarray, t: np.ndarray, steps: int,
          lr: float, device: str = "cpu", ddp: bool = False, log: bool = False
          ) -> gd.ModelState:
    """``steps`` SGD steps of mean-squared error on (x, t); returns the trained state.
    With ``ddp=True`` the module is wrapped in DistributedDataParallel (process group
    already initialized) and (x, t) is this rank's shard."""
    module = gd.to_torch(model, state, device=device)
    net = DistributedDataParallel(module, device_ids=[device] if device != "cpu" else None
                                  ) if ddp else module
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr)
    xb, tb = torch.from_numpy(x).to(device), torch.from_numpy(t).to(device)
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(net(xb), tb)
        loss.backward()
        opt.step()
        if log and (step % 10 == 0 or step == steps - 1):
            print(f"step {step:3d}  loss {loss.item():.5f}", flush=True)
    return gd.from_torch(module)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--out", default=None, help="save the trained state (npz) from rank 0")
    args = ap.parse_args(argv)

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
    x, t = make_data()
    if N % world:
        raise SystemExit(f"the batch of {N} does not split evenly over {world} processes")
    shard = slice(rank * N // world, (rank + 1) * N // world)
    if rank == 0:
        print(f"{world} process(es) on {device}; trainable "
              f"{state.trainable_parameter_count()} of {state.parameter_count()} parameters")
    trained = train(model, state, x[shard], t[shard], args.steps, args.lr, device,
                    ddp=distributed, log=rank == 0)
    if rank == 0 and args.out:
        np.savez(args.out, **{f"{layer}.{p}": v for layer, ps in trained.data.items()
                              for p, v in ps.items()})
        print(f"saved {args.out}")
    if distributed:
        # rank 0 may still be saving: tearing the group down under it aborts rank 0
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
