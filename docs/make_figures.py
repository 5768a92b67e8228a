"""Regenerate every figure in docs/ with one command:

    python docs/make_figures.py [--seeds 10]

- ``mlp.svg`` and ``dora_adapted.svg``: graphs drawn by ``gd.display.render`` (needs
  Graphviz's ``dot``: ``apt-get install graphviz`` / ``brew install graphviz``).
- ``architecture.svg``: the module map of the architecture page, from
  ``architecture.dot`` (Graphviz's ``dot``).
- ``decomposition.png``: the weight-decomposition plot of the main example, from a run of
  ``examples/dora_finetune.py --seeds 10`` (the run the README's table quotes; its
  report is printed, its outputs are left in a temporary folder whose name is printed).

Takes about 40 s on the 2-core development machine (lightly loaded), nearly all of it the
example's 10-seed run; needs the ``torch`` and ``examples`` extras (torch, scikit-learn,
matplotlib, tqdm).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import graphdsl as gd
from graphdsl import dora

HERE = Path(__file__).parent
EXAMPLES = HERE.parent / "examples"


def mlp() -> gd.Node:
    x = gd.input("x", (None, 784))
    h = gd.dense(x, 512, activation="relu", name="fc1")
    h = gd.dropout(h, 0.1)
    return gd.dense(h, 10, activation="softmax", name="out")


def dora_block() -> gd.Node:
    x = gd.input("x", (None, 64))
    q = gd.dense(x, 32, activation="relu", name="attn_q")
    v = gd.dense(x, 32, name="attn_v")
    h = gd.layer_norm(gd.add(q, v), name="ln")
    y = gd.dense(h, 8, name="head")
    return dora.adapt(y, targets=r"attn_.*", rank=4, alpha=8.0)


def decomposition_png(seeds: int) -> Path:
    """Run the main example and copy its decomposition plot here."""
    sys.path.insert(0, str(EXAMPLES))
    import dora_finetune

    out = Path(tempfile.mkdtemp(prefix="graphdsl_figures_"))
    dora_finetune.main(["--seeds", str(seeds), "--out", str(out)])
    return Path(shutil.copy(out / "decomposition.png", HERE / "decomposition.png"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10,
                    help="fine-tuning runs per method in the example (default 10, as the "
                    "README's table)")
    args = ap.parse_args(argv)
    if shutil.which("dot") is None:
        print("Graphviz's dot program is not installed; fix: apt-get install graphviz "
              "(or brew install graphviz), then rerun", file=sys.stderr)
        return 1
    print(gd.display.render(mlp(), HERE / "mlp.svg"))
    print(gd.display.render(dora_block(), HERE / "dora_adapted.svg"))
    subprocess.run(["dot", "-Tsvg", str(HERE / "architecture.dot"), "-o",
                    str(HERE / "architecture.svg")], check=True)
    print(HERE / "architecture.svg")
    print(decomposition_png(args.seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
