"""The config audit of docs/hf_configs.md, row by row, against transformers: each case
builds a tiny random transformers model from a config and compares its output with
graphdsl's NumPy backend, built from the full config and from a config.json that leaves
out every field at its class default (so graphdsl must know transformers' defaults); or
asserts the GraphDSLError naming the field; the dropout fields also in train mode
(TRAIN_CASES, one torch seed for both). The table itself is checked: every field of
each config class is in it, and every row names cases that exist here."""
from __future__ import annotations

import json
import pathlib
import re

import numpy as np
import pytest

import graphdsl as gd
from graphdsl import hf, models

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TABLE = pathlib.Path(__file__).parent.parent / "docs" / "hf_configs.md"
IDS = np.array([[3, 7, 1, 9, 4, 2, 8], [5, 5, 8, 0, 6, 1, 2]])
PAD = np.array([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]])
LLAMA = dict(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2)
FAMILIES = {  # family: (config class, model class, base config, graphdsl constructor)
    "llama": ("LlamaConfig", "LlamaForCausalLM", LLAMA, models.llama),
    "mistral": ("MistralConfig", "MistralForCausalLM", LLAMA, models.llama),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", LLAMA, models.llama),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel",
             dict(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=4), models.gpt2),
    "bert": ("BertConfig", "BertModel",
             dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=24, max_position_embeddings=16, type_vocab_size=3),
             lambda c: models.bert(c, add_pooling_layer=True)),
}
DROP = object()  # an override that removes a base field (it then takes the class default)
_BASE = dict(output_hidden_states=True, output_attentions=True, dtype="float32",
             chunk_size_feed_forward=7, is_encoder_decoder=True, problem_type="regression",
             id2label={0: "a", 1: "b", 2: "c"}, use_cache=False, initializer_range=0.5,
             pad_token_id=3, bos_token_id=4, eos_token_id=5, transformers_version="4.0.0",
             architectures=["Unknown"], _name_or_path="somewhere")
_LM = dict(_BASE, max_position_embeddings=4, attention_dropout=0.3)

# case id: (family, config overrides, None = equal to transformers, or the error's regex)
CASES = {
    **{f"{f}-base": (f, {}, None) for f in FAMILIES},
    "llama-no-effect": ("llama", dict(_LM, pretraining_tp=2, sliding_window=2,
                                      layer_types=["sliding_attention"] * 2), None),
    "mistral-no-effect": ("mistral", dict(_LM, layer_types=["full_attention"] * 2,
                                          sliding_window=2), None),
    "qwen2-no-effect": ("qwen2", dict(_LM, sliding_window=2), None),
    "gpt2-no-effect": ("gpt2", dict(_BASE, resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3,
                                    reorder_and_upcast_attn=True, summary_type="mean",
                                    summary_use_proj=False, summary_activation="tanh",
                                    summary_proj_to_labels=False, summary_first_dropout=0.3),
                       None),
    "bert-no-effect": ("bert", dict(_BASE, return_dict=False, hidden_dropout_prob=0.3,
                                    attention_probs_dropout_prob=0.3, classifier_dropout=0.3,
                                    tie_word_embeddings=False), None),
    "llama-head-dim": ("llama", {"head_dim": 8}, None),
    "mistral-head-dim": ("mistral", {"head_dim": 8}, None),
    "qwen2-head-dim": ("qwen2", {"head_dim": 8}, None),
    "llama-kv-default": ("llama", {"num_key_value_heads": DROP}, None),
    "mistral-kv-default": ("mistral", {"num_key_value_heads": DROP, "hidden_size": 32,
                                       "num_attention_heads": 16}, None),
    "llama-tied": ("llama", {"tie_word_embeddings": True}, None),
    "qwen2-tied": ("qwen2", {"tie_word_embeddings": True}, None),
    "llama-biases": ("llama", {"attention_bias": True, "mlp_bias": True}, None),
    "llama-act-eps-theta": ("llama", {"hidden_act": "gelu_pytorch_tanh", "rms_norm_eps": 0.1,
                                      "rope_parameters": {"rope_type": "default",
                                                          "rope_theta": 50.0}}, None),
    "mistral-window": ("mistral", {"sliding_window": 2}, None),
    "mistral-no-window": ("mistral", {"sliding_window": None}, None),
    "qwen2-max-window-layers": ("qwen2", {"use_sliding_window": True, "sliding_window": 2,
                                          "max_window_layers": 1}, None),
    "qwen2-layer-types": ("qwen2", {"use_sliding_window": True, "sliding_window": 2,
                                    "layer_types": ["sliding_attention", "full_attention"]},
                          None),
    "gpt2-sizes-act-eps": ("gpt2", {"n_inner": 20, "activation_function": "relu",
                                    "layer_norm_epsilon": 0.1}, None),
    "gpt2-unscaled": ("gpt2", {"scale_attn_weights": False}, None),
    "gpt2-inverse-layer-idx": ("gpt2", {"scale_attn_by_inverse_layer_idx": True,
                                        "reorder_and_upcast_attn": True}, None),
    "gpt2-untied": ("gpt2", {"tie_word_embeddings": False}, None),
    "bert-decoder": ("bert", {"is_decoder": True}, None),
    "bert-act-eps": ("bert", {"hidden_act": "relu", "layer_norm_eps": 0.1}, None),
    "llama-rope-type": ("llama", {"rope_parameters": {"rope_type": "linear", "factor": 2.0,
                                                      "rope_theta": 1e4}}, "rope_type"),
    "llama-unknown-act": ("llama", {"hidden_act": "quick_gelu"}, "hidden_act"),
    "qwen2-sliding-without-window": ("qwen2", {"layer_types": ["sliding_attention"] * 2},
                                     "layer_types"),
    "gpt2-cross-attention": ("gpt2", {"add_cross_attention": True}, "add_cross_attention"),
    "bert-cross-attention": ("bert", {"add_cross_attention": True, "is_decoder": True},
                             "add_cross_attention"),
    "bert-relative-positions": ("bert", {"position_embedding_type": "relative_key"},
                                "position_embedding_type"),
    # damaged config.json values (built as a dict: transformers' classes refuse them too)
    "damaged-rope": ("llama", {"rope_parameters": [1]}, "'rope_parameters' is \\[1\\]"),
    "damaged-act": ("llama", {"hidden_act": ["silu"]}, "'hidden_act' is \\['silu'\\]"),
    "damaged-size": ("llama", {"num_hidden_layers": 0}, "'num_hidden_layers' is 0"),
    "damaged-flag": ("gpt2", {"scale_attn_weights": "yes"}, "'scale_attn_weights' is 'yes'"),
    "damaged-eps": ("bert", {"layer_norm_eps": "small"}, "'layer_norm_eps' is 'small'"),
    "damaged-window": ("qwen2", {"use_sliding_window": True, "sliding_window": -1},
                       "'sliding_window' is -1"),
    "damaged-layer-types": ("qwen2", {"layer_types": "full"},
                            "'layer_types' is 'full'"),
}

