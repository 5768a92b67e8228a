"""graphdsl.models against transformers' own eager implementation, with random tiny
configs built offline and the weights copied across (Linear weight [out, in] = our kernel
transposed; GPT-2's Conv1D [in, out] as is)."""
from __future__ import annotations

import numpy as np
import pytest

import graphdsl as gd
from graphdsl import hf, lora, models

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _state_from_hf(model, hf, conv1d=False):
    """The ModelState of ``model`` filled from the HF module's state_dict (dropout RNG
    keys, in no checkpoint, made by init)."""
    sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    g_params = gd.get_parameters(model)
    data = {}
    for layer, params in g_params.items():
        for p in params:
            if p == "key":
                continue
            node_is_dense = p == "kernel" and f"{layer}.weight" in sd and sd[
                f"{layer}.weight"].ndim == 2
            hf_name = {"kernel": "weight", "gamma": "weight", "beta": "bias"}.get(p, p)
            w = sd[f"{layer}.{hf_name}"]
            if node_is_dense and not conv1d and not layer.endswith(
                    ("embed_tokens", "wte", "wpe", "_embeddings")):
                w = w.T
            data.setdefault(layer, {})[p] = w
    return gd.build(model)[0](initial_state=gd.ModelState(data))


def _randomize(hf, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in hf.parameters():  # non-trivial norms and biases too
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.ndim == 1 else 0.0))


def _compare(model, st, hf, feed, key):
    with torch.no_grad():
        ref = getattr(hf(**{k: torch.from_numpy(v) for k, v in feed.items()}), key).numpy()
    np.testing.assert_allclose(gd.predict(model, st, feed), ref, rtol=1e-4, atol=1e-4)
    module = gd.to_torch(model, st).eval()
    with torch.no_grad():
        got = module(**{k: torch.from_numpy(v) for k, v in feed.items()})
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-4, atol=1e-4)


IDS = np.array([[3, 7, 1, 9, 4, 2], [5, 5, 8, 0, 6, 1]])
PAD = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])


@pytest.mark.parametrize("kind,extra", [
    ("llama", {"num_key_value_heads": 2, "tie_word_embeddings": False}),
    ("llama", {"num_key_value_heads": 4, "tie_word_embeddings": True}),
    ("qwen2", {"num_key_value_heads": 2}),
    ("mistral", {"num_key_value_heads": 2, "sliding_window": 3}),
])
def test_llama_family_matches_transformers(kind, extra):
    cfg_cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
               "mistral": transformers.MistralConfig}[kind]
    lm_cls = {"llama": transformers.LlamaForCausalLM, "qwen2": transformers.Qwen2ForCausalLM,
              "mistral": transformers.MistralForCausalLM}[kind]
    cfg = cfg_cls(vocab_size=11, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                  num_attention_heads=4, rms_norm_eps=1e-5, attn_implementation="eager",
                  **extra)
    hf = lm_cls(cfg).eval()
    _randomize(hf)
    model = models.llama(cfg)
    st = _state_from_hf(model, hf)
    assert gd.display.ModelView(model).totals()["total"][0] == sum(
        p.numel() for p in hf.parameters())
    _compare(model, st, hf, {"input_ids": IDS}, "logits")
    _compare(model, st, hf, {"input_ids": IDS, "attention_mask": PAD}, "logits")


def test_gpt2_matches_transformers():
    cfg = transformers.GPT2Config(vocab_size=11, n_positions=8, n_embd=16, n_layer=2, n_head=4,
                                  attn_implementation="eager")
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    _randomize(hf)
    model = models.gpt2(cfg)
    st = _state_from_hf(model, hf, conv1d=True)
    _compare(model, st, hf, {"input_ids": IDS}, "logits")


def test_bert_matches_transformers_with_a_padding_mask():
    cfg = transformers.BertConfig(vocab_size=11, hidden_size=16, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=24,
                                  max_position_embeddings=8, attn_implementation="eager")
    hf = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    _randomize(hf)
    model = models.bert(cfg)
    st = _state_from_hf(model, hf)
    _compare(model, st, hf, {"input_ids": IDS, "attention_mask": PAD,
                             "token_type_ids": (IDS % 2)}, "last_hidden_state")


