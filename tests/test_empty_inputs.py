"""Empty batches and sequences: every op's sample at batch 0 on NumPy, torch and ONNX
Runtime gives the empty result of the same shape, or fails on all three (NumPy and
torch with a GraphDSLError); the transformer families at batch 0 and at sequence 0."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from helpers import flat  # noqa: E402
from op_cases import cases_for  # noqa: E402

import graphdsl as gd  # noqa: E402


def _outcomes(model, st, feed, opset=None):
    """``{backend: list of output shapes, or the exception}`` for numpy, torch, ORT."""
    arg = feed if len(feed) > 1 else next(iter(feed.values()))
    got = {}
    for backend in ("numpy", "torch", "onnxruntime"):
        try:
            if backend == "onnxruntime":
                opts = ort.SessionOptions()
                opts.log_severity_level = 4
                proto = gd.to_onnx(model, st, opset=opset)
                sess = ort.InferenceSession(proto.SerializeToString(), opts,
                                            providers=["CPUExecutionProvider"])
                out = sess.run(None, {i.name: feed[i.name].astype(np.float32)  # as exported
                                      if feed[i.name].dtype == np.float64 else feed[i.name]
                                      for i in sess.get_inputs()})
            else:
                out = flat(gd.predict(model, st, arg, backend=backend))
            got[backend] = [(y.shape, y.dtype.kind == "f") for y in out]
        except Exception as e:  # noqa: BLE001  (compared below)
            got[backend] = e
    return got


def _agree(got):
    shapes = [v for v in got.values() if not isinstance(v, Exception)]
    if len(shapes) == len(got):
        assert shapes[0] == shapes[1] == shapes[2], got
        return
    assert not shapes, f"some backends run, some fail: {got}"
    for backend in ("numpy", "torch"):
        assert isinstance(got[backend], gd.GraphDSLError), got


def _emptied(model, inputs, axis=0):
    """``inputs`` with size 0 on ``axis`` of every input that declares that axis None."""
    decl = gd.get_inputs(model)
    out = {}
    for k, v in inputs.items():
        if k in decl and len(decl[k]) > axis and decl[k][axis] is None:
            v = np.take(v, np.arange(0), axis=axis)
        out[k] = v
    return out


@pytest.mark.parametrize("case", cases_for("empty"))
def test_every_op_sample_at_batch_0(case):
    model, inputs, st = case.setup()
    _agree(_outcomes(model, st, _emptied(model, inputs)))


_ANY = (None, None, None, 4)
# (model, input shape): 0 positions on a spatial axis, 0 rows on a softmax axis
EDGE = {
    "group_norm_0_positions": (lambda: gd.group_norm(gd.input("x", _ANY), 2), (2, 0, 3, 4)),
    "group_norm_axis_1": (lambda: gd.group_norm(gd.input("x", (None, 4, None)), 2, axis=1),
                          (0, 4, 3)),
    "group_norm_dynamic": (lambda: gd.group_norm(gd.input("x", _ANY), 2), (0, 2, 3, 4)),
    "global_max_pool_0_positions": (lambda: gd.global_max_pool(gd.input("x", _ANY)),
                                    (2, 3, 0, 4)),
    "global_avg_pool_0_positions": (lambda: gd.global_avg_pool(gd.input("x", _ANY)),
                                    (2, 0, 3, 4)),
    "global_max_pool_batch_0": (lambda: gd.global_max_pool(gd.input("x", _ANY)), (0, 3, 2, 4)),
    "softmax_axis_0": (lambda: gd.softmax(gd.input("x", (None, 5)), axis=0), (0, 5)),
    "log_softmax_axis_0": (lambda: gd.log_softmax(gd.input("x", (None, 5)), axis=0), (0, 5)),
}


@pytest.mark.parametrize("case", sorted(EDGE))
def test_empty_axes_agree(case):
    build, shape = EDGE[case]
    model = build()
    st = gd.build(model)[0]()
    _agree(_outcomes(model, st, {"x": np.zeros(shape, np.float32)}))


def _tiny_lm(kind):
    import transformers
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1,
                                      n_head=2)
        ref = transformers.GPT2LMHeadModel(cfg)
    else:
        cfg = transformers.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
                                       num_hidden_layers=1, num_attention_heads=4,
                                       num_key_value_heads=2)
        ref = transformers.LlamaForCausalLM(cfg)
    return ref.eval()


# the default opset is 14 for attention (Reshape's allowzero): before 14 a computed size 0
# reads as "keep the input's size", and ONNX Runtime refused an empty sequence
@pytest.mark.parametrize("shape, opset", [((0, 5), None), ((2, 0), None), ((0, 0), None),
                                          ((2, 0), 20), ((0, 0), 20)])
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_causal_lm_with_an_empty_batch_or_sequence(kind, shape, opset):
    """A transformers model read with hf.from_transformers (its logits checked on real
    ids): the empty logits [*shape, vocab] on every backend. transformers itself fails
    on both (a reshape to [0, 5, -1, head_dim] cannot infer the -1)."""
    from graphdsl import hf
    ref = _tiny_lm(kind)
    model, st = hf.from_transformers(ref)
    ids = np.arange(10).reshape(2, 5) % 50
    with torch.no_grad():  # the model read is transformers' own
        want = ref(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(gd.predict(model, st, ids), want, rtol=1e-4, atol=1e-5)
    empty = [((*shape, 50), True)]
    got = _outcomes(model, st, {"input_ids": np.zeros(shape, np.int64)}, opset)
    assert got["numpy"] == got["torch"] == empty, got
    assert got["onnxruntime"] == empty, got