# case id: (family, dropout config overrides): train mode (to_torch, one torch seed) equals
# transformers' train mode, from the full and from the minimal config (class defaults)
TRAIN_CASES = {
    "llama-dropout": ("llama", {"attention_dropout": 0.3}),
    "mistral-dropout": ("mistral", {"attention_dropout": 0.3, "sliding_window": 3}),
    "qwen2-dropout": ("qwen2", {"attention_dropout": 0.3}),
    "gpt2-dropout-defaults": ("gpt2", {}),
    "gpt2-dropout": ("gpt2", {"embd_pdrop": 0.2, "attn_pdrop": 0.3, "resid_pdrop": 0.0}),
    "bert-dropout-defaults": ("bert", {}),
    "bert-dropout": ("bert", {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.3}),
}


def _config(family, overrides):
    cls_name, _, base, _ = FAMILIES[family]
    kw = {**base, **overrides}
    kw = {k: v for k, v in kw.items() if v is not DROP}
    return getattr(transformers, cls_name)(**kw, attn_implementation="eager")


def _minimal(cfg, family, overrides):
    """config.json as a hand-written file would be: only the fields off their class
    default (and layer_types only where the case sets it)."""
    full = cfg.to_dict()
    default = getattr(transformers, FAMILIES[family][0])().to_dict()
    out = {k: v for k, v in full.items() if k == "model_type" or default.get(k) != v}
    if "layer_types" not in overrides:
        out.pop("layer_types", None)
    return out


def _reference(m, family, seed=None):
    feed = {"input_ids": torch.from_numpy(IDS)}
    if family == "bert":
        feed.update(attention_mask=torch.from_numpy(PAD), token_type_ids=torch.from_numpy(
            IDS % 3))
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        out = m(**feed, return_dict=True)
    if family == "bert":
        return {"last_hidden_state": out.last_hidden_state.numpy(),
                "pooler_output": out.pooler_output.numpy()}
    return out.logits.numpy()


def _randomized(cfg, family):
    m = getattr(transformers, FAMILIES[family][1])(cfg).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():  # non-trivial norms and biases too
            p.copy_(torch.randn(p.shape) * 0.3 + (1.0 if p.ndim == 1 else 0.0))
    return m