def test_unsupported_config_options_are_errors():
    with pytest.raises(gd.GraphDSLError, match="rope_type"):
        models.llama({"vocab_size": 5, "hidden_size": 8, "intermediate_size": 8,
                      "num_hidden_layers": 1, "num_attention_heads": 2,
                      "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}})
    with pytest.raises(gd.GraphDSLError, match="hidden_size"):
        models.llama({"vocab_size": 5, "hidden_size": "16"})
    with pytest.raises(gd.GraphDSLError, match="model_type"):
        models.llama({"model_type": "gemma"})


def _family(kind):
    """(graphdsl model, state, transformers model, output key) of a tiny random family."""
    if kind == "gpt2":
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=11, n_positions=8, n_embd=16, n_layer=2, n_head=4,
            attn_implementation="eager")).eval()
        model, key, conv1d = models.gpt2(hf.config), "logits", True
    elif kind == "bert":
        hf = transformers.BertModel(transformers.BertConfig(
            vocab_size=11, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=24, max_position_embeddings=8, attn_implementation="eager"),
            add_pooling_layer=False).eval()
        model, key, conv1d = models.bert(hf.config), "last_hidden_state", False
    else:
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=11, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, attn_implementation="eager")).eval()
        model, key, conv1d = models.llama(hf.config), "logits", False
    _randomize(hf)
    return model, _state_from_hf(model, hf, conv1d=conv1d), hf, key


@pytest.mark.parametrize("kind", ["llama", "gpt2", "bert"])
def test_masks_of_any_dtype_and_position_ids_of_one_row_as_transformers(kind):
    """transformers takes attention_mask as int, bool or float, and broadcasts
    position_ids [1, seq] over the batch; so does graphdsl, on NumPy and torch."""
    model, st, hf, key = _family(kind)
    feeds = [{"input_ids": IDS, "attention_mask": PAD.astype(bool)},
             {"input_ids": IDS, "attention_mask": PAD.astype(np.float32)},
             {"input_ids": IDS, "position_ids": np.arange(2, 8)[None]},
             {"input_ids": IDS, "attention_mask": PAD.astype(np.float64),
              "position_ids": np.arange(1, 7)[None]}]
    for feed in feeds:
        _compare(model, st, hf, feed, key)
        with torch.no_grad():
            ref = getattr(hf(**{k: torch.from_numpy(v) for k, v in feed.items()}), key)
        np.testing.assert_allclose(gd.predict(model, st, feed, backend="torch"), ref.numpy(),
                                   rtol=1e-4, atol=1e-4)
    with pytest.raises(gd.GraphDSLError, match="attention_mask.*fractions"):
        gd.predict(model, st, {"input_ids": IDS, "attention_mask": PAD * 0.5})
    with pytest.raises(gd.GraphDSLError, match=r"\(3, 6\) does not fit \(2, 6\)"):
        gd.predict(model, st, {"input_ids": IDS, "position_ids": np.zeros((3, 6), np.int64)})


def test_bert_pooler_matches_transformers():
    """A default BertModel (with its pooler: dense + tanh on the first token)."""
    cfg = transformers.BertConfig(vocab_size=11, hidden_size=16, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=24,
                                  max_position_embeddings=8, attn_implementation="eager")
    hf = transformers.BertModel(cfg).eval()
    _randomize(hf)
    model = models.bert(cfg, add_pooling_layer=True)
    st = _state_from_hf(model, hf)
    feed = {"input_ids": IDS, "attention_mask": PAD}
    with torch.no_grad():
        ref = hf(**{k: torch.from_numpy(v) for k, v in feed.items()})
    got = gd.predict(model, st, feed)
    for k in ("last_hidden_state", "pooler_output"):
        np.testing.assert_allclose(got[k], getattr(ref, k).numpy(), rtol=1e-4, atol=1e-4)


# -- dropout: where transformers applies it, only in train mode ---------------------------
DROPOUTS = {  # family: (transformers model, config with distinct rates, output key)
    "gpt2": (transformers.GPT2LMHeadModel, lambda: transformers.GPT2Config(
        vocab_size=11, n_positions=8, n_embd=16, n_layer=2, n_head=4, embd_pdrop=0.1,
        attn_pdrop=0.2, resid_pdrop=0.3, attn_implementation="eager"), "logits"),
    "bert": (lambda c: transformers.BertModel(c, add_pooling_layer=False),
             lambda: transformers.BertConfig(
                 vocab_size=11, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=24, max_position_embeddings=8, hidden_dropout_prob=0.15,
                 attention_probs_dropout_prob=0.25, attn_implementation="eager"),
             "last_hidden_state"),
    "llama": (transformers.LlamaForCausalLM, lambda: transformers.LlamaConfig(
        vocab_size=11, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, attention_dropout=0.3,
        attn_implementation="eager"), "logits"),
}
#: transformers' dropout on the attention probabilities, by module path suffix
_PROBS = (".attn.attn_dropout", ".attention.self.dropout")


def _dropout_family(kind):
    make, cfg, key = DROPOUTS[kind]
    hf_model = make(cfg())
    _randomize(hf_model)
    model, st = hf.from_transformers(hf_model)
    return hf_model, model, st, key


