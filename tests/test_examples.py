"""The examples run end to end (the main one in its quick mode)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_quickstart():
    r = run("examples/quickstart.py")
    assert r.returncode == 0, r.stderr
    assert "output shape: (8, 4)" in r.stdout and "fix:" in r.stdout


def test_dora_finetune_quick(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    pytest.importorskip("tqdm")
    r = run("examples/dora_finetune.py", "--quick", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res["results"]) == {"full", "lora", "dora"}
    assert res["numpy_vs_torch_max_abs"] < 1e-4
    # adapters train a small fraction of the parameters, full fine-tuning all of them
    assert res["results"]["full"]["trainable_fraction"] == 1.0
    assert res["results"]["dora"]["trainable_fraction"] < 0.15
    # even the quick run learns the rotated task far above chance (10%)
    assert min(r["accuracy"] for r in res["results"].values()) > 0.3
    for name in ("summary.md", "model_dora.mmd", "loss_curves.png", "decomposition.png",
                 "dora_merged.gdsl"):
        assert (tmp_path / name).stat().st_size > 0


def test_llm_dora_quick(tmp_path):
    """examples/llm_dora.py in quick mode: PEFT reproduces the adapter, the merged model
    served by NumPy and by ONNX Runtime continues the prompt as PEFT does, fine-tuning
    lowers the domain loss."""
    pytest.importorskip("peft")
    r = run("examples/llm_dora.py", "--quick", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    # the run time is estimated at the start, then from the measured speed
    assert "quick mode: 30 pretraining steps, then 3 x 12 fine-tuning steps; expect about" \
        in r.stdout
    assert " s per step here: about " in r.stdout + r.stderr
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["peft"]["max_abs_logit_diff"] < 1e-4
    assert res["numpy_greedy"] == res["peft"]["peft_greedy"] != ""
    assert res["onnxruntime_greedy"] == res["peft"]["peft_greedy"]
    for method in ("full", "lora", "dora"):
        assert res["after"][method]["docstrings_val"] < res["before"]["docstrings_val"]
    assert res["trainable_fraction"]["dora"] < 0.25
    for name in ("llm_loss.png", "llm_decomposition.png", "dora_adapter/adapter_config.json",
                 "merged/config.json"):
        assert (tmp_path / name).stat().st_size > 0


def test_cnn_dora_quick(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    pytest.importorskip("tqdm")
    r = run("examples/cnn_dora.py", "--quick", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    # the merged model (plain convs + dense, no adapter left) served by NumPy equals torch
    assert res["numpy_vs_torch_max_abs"] < 1e-4
    assert "dora" not in res["merged_ops"] and res["merged_ops"]["conv"] == 3
    assert res["merged_numpy_rotated"] == pytest.approx(res["dora_rotated"], abs=0.01)
    # rotation breaks the pretrained net; DoRA recovers far above it with few parameters
    assert res["pretrained_upright"] > 0.8 and res["pretrained_rotated"] < 0.5
    assert res["dora_rotated"] > res["pretrained_rotated"] + 0.3
    assert res["trainable_fraction"] < 0.2
    for name in ("summary.md", "model_dora.mmd", "cnn_merged.gdsl"):
        assert (tmp_path / name).stat().st_size > 0


@pytest.mark.parametrize("name", ["quickstart", "dora_finetune", "cnn_dora", "llm_dora",
                                  "ddp_finetune", "fsdp_finetune"])
def test_help_states_run_time_and_quick_mode(name, monkeypatch, capsys):
    """Every example's --help prints its docstring with the measured run time and offers
    --quick; the distributed ones say what --out writes."""
    pytest.importorskip("torch")
    from launch import EXAMPLES, load_example

    monkeypatch.syspath_prepend(str(EXAMPLES))  # llm_dora imports from dora_finetune
    monkeypatch.setattr(sys, "argv", [f"{name}.py", "--help"])
    with pytest.raises(SystemExit) as e:
        load_example(name).main()  # quickstart, without a main, parses them on import
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "Run time" in out and "--quick" in out, out
    if name in ("ddp_finetune", "fsdp_finetune"):
        assert "--out PATH" in out and "rank 0 writes" in out