@pytest.mark.parametrize("case", sorted(CASES))
def test_config_field_acts_as_in_transformers(case):
    family, overrides, error = CASES[case]
    make = FAMILIES[family][3]
    if error is not None:
        cfg = {"model_type": family, **FAMILIES[family][2], **overrides}
        with pytest.raises(gd.GraphDSLError, match=error):
            make(cfg)
        return
    cfg = _config(family, overrides)
    m = _randomized(cfg, family)
    ref = _reference(m, family)
    _, state = hf.from_transformers(m)
    feed = {"input_ids": IDS}
    if family == "bert":
        feed.update(attention_mask=PAD, token_type_ids=IDS % 3)
    for config in (cfg, _minimal(cfg, family, overrides)):
        got = gd.predict(make(config), state, feed)
        for key in (ref if isinstance(ref, dict) else [None]):
            np.testing.assert_allclose(got[key] if key else got, ref[key] if key else ref,
                                       rtol=1e-4, atol=1e-4, err_msg=f"{case} {key}")


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_dropout_field_acts_in_training_as_in_transformers(case):
    """The dropout fields act in train mode where and as transformers applies them: with
    one torch seed, graphdsl's torch module draws the same masks in the same order."""
    family, overrides = TRAIN_CASES[case]
    cfg = _config(family, overrides)
    m = _randomized(cfg, family).train()
    ref = _reference(m, family, seed=7)
    ref_eval = _reference(m.eval(), family)
    key = "last_hidden_state" if family == "bert" else None
    assert not np.allclose(ref[key] if key else ref, ref_eval[key] if key else ref_eval)
    _, state = hf.from_transformers(m)
    feed = {"input_ids": torch.from_numpy(IDS)}
    if family == "bert":
        feed.update(attention_mask=torch.from_numpy(PAD), token_type_ids=torch.from_numpy(
            IDS % 3))
    for config in (cfg, _minimal(cfg, family, overrides)):
        module = gd.to_torch(FAMILIES[family][3](config), state).train()
        torch.manual_seed(7)
        with torch.no_grad():
            got = module(**feed)
        for key in (ref if isinstance(ref, dict) else [None]):
            np.testing.assert_allclose((got[key] if key else got).numpy(),
                                       ref[key] if key else ref, rtol=1e-5, atol=1e-5,
                                       err_msg=f"{case} {key}")


def test_mistral_default_window_is_transformers_default():
    """MistralConfig's sliding_window default (4096) applies when config.json has none."""
    default = transformers.MistralConfig().sliding_window
    model = models.llama({"model_type": "mistral", **LLAMA})
    windows = {n.attrs["window"] for n in gd.graph.analyze(model).order if n.op == "attention"}
    assert default == 4096 and windows == {default}


def _rows():
    rows = []
    for line in TABLE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 4 and not set(cells[0]) <= set("-: "):
            rows.append(cells)
    return rows[1:]  # the header


def test_the_table_covers_every_field_and_each_row_is_tested():
    rows = _rows()
    covered: set[tuple[str, str]] = set()
    for field, families, status, tests in rows:
        assert status in ("honoured", "refused", "no effect on the math"), (field, status)
        names = re.findall(r"`([^`]+)`", tests)
        assert names and all(n in CASES or n in TRAIN_CASES or n == "test_mistral_default_"
                             "window_is_transformers_default" for n in names), (field, tests)
        fams = FAMILIES if families == "all" else [f.strip() for f in families.split(",")]
        for fam in fams:
            assert fam in FAMILIES, (field, fam)
            covered |= {(fam, f) for f in re.findall(r"`([^`]+)`", field)}
    for fam, (cls_name, *_rest) in FAMILIES.items():
        fields = set(getattr(transformers, cls_name)().to_dict())
        missing = sorted(f for f in fields if (fam, f) not in covered)
        assert not missing, f"{cls_name} fields not in docs/hf_configs.md: {missing}"
    used = {n for *_x, tests in rows for n in re.findall(r"`([^`]+)`", tests)}
    unused = sorted((set(CASES) | set(TRAIN_CASES)) - used)
    assert not unused, f"cases no row names: {unused}"


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_a_damaged_config_json_is_refused_naming_its_field(family, tmp_path):
    """hf.from_pretrained of a folder whose config.json holds a value of the wrong type."""
    _randomized(_config(family, {}), family).save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    good = json.loads(path.read_text())
    act = "activation_function" if family == "gpt2" else "hidden_act"
    damaged = {act: ["gelu"], "vocab_size": "50",
               "is_decoder" if family == "bert" else "tie_word_embeddings": "yes"}
    if family == "llama":
        damaged["rope_parameters"] = [1]
    for field, value in damaged.items():
        path.write_text(json.dumps({**good, field: value}))
        with pytest.raises(gd.GraphDSLError, match=f"config.json field '{field}' is "
                                                   f"{re.escape(repr(value))}") as e:
            hf.from_pretrained(str(tmp_path))
        assert e.value.fix
