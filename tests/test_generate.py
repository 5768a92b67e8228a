"""gd.generate and the key/value-cache decoder: greedy tokens equal transformers' generate
(LLaMA, Mistral with a sliding window, Qwen2, GPT-2; NumPy and torch; a left-padded batch;
eos/pad), the cached step equals the full forward, adapted == merged, sampling filters and
seeds, stream, and the argument errors."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import TINY_VOCAB, tiny_causal_lms

import graphdsl as gd
from graphdsl import dora, lora
from graphdsl.generate import decoder, optimum_name

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = TINY_VOCAB
PROMPT = np.array([[0, 0, 3, 7, 1, 9], [5, 5, 8, 2, 6, 1]])
MASK = np.array([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{kind: (transformers model, graphdsl model, state)} on the user's path:
    save_pretrained, then hf.from_pretrained."""
    return tiny_causal_lms(tmp_path_factory, ("llama", "mistral", "qwen2", "gpt2"))


def _hf_generate(ref, ids, mask, n, **kw):
    with torch.no_grad():
        return ref.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                            max_new_tokens=n, do_sample=False, **kw).numpy()


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2", "gpt2"])
def test_greedy_equals_transformers(models, kind, backend):
    ref, model, state = models[kind]
    one = PROMPT[1:]
    want = _hf_generate(ref, one, np.ones_like(one), 10)
    np.testing.assert_array_equal(gd.generate(model, state, one, 10, backend=backend), want)
    want = _hf_generate(ref, PROMPT, MASK, 10)
    got = gd.generate(model, state, PROMPT, 10, attention_mask=MASK, backend=backend)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)
    # eos: the first row's 3rd new token ends it; it continues with the pad id
    eos = int(want[0, PROMPT.shape[1] + 2])
    want = _hf_generate(ref, PROMPT, MASK, 10, eos_token_id=eos, pad_token_id=VOCAB - 1)
    got = gd.generate(model, state, PROMPT, 10, attention_mask=MASK, eos_token_id=[eos],
                      pad_token_id=VOCAB - 1, backend=backend)
    np.testing.assert_array_equal(got, want)
    assert (got[0, PROMPT.shape[1] + 3:] == VOCAB - 1).all()


def test_mistral_window_is_honoured(models):
    """The window changes the continuation (so the parity above covers it)."""
    ref, model, state = models["mistral"]
    full = gd.models.llama({**ref.config.to_dict(), "sliding_window": None})
    a = gd.generate(model, state, PROMPT[1:], 10)
    b = gd.generate(full, state, PROMPT[1:], 10)
    assert (a != b).any()


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_step_logits_equal_full_forward(models, kind):
    _, model, state = models[kind]
    dec = decoder(model)
    names = gd.get_inputs(dec)
    assert "past_key_values_1_value" in names
    assert optimum_name("past_key_values_1_value") == "past_key_values.1.value"
    _, run = gd.build(dec)
    seq = np.array([[4, 9, 2, 2, 7, 1, 3]])
    past = {k: np.zeros((1, s[1], 0, s[3]), np.float32) for k, s in names.items()
            if k.startswith("past")}
    feed = {"input_ids": seq[:, :5], "attention_mask": np.ones((1, 5), np.int64),
            "position_ids": np.arange(5)[None], **past}
    out = run(state, feed)
    assert out["present.0.key"].shape[2] == 5
    for t in (5, 6):
        feed = {"input_ids": seq[:, t:t + 1], "attention_mask": np.ones((1, t + 1), np.int64),
                "position_ids": np.array([[t]]),
                **{k: out[f"present.{k.split('_')[3]}.{k.split('_')[4]}"] for k in past}}
        out = run(state, feed)
        full = gd.predict(model, state, {"input_ids": seq[:, :t + 1]})
        np.testing.assert_allclose(out["logits"][:, -1], full[:, -1], atol=1e-5)


