"""Issue 21 point 8: the file functions analyze the graph once (``graph.analyze`` walks the
whole model; save and load used to run it twice, load_adapters four times)."""
from __future__ import annotations

import sys

import numpy as np
import pytest

import graphdsl as gd
import graphdsl.graph
from graphdsl import dora


@pytest.fixture
def analyses(monkeypatch):
    """A list that gets one entry per ``graph.analyze`` call, from any graphdsl module
    (each imports the function under its own name)."""
    real, calls = graphdsl.graph.analyze, []

    def counting(model):
        calls.append(model)
        return real(model)

    for name, mod in list(sys.modules.items()):
        if name.startswith("graphdsl") and getattr(mod, "analyze", None) is real:
            monkeypatch.setattr(mod, "analyze", counting)
    return calls


@pytest.fixture
def models():
    x = gd.input("x", (None, 6))
    base = gd.dense(gd.dense(x, 8, activation="relu", name="attn_q"), 3, name="out")
    adapted = dora.adapt(base, targets=r"attn_.*", rank=2)
    batch = {"x": np.zeros((1, 6), np.float32)}
    state = gd.build(base, seed=0)[0](batch)
    return base, state, adapted, gd.build(adapted, seed=0)[0](batch, state)


def test_save_and_load_analyze_once(models, analyses, tmp_path):
    base, state, _, _ = models
    path = gd.save(tmp_path / "m.gdsl", base, state)
    assert len(analyses) == 1
    analyses.clear()
    gd.load(path)
    assert len(analyses) == 1


def test_to_json_and_from_json_analyze_once(models, analyses):
    text = gd.to_json(models[0])
    assert len(analyses) == 1
    analyses.clear()
    gd.from_json(text)
    assert len(analyses) == 1


def test_adapter_files_analyze_once_in_io(models, analyses, tmp_path):
    """graphdsl.io analyzes once; ``adapter_state`` (save) and ``attach_adapters`` with
    the plan it builds (load) analyze the model again on their own (graphdsl.adapters)."""
    _, state, adapted, adapted_state = models
    path = gd.save_adapters(tmp_path / "a.gdsl", adapted, adapted_state)
    assert len(analyses) <= 2
    analyses.clear()
    gd.load_adapters(path, adapted, state)
    assert len(analyses) <= 3