@pytest.mark.parametrize("kind", sorted(DROPOUTS))
def test_dropout_layers_are_where_transformers_applies_them(kind):
    """Each nn.Dropout of transformers (p > 0) is a gd.dropout of that name and rate on
    the output of the same module; attention-probability dropout (and LLaMA's
    attention_dropout, a float on self_attn) is the rate of that layer's gd.attention."""
    hf_model, model, _, _ = _dropout_family(kind)
    mods = dict(hf_model.named_modules())
    drops = {n: m.p for n, m in mods.items() if isinstance(m, torch.nn.Dropout) and m.p > 0}
    probs = [p for n, p in drops.items() if n.endswith(_PROBS)] + [
        m.attention_dropout for n, m in mods.items() if n.endswith(".self_attn")]
    g = gd.graph.analyze(model)
    order = g.order
    ours = {n.name: n.attrs["rate"] for n in order if n.op == "dropout"}
    assert ours == {n: p for n, p in drops.items() if not n.endswith(_PROBS)}
    assert [n.attrs.get("dropout", 0.0) for n in order if n.op == "attention"] == probs
    assert len(probs) == 2 and min(probs) > 0
    before = {"transformer.drop": "add", "resid_dropout": "attn.c_proj",
              "mlp.dropout": "mlp.c_proj", "embeddings.dropout": "embeddings.LayerNorm",
              "attention.output.dropout": "attention.output.dense",
              "output.dropout": "output.dense"}
    for n in order:
        if n.op == "dropout":  # what it drops: the module transformers' forward drops
            want = next(v for k, v in before.items() if n.name.endswith(k))
            src = g.name(n.inputs[0])
            assert src.startswith(want) or src.endswith(want), (n.name, src)


@pytest.mark.parametrize("kind", sorted(DROPOUTS))
def test_train_mode_drops_as_transformers_with_the_same_torch_seed(kind):
    """to_torch(...).train() draws its masks from torch's RNG in transformers' order and
    shapes, so with one seed it equals transformers' train-mode output; eval equals
    transformers' eval. NumPy's train mode: reproducible from the state's keys, not eval."""
    hf_model, model, st, key = _dropout_family(kind)
    feed = {"input_ids": IDS, "attention_mask": PAD}
    tfeed = {k: torch.from_numpy(v) for k, v in feed.items()}
    module = gd.to_torch(model, st)
    with torch.no_grad():
        ref_eval = getattr(hf_model.eval()(**tfeed), key).numpy()
        torch.manual_seed(5)
        ref = getattr(hf_model.train()(**tfeed), key).numpy()
        torch.manual_seed(5)
        got = module.train()(**tfeed).numpy()
        got_eval = module.eval()(**tfeed).numpy()
    assert np.abs(ref - ref_eval).max() > 1e-2  # dropout is really on in transformers
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_eval, ref_eval, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gd.predict(model, st, feed), ref_eval, rtol=1e-4, atol=1e-4)
    for backend in ("numpy", "torch"):
        train = gd.build(model, backend=backend, mode="train")[1]
        one, two = train(st, feed), train(st, feed)
        a, b = (np.asarray(x["prediction"]) for x in (one, two))
        np.testing.assert_array_equal(a, b)
        assert np.abs(a - ref_eval).max() > 1e-2
        new = one["state"].data
        assert all(int(new[lay]["key"]) != int(st.data[lay]["key"]) for lay in st.entries)
        assert np.abs(np.asarray(train(one["state"], feed)["prediction"]) - a).max() > 1e-3


def test_dropout_keys_stay_out_of_hugging_face_files(tmp_path):
    """from_transformers/from_pretrained make the RNG keys (in no checkpoint);
    save_pretrained and save_peft write none; the files load back in transformers."""
    peft = pytest.importorskip("peft")
    hf_model, model, st, _ = _dropout_family("gpt2")
    assert set(st.entries) == {"transformer.drop", "transformer.h.0.attn.resid_dropout",
                               "transformer.h.0.mlp.dropout", "transformer.h.1.attn."
                               "resid_dropout", "transformer.h.1.mlp.dropout",
                               "attention_0", "attention_1"}
    hf.save_pretrained(tmp_path / "base", model, st)
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "base").eval()
    model2, st2 = hf.from_pretrained(tmp_path / "base")
    assert st2.entries == st.entries
    with torch.no_grad():
        ref = back(torch.from_numpy(IDS)).logits.numpy()
    np.testing.assert_allclose(gd.predict(model2, st2, IDS), ref, rtol=1e-4, atol=1e-4)
    adapted = lora.adapt(model, targets=["c_attn"], rank=2)
    hf.save_peft(tmp_path / "adapter", adapted, gd.build(adapted)[0](None, st))
    import safetensors.numpy as stn
    saved = stn.load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert saved and all("lora_" in k for k in saved)
    peft.PeftModel.from_pretrained(back, tmp_path / "adapter")