@pytest.mark.parametrize("method", [dora, lora])
def test_adapted_unmerged_equals_merged(models, method):
    _, model, state = models["llama"]
    adapted = method.adapt(model, targets=["q_proj", "v_proj"], rank=2)
    tuned = gd.build(adapted, seed=3)[0](None, state)
    rng = np.random.default_rng(0)
    for layer, values in tuned.data.items():
        for k, v in values.items():
            if layer not in state.data or k not in state.data[layer]:
                values[k] = (v + rng.normal(0, 0.3, v.shape)).astype(v.dtype)
    merged, merged_state = gd.merge_adapters(adapted, tuned)
    a = gd.generate(adapted, tuned, PROMPT, 8, attention_mask=MASK)
    np.testing.assert_array_equal(a, gd.generate(merged, merged_state, PROMPT, 8,
                                                 attention_mask=MASK))
    np.testing.assert_array_equal(a, gd.generate(adapted, tuned, PROMPT, 8,
                                                 attention_mask=MASK, backend="torch"))
    assert (a != gd.generate(model, state, PROMPT, 8, attention_mask=MASK)).any()


def _step_logits(model, state, ids):
    """The full forward's logits that chose each generated token."""
    return gd.predict(model, state, {"input_ids": ids})[:, PROMPT.shape[1] - 1:-1]


def test_sampling_filters_and_seeds(models):
    _, model, state = models["llama"]
    one = PROMPT[1:]
    got = gd.generate(model, state, one, 12, do_sample=True, top_k=3, seed=0)
    logits = _step_logits(model, state, got)
    top3 = np.argsort(logits, axis=-1)[..., -3:]
    assert all(got[0, 6 + t] in top3[0, t] for t in range(12))
    got = gd.generate(model, state, one, 12, do_sample=True, top_p=0.5, seed=0,
                      temperature=0.7)
    probs = np.exp(_step_logits(model, state, got) / 0.7)
    probs /= probs.sum(-1, keepdims=True)
    for t in range(12):  # the chosen token lies in the smallest set reaching 0.5
        p = probs[0, t]
        assert p[p > p[got[0, 6 + t]]].sum() < 0.5 + 1e-6
    a = gd.generate(model, state, PROMPT, 12, attention_mask=MASK, do_sample=True, seed=5)
    np.testing.assert_array_equal(a, gd.generate(model, state, PROMPT, 12,
                                                 attention_mask=MASK, do_sample=True, seed=5))
    assert (a != gd.generate(model, state, PROMPT, 12, attention_mask=MASK, do_sample=True,
                             seed=6)).any()


def test_stream_gets_each_step(models):
    _, model, state = models["gpt2"]
    seen = []
    got = gd.generate(model, state, PROMPT, 5, attention_mask=MASK, stream=seen.append)
    assert len(seen) == 5 and all(s.shape == (2,) for s in seen)
    np.testing.assert_array_equal(np.stack(seen, 1), got[:, PROMPT.shape[1]:])


@pytest.mark.parametrize("kw, arg", [
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"), ({"do_sample": True, "temperature": 0}, "temperature"),
    ({"input_ids": [[1, VOCAB]]}, "input_ids"), ({"input_ids": np.ones((1, 33), int)},
                                                   "input_ids"),
    ({"max_new_tokens": 30}, "max_new_tokens"),  # past GPT-2's 32 learned positions
    ({"attention_mask": np.ones((1, 5), int)}, "attention_mask")])
def test_errors_name_the_argument(models, kw, arg):
    _, model, state = models["gpt2"]
    args = {"input_ids": PROMPT[1:], "max_new_tokens": 3, **kw}
    with pytest.raises(gd.GraphDSLError, match=arg):
        gd.generate(model, state, args.pop("input_ids"), args.pop("max_new_tokens"), **args)


def test_encoder_is_refused():
    bert = gd.models.bert({"model_type": "bert", "vocab_size": 11, "hidden_size": 8,
                           "num_hidden_layers": 1, "num_attention_heads": 2,
                           "intermediate_size": 8, "max_position_embeddings": 8})
    with pytest.raises(gd.GraphDSLError, match="model.*causal"):
        gd.generate(bert, None, [[1, 2]], 2)
