"""The ONNX decoder with a key/value cache (``gd.to_onnx(..., kv_cache=True)``) and
``gd.generate(..., backend="onnxruntime")``: optimum's input/output names and dynamic
axes, onnx.checker, an ONNX Runtime loop (prefill over a left-padded batch with an empty
past, then steps) equal to graphdsl's decoder steps on NumPy and to transformers' greedy
tokens (tiny LLaMA, Mistral with a sliding window and GPT-2 saved by transformers and
loaded by hf.from_pretrained); one export serves every step of generate."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from graphdsl.backends import onnxruntime_backend  # noqa: E402
from helpers import TINY_VOCAB, tiny_causal_lms  # noqa: E402

import graphdsl as gd  # noqa: E402
from graphdsl.generate import _STEPS, decoder  # noqa: E402

VOCAB, LAYERS, KV_HEADS = TINY_VOCAB, 2, 2  # as tiny_causal_lms builds them
PROMPT = np.array([[0, 0, 3, 7, 1, 9], [5, 5, 8, 2, 6, 1]])
MASK = np.array([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
TOTAL = "past_sequence_length + sequence_length"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{kind: (transformers model, graphdsl model, state)}: save_pretrained, then
    hf.from_pretrained, with weights large enough for decisive argmaxes. GPT-2 has no
    grouped heads: its heads are KV_HEADS."""
    return tiny_causal_lms(tmp_path_factory, ("llama", "mistral", "gpt2"), gpt2_heads=KV_HEADS)


def _hf_greedy(ref, ids, mask, n):
    with torch.no_grad():
        return ref.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                            max_new_tokens=n, do_sample=False).numpy()


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_names_axes_and_checker(models, kind, tmp_path):
    _, model, state = models[kind]
    path = tmp_path / "decoder.onnx"
    gd.to_onnx(model, state, path, kv_cache=True)
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    cache = [f"past_key_values.{i}.{k}" for i in range(LAYERS) for k in ("key", "value")]
    ins = {v.name: _dims(v) for v in proto.graph.input}
    outs = {v.name: _dims(v) for v in proto.graph.output}
    assert list(ins) == ["input_ids", "attention_mask", "position_ids", *cache]  # optimum's
    assert sorted(outs) == sorted(["logits", *[c.replace("past_key_values", "present")
                                                for c in cache]])
    assert ins["input_ids"] == ins["position_ids"] == ["batch_size", "sequence_length"]
    assert ins["attention_mask"] == ["batch_size", TOTAL]
    head_dim = {"llama": 16 // 4, "gpt2": 16 // KV_HEADS}[kind]
    assert ins["past_key_values.1.value"] == ["batch_size", KV_HEADS,
                                              "past_sequence_length", head_dim]
    assert outs["logits"] == ["batch_size", "sequence_length", VOCAB]
    assert outs["present.0.key"] == ["batch_size", KV_HEADS, TOTAL, head_dim]


@pytest.mark.parametrize("kind", ["llama", "mistral", "gpt2"])
def test_ort_loop_equals_numpy_steps_and_transformers(models, kind, tmp_path):
    ref, model, state = models[kind]
    path = tmp_path / "decoder.onnx"
    gd.to_onnx(model, state, path, kv_cache=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    dec = decoder(model)
    _, run = gd.build(dec)
    head_dim = gd.get_inputs(dec)["past_key_values_0_key"][3]
    b, n = PROMPT.shape[0], 5
    ort_feed = {f"past_key_values.{i}.{k}": np.zeros((b, KV_HEADS, 0, head_dim), np.float32)
                for i in range(LAYERS) for k in ("key", "value")}
    np_feed = {k.replace(".", "_"): v for k, v in ort_feed.items()}
    tokens, mask = PROMPT, MASK
    pos = np.where(MASK == 0, 0, np.cumsum(MASK, axis=-1) - 1)
    out_ids = [PROMPT]
    for step in range(n):
        step_in = {"input_ids": tokens, "attention_mask": mask, "position_ids": pos}
        got = dict(zip(names, sess.run(None, {**ort_feed, **step_in})))
        want = run(state, {**np_feed, **step_in})
        assert sorted(got) == sorted(want)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], atol=1e-5, rtol=1e-5, err_msg=k)
        assert got["present.0.key"].shape[2] == PROMPT.shape[1] + step
        new = got["logits"][:, -1].argmax(-1)[:, None]
        out_ids.append(new)
        for i in range(LAYERS):
            for k in ("key", "value"):
                ort_feed[f"past_key_values.{i}.{k}"] = got[f"present.{i}.{k}"]
                np_feed[f"past_key_values_{i}_{k}"] = want[f"present.{i}.{k}"]
        tokens, pos = new, pos[:, -1:] + 1
        mask = np.concatenate([mask, np.ones((b, 1), mask.dtype)], axis=1)
    np.testing.assert_array_equal(np.concatenate(out_ids, 1), _hf_greedy(ref, PROMPT, MASK, n))


def test_kv_cache_needs_a_causal_model():
    bert = gd.models.bert({"model_type": "bert", "vocab_size": 11, "hidden_size": 8,
                           "num_hidden_layers": 1, "num_attention_heads": 2,
                           "intermediate_size": 8, "max_position_embeddings": 8})
    state = gd.build(bert, seed=0)[0](None, None)
    gd.to_onnx(bert, state)  # a plain export of the same model works
    with pytest.raises(gd.GraphDSLError, match="causal"):
        gd.to_onnx(bert, state, kv_cache=True)
    with pytest.raises(gd.GraphDSLError, match="kv_cache"):
        gd.to_onnx(bert, state, kv_cache="yes")


@pytest.mark.parametrize("kind", ["llama", "mistral", "gpt2"])
def test_generate_on_onnxruntime(models, kind, monkeypatch):
    ref, model, state = models[kind]
    exports = []
    real = onnxruntime_backend.export_plan
    monkeypatch.setattr(onnxruntime_backend, "export_plan",
                        lambda *a: exports.append(1) or real(*a))
    _STEPS.clear()  # build afresh: count this test's exports
    one = PROMPT[1:]
    got = gd.generate(model, state, one, 10, backend="onnxruntime")
    np.testing.assert_array_equal(got, _hf_greedy(ref, one, np.ones_like(one), 10))
    got = gd.generate(model, state, PROMPT, 10, attention_mask=MASK, backend="onnxruntime")
    np.testing.assert_array_equal(got, _hf_greedy(ref, PROMPT, MASK, 10))
    assert len(exports) == 1  # one export (dynamic axes) serves every step and batch