def test_dropout_rates_of_a_config_are_checked_and_zero_adds_nothing():
    with pytest.raises(gd.GraphDSLError, match="'attn_pdrop' is 1.5, not a dropout rate"):
        models.gpt2(dict(vocab_size=11, n_positions=8, n_embd=16, n_layer=1, n_head=4,
                         attn_pdrop=1.5))
    cfg = dict(vocab_size=11, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
               num_attention_heads=4)
    order = gd.graph.analyze(models.llama(cfg)).order  # attention_dropout 0: no state
    assert not [n for n in order if n.op == "dropout" or n.params and n.op == "attention"]
    assert all("dropout" not in n.attrs for n in order if n.op == "attention")
    g2 = gd.graph.analyze(models.gpt2(dict(vocab_size=11, n_positions=8, n_embd=16, n_layer=1,
                                           n_head=4, embd_pdrop=0.0, attn_pdrop=0.0,
                                           resid_pdrop=0.0)))
    assert not [n for n in g2.order if n.op == "dropout" or n.params and n.op == "attention"]


# -- each family's record of its Hugging Face conventions (graphdsl.models.FAMILIES) ------
TINY = {"llama": dict(vocab_size=11, hidden_size=16, intermediate_size=24,
                      num_hidden_layers=3, num_attention_heads=4),
        "gpt2": dict(vocab_size=11, n_positions=8, n_embd=16, n_layer=3, n_head=4),
        "bert": dict(vocab_size=11, hidden_size=16, num_hidden_layers=3,
                     num_attention_heads=4, intermediate_size=24, max_position_embeddings=8)}


@pytest.mark.parametrize("f", models.FAMILIES, ids=lambda f: f.name)
def test_a_family_record_is_complete_and_true_to_its_constructor_and_transformers(f):
    import re

    from graphdsl.hf import checkpoint, peft_config

    assert getattr(models, f.name) is f.build and f.name in f.model_types
    assert f.task in peft_config.TASKS
    for kind, arch in f.model_types.items():  # hf's architecture lookup finds the record
        assert checkpoint.architecture({"architectures": [arch]}) == arch
        assert checkpoint.architecture({"model_type": kind}) == arch
        assert checkpoint.family(arch) is f and kind in f.defaults
        cls = getattr(transformers, arch)
        assert cls.config_class.model_type == kind
        assert cls.base_model_prefix + "." == f.base_model_prefix
    for base, arch in f.base_models.items():
        assert checkpoint.architecture({"architectures": [base]}) == arch
        assert getattr(transformers, base).base_model_prefix + "." == f.base_model_prefix

    cfg = TINY[f.name]
    g = gd.graph.analyze(f.build(cfg, **{flag: True for flag in f.options.values()}))
    keys = {k for k, _ in checkpoint.key_map(g, f).values()}
    assert g.params[(f.embedding, "kernel")].shape == tuple(cfg[x] for x in f.embedding_fields)
    blocks = {k[len(f.blocks):].split(".")[0] for k in keys if k.startswith(f.blocks)}
    assert blocks == {str(i) for i in range(cfg[f.block_count])}
    assert set(f.options) <= keys  # each optional part is a weight of the model built with it
    assert not [k for k in keys for p in f.ignored if re.search(p, k)]  # no weight ignored

    arch = next(iter(f.model_types.values()))  # transformers' model: the same names
    ref = getattr(transformers, arch)(getattr(transformers, arch).config_class(**cfg))
    sd, head = set(ref.state_dict()), f"{f.head}.weight"
    assert keys - {head} == {k for k in sd if not any(re.search(p, k) for p in f.ignored)
                             } - {head} and (head in sd) == bool(f.head)
    assert all(k.startswith(f.base_model_prefix) for k in sd - {head}) == f.prefixed
    assert any(type(m).__name__ == "Conv1D" for m in ref.modules()) == f.conv1d


def test_hf_activation_names_match_transformers():
    """Every Hugging Face ``hidden_act`` name the config reader accepts computes what
    transformers' ``ACT2FN`` computes for it."""
    from transformers.activations import ACT2FN

    from graphdsl.models.config import ACTIVATIONS

    x = np.linspace(-8, 8, 101, dtype=np.float32).reshape(1, 101)
    inp = gd.input("x", (None, 101))
    for hf_name, (op, opts) in ACTIVATIONS.items():
        y = gd.predict(gd.activation(inp, op, **opts), gd.ModelState({}), {"x": x})
        want = ACT2FN[hf_name](torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6, err_msg=hf_name)
