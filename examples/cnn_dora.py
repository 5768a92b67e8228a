"""A small CNN with batch norm on scikit-learn's 8x8 digits (no download): pretrained on
upright digits, DoRA-fine-tuned to the digits rotated by 90 degrees, merged, and served by
the NumPy backend.

    python examples/cnn_dora.py [--out examples/out_cnn] [--quick] [--threads N]

1. Pretrain conv-bn-conv-bn-pool-conv-gap-dense in PyTorch (``gd.to_torch``; batch
   norm's running statistics are module buffers that ``train()`` updates).
2. Shift the task (rotated digits): accuracy of the pretrained net drops.
3. ``dora.adapt`` the three convs and the head (rank 4): only A, B and the magnitudes
   train; fine-tune in PyTorch.
4. ``gd.merge_adapters`` folds the adapters into plain conv / dense layers; the NumPy
   backend serves the merged model and agrees with torch.
Writes the summary table (``summary.md``), the graph (``model_dora.svg`` when Graphviz
is installed, ``model_dora.mmd`` always), ``results.json`` and ``cnn_merged.gdsl``.

Run time on the 2-core development machine, one torch thread: about 11 s (30 + 30
epochs; measured at load average 2.7 and at 5); ``--quick`` (4 + 4 epochs, the test
suite's run) about 7 s, most of it importing torch.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from tqdm import tqdm

import graphdsl as gd
from graphdsl import dora

TARGETS = ["c1", "c2", "c3", "head"]


def make_model() -> gd.Node:
    x = gd.input("image", (None, 8, 8, 1))
    h = gd.conv(x, 16, 3, padding="same", activation="relu", name="c1")
    h = gd.batch_norm(h, name="bn1")
    h = gd.conv(h, 32, 3, padding="same", activation="relu", name="c2")
    h = gd.batch_norm(h, name="bn2")
    h = gd.max_pool(h, 2, name="pool")  # 8x8 -> 4x4
    h = gd.conv(h, 32, 3, padding="same", activation="relu", name="c3")
    return gd.dense(gd.global_avg_pool(h, name="gap"), 10, name="head")


def load_data(seed: int = 0) -> dict:
    digits = load_digits()
    X = (digits.images / 16.0).astype(np.float32)[..., None]  # (1797, 8, 8, 1)
    y = digits.target.astype(np.int64)
    idx = np.random.default_rng(seed).permutation(len(y))
    tr, te = idx[:int(0.7 * len(y))], idx[int(0.7 * len(y)):]
    rot = np.ascontiguousarray(np.rot90(X, k=1, axes=(1, 2)))
    return {"upright": (X[tr], y[tr], X[te], y[te]), "rotated": (rot[tr], y[tr], rot[te], y[te])}


def train(module: torch.nn.Module, X: np.ndarray, y: np.ndarray, epochs: int, lr: float,
          desc: str, seed: int = 0) -> float:
    """Adam on the module's trainable parameters; returns the last epoch's mean loss."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=lr)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    module.train()
    bar = tqdm(range(epochs), desc=desc, unit="epoch")
    for _ in bar:
        losses = []
        for batch in torch.randperm(len(yt), generator=gen).split(64):
            loss = F.cross_entropy(module(Xt[batch]), yt[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses):.3f}")
    module.eval()
    return float(np.mean(losses))


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((np.asarray(logits).argmax(-1) == y).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out_cnn"),
                    metavar="DIR", help="folder for summary.md, model_dora.mmd (.svg with "
                    "Graphviz), results.json, cnn_merged.gdsl (default: examples/out_cnn)")
    ap.add_argument("--quick", action="store_true", help="few epochs (the test suite)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on 8x8 images a second thread gained "
                         "nothing on 2 cores, and lost 2x while other jobs ran)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    pre_epochs, ft_epochs = (4, 4) if args.quick else (30, 30)
    data = load_data()

    model = make_model()
    state = gd.build(model, seed=0)[0]({"image": (1, 8, 8, 1)})
    Xu, yu, Xu_te, yu_te = data["upright"]
    module = gd.to_torch(model, state)
    train(module, Xu, yu, pre_epochs, 3e-3, "pretrain (upright)")
    pretrained = gd.from_torch(module)  # batch norm's running mean/var come back too
    acc_up = accuracy(gd.predict(model, pretrained, Xu_te), yu_te)
    Xr, yr, Xr_te, yr_te = data["rotated"]
    acc_rot0 = accuracy(gd.predict(model, pretrained, Xr_te), yr_te)

    adapted = dora.adapt(model, TARGETS, rank=4, alpha=8.0)
    st = gd.build(adapted, seed=1)[0]({"image": (1, 8, 8, 1)}, pretrained)
    mod = gd.to_torch(adapted, st)
    train(mod, Xr, yr, ft_epochs, 5e-3, "DoRA fine-tune (rotated)", seed=1)
    tuned = gd.from_torch(mod)
    with torch.no_grad():
        torch_logits = mod(torch.from_numpy(Xr_te)).numpy()
    merged, merged_state = gd.merge_adapters(adapted, tuned)
    np_logits = gd.predict(merged, merged_state, Xr_te)  # served by NumPy, adapters folded
    gd.save(os.path.join(args.out, "cnn_merged.gdsl"), merged, merged_state)

    n_train = sum(a.size for v in tuned.trainable_parameters().values() for a in v.values())
    n_all = sum(a.size for v in tuned.data.values() for a in v.values())
    res = {"pretrained_upright": acc_up, "pretrained_rotated": acc_rot0,
           "dora_rotated": accuracy(torch_logits, yr_te),
           "merged_numpy_rotated": accuracy(np_logits, yr_te),
           "numpy_vs_torch_max_abs": float(np.abs(np_logits - torch_logits).max()),
           "trainable": int(n_train), "trainable_fraction": n_train / n_all,
           "merged_ops": gd.get_op_counts(merged)}
    table = gd.display.as_table(adapted, {"image": (64, 8, 8, 1)})
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write("# DoRA on a CNN: upright -> rotated digits\n\n| model | accuracy |\n|---|---|\n"
                f"| pretrained, upright | {acc_up:.1%} |\n"
                f"| pretrained, rotated | {acc_rot0:.1%} |\n"
                f"| DoRA-tuned, rotated ({n_train:,} trainable, "
                f"{n_train / n_all:.1%}) | {res['dora_rotated']:.1%} |\n"
                f"| merged, NumPy, rotated | {res['merged_numpy_rotated']:.1%} |\n\n"
                "```\n" + table + "\n```\n")
    with open(os.path.join(args.out, "model_dora.mmd"), "w") as f:
        f.write(gd.display.as_graph(adapted))
    if shutil.which("dot"):
        gd.display.render(adapted, os.path.join(args.out, "model_dora.svg"))
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(res, f, indent=2)
    print(table)
    print(f"pretrained: upright {acc_up:.1%}, rotated {acc_rot0:.1%}; DoRA on rotated "
          f"{res['dora_rotated']:.1%} training {n_train:,} of {n_all:,} values "
          f"({n_train / n_all:.1%}); merged + NumPy {res['merged_numpy_rotated']:.1%} "
          f"(max |numpy - torch| = {res['numpy_vs_torch_max_abs']:.2e})")
    print(f"wrote {args.out} ({time.perf_counter() - t_start:.0f} s in all)")


if __name__ == "__main__":
    main()
