"""What the test modules share (no test module imports another): inputs drawn from a
model's declared shapes, exact comparison of nested outputs, and the ONNX check (export,
full ``onnx.checker`` pass, ONNX Runtime against the NumPy backend)."""
from __future__ import annotations

from typing import Any

import numpy as np

import graphdsl as gd
from graphdsl.graph import analyze

TOL = {"rtol": 1e-5, "atol": 1e-5}


def random_inputs(model: gd.Node, rng: np.random.Generator, batch: int = 3
                  ) -> dict[str, np.ndarray]:
    """``{input name: array}`` of every declared input, ``None`` axes sized ``batch``:
    standard normal floats, integers in [0, 5), each in its declared dtype."""
    out = {}
    for name, shp in gd.get_inputs(model).items():
        concrete = tuple(batch if d is None else d for d in shp)
        node = next(n for n in analyze(model).input_nodes if n.name == name)
        if node.attrs["dtype"].startswith("int"):
            out[name] = rng.integers(0, 5, concrete).astype(node.attrs["dtype"])
        else:
            out[name] = rng.standard_normal(concrete).astype(node.attrs["dtype"])
    return out


def assert_same_outputs(a: Any, b: Any) -> None:
    """``a`` and ``b`` (arrays, or dicts/tuples of them) have the same structure and values."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same_outputs(a[k], b[k])
    elif isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_outputs(x, y)
    else:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def flat(out: Any) -> list[np.ndarray]:
    """The arrays of a (nested dict/tuple) output in order, torch tensors as NumPy."""
    if isinstance(out, dict):
        return [y for v in out.values() for y in flat(v)]
    if isinstance(out, tuple):
        return [y for v in out for y in flat(v)]
    return [out.detach().cpu().numpy() if hasattr(out, "detach") else np.asarray(out)]


def export_and_run(model: gd.Node, st: gd.ModelState, feed: dict[str, np.ndarray], **kw):
    """``(ONNX Runtime's outputs for feed, the proto)``, after a full checker pass; ``kw``
    goes to ``gd.to_onnx``."""
    import onnx
    import onnxruntime as ort

    proto = gd.to_onnx(model, st, **kw)
    onnx.checker.check_model(proto, full_check=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, {k: feed[k] for k in names}), proto


def check_onnx(model: gd.Node, st: gd.ModelState, feed: dict[str, np.ndarray],
               tol: dict[str, float] = TOL, **kw):
    """The exported model gives the NumPy backend's outputs for ``feed`` (same count,
    shapes, float-ness; values within ``tol``); returns the proto."""
    arg = feed if len(feed) > 1 else next(iter(feed.values()))
    ref = flat(gd.predict(model, st, arg))
    got, proto = export_and_run(model, st, feed, **kw)
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert g.shape == r.shape
        assert (g.dtype.kind == "f") == (r.dtype.kind == "f")
        np.testing.assert_allclose(g, r, **tol)
    return proto


TINY_VOCAB = 40


def tiny_causal_lms(tmp_path_factory: Any, kinds: tuple[str, ...], gpt2_heads: int = 4
                    ) -> dict[str, tuple]:
    """``{kind: (transformers model, graphdsl model, state)}`` for tiny random LLaMA,
    Mistral (``sliding_window=4``, exceeded by the tests' texts), Qwen2 and GPT-2
    (``gpt2_heads`` heads), each saved by transformers and read back by
    ``hf.from_pretrained`` (the user's path), with weights large enough for decisive
    argmaxes (the default init leaves near-ties)."""
    import torch
    import transformers

    from graphdsl import hf

    special = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}

    def make(kind: str):
        if kind == "gpt2":
            return transformers.GPT2LMHeadModel(transformers.GPT2Config(
                vocab_size=TINY_VOCAB, n_positions=32, n_embd=16, n_layer=2, n_head=gpt2_heads,
                attn_implementation="eager", **special))
        cls = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}[kind]
        extra = {"sliding_window": 4} if kind == "mistral" else {}
        cfg = getattr(transformers, f"{cls}Config")(
            vocab_size=TINY_VOCAB, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            attn_implementation="eager", **special, **extra)
        return getattr(transformers, f"{cls}ForCausalLM")(cfg)

    out = {}
    for kind in kinds:
        torch.manual_seed(0)
        ref = make(kind).eval()
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in ref.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if p.ndim == 1 else 0))
        path = tmp_path_factory.mktemp(kind)
        ref.save_pretrained(path)
        out[kind] = (ref, *hf.from_pretrained(path))
    return out
