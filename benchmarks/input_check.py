"""Input-shape checking of a decoding-style loop: a new sequence length at every call.

    python -m benchmarks.input_check [--quick]

A 2-layer LLaMA-style model (tiny config) sees ``input_ids`` of shape ``[1, s]`` (and, in
the second row, ``[2, s]`` with an ``attention_mask``) for ``s = 1..64``, each a signature
not seen before. ``ours``: graphdsl.signatures.SignatureChecker, as predict uses it (the
rules run once per pattern of sizes); ``reference``: graph.infer_shapes per signature
(every rule of the graph, what predict ran before issue 21).
"""
from __future__ import annotations

import sys

from benchmarks.harness import Row, interleaved, table
from graphdsl import graph, models
from graphdsl.signatures import SignatureChecker

CONFIG = dict(vocab_size=11, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2)


def _signatures(batch: int, mask: bool) -> list[tuple]:
    """One signature per sequence length, in the model's input order (ids, mask, pos)."""
    return [((batch, s), (batch, s) if mask else None, None) for s in range(1, 65)]


def run(quick: bool = False) -> list[Row]:
    g = graph.analyze(models.llama(CONFIG))
    names = [g.name(n) for n in g.input_nodes]
    rows = []
    for label, sigs in (("64 new seq lengths, batch 1", _signatures(1, False)),
                        ("64 new seq lengths, batch 2 + mask", _signatures(2, True))):
        def ours(sigs: list[tuple] = sigs) -> None:
            check = SignatureChecker(g)  # fresh: every signature is new to it
            for sig in sigs:
                check(sig)

        def full(sigs: list[tuple] = sigs) -> None:
            for sig in sigs:
                graph.infer_shapes(g, {k: s for k, s in zip(names, sig) if s is not None})

        t = interleaved({"ours": ours, "full": full}, repeat=5 if quick else 30)
        rows.append(Row(f"input check, llama 2 layers ({len(g.order)} nodes): {label}",
                        t["ours"], t["full"], "infer_shapes per signature", 0.5))
    return rows


if __name__ == "__main__":
    print(table(run("--quick" in sys.argv)))
