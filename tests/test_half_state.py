"""Half-precision state values (issue 24.1 and the NumPy part of 24.2): float16 and
bfloat16 (``ml_dtypes.bfloat16``) kept as stored by the state, init_fn, gd.save/gd.load,
hf.from_pretrained/save_pretrained and save_peft; the NumPy backend computes in float32.
References: torch's own rounding, transformers (bfloat16/float16 checkpoints it wrote, its
bf16 and fp32 forwards) and PEFT."""
from __future__ import annotations

import numpy as np
import pytest

import graphdsl as gd
from graphdsl import dora, hf
from graphdsl.errors import StateError

ml_dtypes = pytest.importorskip("ml_dtypes")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

BF16 = np.dtype(ml_dtypes.bfloat16)
IDS = np.array([[1, 5, 7, 9, 3, 0, 38, 12]])
HALVES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def _bits(t) -> np.ndarray:
    """The 16-bit patterns of a half tensor, through torch alone (the reference)."""
    return t.detach().contiguous().view(torch.int16).numpy()


def _np_bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.int16)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A tiny random LLaMA saved by transformers in bfloat16 and in float16:
    ``{dtype name: (transformers model in that dtype, folder)}``."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        attn_implementation="eager", bos_token_id=None, eos_token_id=None,
        pad_token_id=None)
    base = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # weights large enough that logits are not all near zero
        for p in base.parameters():
            p.mul_(3.0)
    out = {}
    for name, dt in HALVES.items():
        path = tmp_path_factory.mktemp(name)
        m = transformers.LlamaForCausalLM(cfg).eval()
        m.load_state_dict(base.state_dict())
        m.to(dt).save_pretrained(path)
        out[name] = (m, str(path))
    return out


def test_state_holds_half_values_and_astype_casts_floating_parameters_only():
    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4) + 1e-3
    key = np.array(7, np.uint64)
    st = gd.ModelState({"fc": {"kernel": x, "bias": np.ones(4, np.float16)},
                        "drop": {"key": key}}, frozen=[("fc", "bias")],
                       entries={"drop": ["key"]})
    assert st.data["fc"]["bias"].dtype == np.float16
    half = st.astype("bfloat16")
    k = half.data["fc"]["kernel"]
    assert k.dtype == BF16 and half.data["fc"]["bias"].dtype == BF16
    # torch's round-to-nearest-even is the reference for the cast
    np.testing.assert_array_equal(_np_bits(k), _bits(torch.from_numpy(x).to(torch.bfloat16)))
    assert half.data["drop"]["key"].dtype == np.uint64  # a state entry: untouched
    assert half.frozen == st.frozen and half.entries == st.entries
    assert st.data["fc"]["kernel"].dtype == np.float32  # a new state; the old one unchanged
    with pytest.raises(StateError):
        k[0, 0] = 1  # still immutable
    back = half.astype(torch.float32)  # a torch dtype names a dtype too
    np.testing.assert_array_equal(back.data["fc"]["kernel"],
                                  torch.from_numpy(x).to(torch.bfloat16).float().numpy())
    assert half.astype("bfloat16").data["fc"]["kernel"] is k  # nothing to cast: shared
    with pytest.raises(StateError, match="not a floating dtype"):
        st.astype("int32")


def test_init_fn_keeps_given_half_values_and_creates_missing_ones_in_float32():
    model = gd.dense(gd.input("x", (None, 3)), 4, name="fc")
    init, _ = gd.build(model)
    k = np.arange(12, dtype=np.float32).reshape(3, 4).astype(BF16)
    st = init(initial_state=gd.ModelState({"fc": {"kernel": k}}))
    assert st.data["fc"]["kernel"].dtype == BF16 and st.data["fc"]["bias"].dtype == np.float32
    np.testing.assert_array_equal(_np_bits(st.data["fc"]["kernel"]), _np_bits(k))
    bad = k.astype(np.float32)
    bad[0, 0] = np.inf
    with pytest.raises(StateError, match="NaN or infinity"):
        init(initial_state=gd.ModelState({"fc": {"kernel": bad.astype(BF16)}}))


def test_the_table_counts_bytes_by_itemsize():
    model = gd.dense(gd.input("x", (None, 3)), 4, name="fc")
    st = gd.build(model)[0]().astype("bfloat16")
    table = gd.display.as_table(model, state=st)
    assert "bf16[3][4]" in table
    assert "Total parameters:                 16  (32 bytes" in table  # 16 x 2 bytes


@pytest.mark.parametrize("name", sorted(HALVES))
def test_save_and_load_keep_half_values_bit_exact(name, tmp_path):
    model = gd.dense(gd.dense(gd.input("x", (None, 3)), 5, name="a"), 2, name="b")
    st = gd.build(model, seed=3)[0]().astype(name)
    path = tmp_path / "m.gdsl"
    gd.save(path, model, st)
    m2, st2 = gd.load(path)
    for layer, params in st.data.items():
        for q, v in params.items():
            assert st2.data[layer][q].dtype == v.dtype
            np.testing.assert_array_equal(_np_bits(st2.data[layer][q]), _np_bits(v))
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    np.testing.assert_array_equal(gd.predict(m2, st2, x), gd.predict(model, st, x))
    # what safetensors (the file's format) reads from the weights member is the same
    import zipfile

    from safetensors.torch import load
    with zipfile.ZipFile(path) as zf:
        t = load(zf.read("weights.safetensors"))
    assert t["a.kernel"].dtype == HALVES[name]
    np.testing.assert_array_equal(_bits(t["a.kernel"]), _np_bits(st.data["a"]["kernel"]))


@pytest.mark.parametrize("name", sorted(HALVES))
def test_from_pretrained_keeps_the_checkpoint_dtype_or_casts_on_request(name, llama):
    ref, path = llama[name]
    model, st = hf.from_pretrained(path)
    sd = ref.state_dict()
    q = st.data["model.layers.0.self_attn.q_proj"]["kernel"]
    assert q.dtype.name == name
    # a Linear's weight [out, in] is our kernel [in, out]: the same bits, transposed
    want = _bits(sd["model.layers.0.self_attn.q_proj.weight"].T)
    np.testing.assert_array_equal(_np_bits(q), want)
    assert {a.dtype.name for v in st.data.values() for a in v.values()} == {name}
    _, st32 = hf.from_pretrained(path, dtype="float32")  # widening is exact
    k32 = st32.data["model.layers.0.self_attn.q_proj"]["kernel"]
    np.testing.assert_array_equal(k32, sd["model.layers.0.self_attn.q_proj.weight"].T.float()
                                  .numpy())
    # sealed in one copy that keeps the weight's layout: the kernel is its transpose
    assert k32.flags.f_contiguous and not k32.flags.writeable
    other = "float16" if name == "bfloat16" else "bfloat16"
    _, st_o = hf.from_pretrained(path, dtype=other)
    np.testing.assert_array_equal(
        _np_bits(st_o.data["model.norm"]["gamma"]),
        _bits(sd["model.norm.weight"].to(HALVES[other])))
    with pytest.raises(gd.GraphDSLError, match="not a floating dtype"):
        hf.from_pretrained(path, dtype="int8")


@pytest.mark.parametrize("name", sorted(HALVES))
def test_numpy_logits_of_a_half_llama_match_transformers(name, llama):
    """NumPy computes in float32 from the half weights: against transformers' float32
    forward of the same (widened) weights the difference is float32 round-off (1e-5 of
    logits of size ~5); against transformers' own half-precision forward, which rounds
    every intermediate to 8 (bfloat16) or 11 (float16) bits, the bound is that
    precision's: a few bf16 ulps of the logit scale."""
    ref, path = llama[name]
    model, st = hf.from_pretrained(path)
    ours = gd.predict(model, st, {"input_ids": IDS})
    assert ours.dtype == np.float32
    with torch.no_grad():
        half = ref(torch.tensor(IDS)).logits.float().numpy()
        f32 = transformers.LlamaForCausalLM(ref.config).eval()
        f32.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
        full = f32(torch.tensor(IDS)).logits.numpy()
    scale = float(np.abs(full).max())
    assert scale > 1.0
    np.testing.assert_allclose(ours, full, rtol=1e-5, atol=1e-5 * scale)
    tol = {"bfloat16": 4e-2, "float16": 5e-3}[name] * scale
    np.testing.assert_allclose(ours, half, atol=tol, rtol=0)
    assert np.abs(ours - half).max() > 0  # the half forward does round


@pytest.mark.parametrize("name", sorted(HALVES))
def test_save_pretrained_writes_what_the_state_holds(name, llama, tmp_path):
    ref, path = llama[name]
    model, st = hf.from_pretrained(path)
    hf.save_pretrained(str(tmp_path), model, st)
    back = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path), dtype=HALVES[name])
    got, want = back.state_dict(), ref.state_dict()
    for k, v in want.items():
        assert got[k].dtype == HALVES[name], k
        assert torch.equal(got[k].view(torch.int16), v.view(torch.int16)), k


def test_save_peft_over_a_bfloat16_base_loads_in_peft(llama, tmp_path):
    """Adapters over a bfloat16 base are created in float32 (PEFT's
    autocast_adapter_dtype); save_peft writes them as held and PEFT loads them exactly."""
    import peft

    _, path = llama["bfloat16"]
    model, st = hf.from_pretrained(path)
    adapted = dora.adapt(model, ["q_proj", "v_proj"], rank=2, alpha=4.0)
    st = gd.build(adapted, seed=1)[0](initial_state=st)
    a = "model.layers.0.self_attn.q_proj_dora"
    assert st.data[a]["A"].dtype == np.float32 and st.data[a]["magnitude"].dtype == np.float32
    data = {k: dict(v) for k, v in st.data.items()}
    rng = np.random.default_rng(0)
    for layer in data:
        if layer.endswith("_dora"):
            data[layer]["B"] = rng.normal(size=data[layer]["B"].shape).astype(np.float32)
    st = gd.ModelState(data, st.frozen, st.entries)
    hf.save_peft(str(tmp_path), adapted, st)
    base = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    pm = peft.PeftModel.from_pretrained(base, str(tmp_path), autocast_adapter_dtype=True)
    lin = pm.base_model.model.model.layers[0].self_attn.q_proj
    assert lin.lora_B["default"].weight.dtype == torch.float32
    np.testing.assert_array_equal(lin.lora_B["default"].weight.detach().numpy(),
                                  st.data[a]["B"].T)
    np.testing.assert_array_equal(
        lin.lora_magnitude_vector["default"].weight.detach().numpy(), st.data[a]["magnitude"])
    assert lin.base_layer.weight.dtype == torch.bfloat16
    # and the same outputs: PEFT runs the bf16 base in bfloat16, so the bound is bf16's
    with torch.no_grad():
        ref_out = pm.eval()(torch.tensor(IDS)).logits.float().numpy()
    ours = gd.predict(adapted, st, {"input_ids": IDS})
    scale = float(np.abs(ref_out).max())
    np.testing.assert_allclose(ours, ref_out, rtol=0, atol=4e-2 * scale)


@pytest.mark.parametrize("target", ["q_proj", "embed_tokens"])
def test_numpy_dora_inference_over_a_half_base_keeps_no_merged_kernel(target, llama):
    """Over a half base, inference runs DoRA unmerged in float32 from the stored weights
    and caches only the norm ratio m/c (a vector), not a merged copy of each kernel: the
    output is the float32 computation's (from the widened state, merged there) within
    float32 round-off."""
    import graphdsl.backends.numpy_backend.adapters as na

    _, path = llama["bfloat16"]
    model, st = hf.from_pretrained(path)
    adapted = dora.adapt(model, [target], rank=2, alpha=4.0)
    st = gd.build(adapted, seed=1)[0](initial_state=st)
    data = {k: dict(v) for k, v in st.data.items()}
    for layer in data:
        if layer.endswith("_dora"):
            data[layer]["B"] = np.full(data[layer]["B"].shape, 0.3, np.float32)
    st = gd.ModelState(data, st.frozen, st.entries)
    run = gd.build(adapted)[1]
    full = run(st.astype("float32"), {"input_ids": IDS})
    made = []
    real = na.cached_merge

    def spy(ctx, sources, make, slot="merged"):
        return real(ctx, sources, lambda: made.append((slot, make())) or made[-1][1], slot)

    na.cached_merge = spy
    try:
        run2 = gd.build(adapted)[1]
        ours = run2(st, {"input_ids": IDS})
        again = run2(st, {"input_ids": IDS})  # cached on the stored values: no recompute
    finally:
        na.cached_merge = real
    scale = float(np.abs(full).max())
    np.testing.assert_allclose(ours, full, rtol=0, atol=1e-5 * scale)
    np.testing.assert_array_equal(ours, again)
    n = 2 if target == "q_proj" else 1  # adapted layers
    assert sorted(s for s, _ in made) == ["kk"] * n + ["ratio"] * n
    # what is kept: m/c, one value per output unit (hidden 16), not a [16, out] kernel
    assert all(v[0].shape == (16,) for s, v in made if s == "ratio")


def test_a_large_half_kernel_is_upcast_in_column_blocks(monkeypatch):
    """A dense layer over a half kernel upcasts it a block of columns at a time (no
    float32 copy of a vocabulary-sized head at once); the result is the float32 product
    of the widened kernel exactly (each output column is the same dot product)."""
    import graphdsl.backends.numpy_backend.half as half

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 16)).astype(np.float32)
    k = rng.normal(size=(16, 50)).astype(BF16)
    model = gd.dense(gd.input("x", (None, 3, 16)), 50, name="fc")
    st = gd.ModelState({"fc": {"kernel": k, "bias": np.ones(50, BF16)}})
    want = gd.predict(model, st.astype("float32"), x)
    blocks = []
    real = np.matmul

    def spy(a, b, out):
        blocks.append(b.shape)
        return real(a, b, out=out)

    monkeypatch.setattr(half, "BLOCK", 16 * 7)  # 7 columns a block
    monkeypatch.setattr(half.np, "matmul", spy)  # only the blocked path calls it by name
    out = gd.predict(model, st, x)
    assert blocks == [(16, 7)] * 7 + [(16, 1)]
    assert out.dtype == np.float32
    # float32 round-off only: BLAS may sum a block's columns in another order
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-6 * np.abs(want).max())


def test_half_attribute_arrays_and_constants_round_trip():
    c = np.array([[1.5, 0.1, -3.0]], BF16)
    from graphdsl.io import decode_value, encode_value
    back = decode_value(encode_value(c, "attr"), "attr")
    assert back.dtype == BF16 and np.array_equal(_np_bits(back), _np_bits(c))
    model = gd.add(gd.input("x", (None, 3)), gd.constant(c[0], name="c"))
    y = gd.predict(gd.from_json(gd.to_json(model)), gd.ModelState(), np.zeros((1, 3),
                                                                             np.float32))
    np.testing.assert_array_equal(y, c.astype(np.float32))  # computed in float32


@pytest.mark.parametrize("mod", ["dora", "lora"])
def test_adapters_over_a_half_base_train_and_merge(mod, llama):
    """Training mode computes the unmerged adapter in float32 from the half base: the
    same as from the widened base (float32 round-off); merging keeps the base's dtype
    (PEFT's merge into a bf16 model), within bfloat16 rounding of the merged kernel."""
    from graphdsl import lora
    _, path = llama["bfloat16"]
    model, st = hf.from_pretrained(path)
    make = dora if mod == "dora" else lora
    adapted = make.adapt(model, ["q_proj", "down_proj"], rank=2, alpha=4.0)
    st = gd.build(adapted, seed=1)[0](initial_state=st)
    data = {k: dict(v) for k, v in st.data.items()}
    for layer in data:
        if layer.endswith(f"_{mod}"):
            data[layer]["B"] = np.full(data[layer]["B"].shape, 0.2, np.float32)
    st = gd.ModelState(data, st.frozen, st.entries)
    train = gd.build(adapted, mode="train")[1]
    got = train(st, {"input_ids": IDS})["prediction"]
    got2 = train(st, {"input_ids": IDS})["prediction"]  # cached norms on the stored K
    want = train(st.astype("float32"), {"input_ids": IDS})["prediction"]
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale)
    np.testing.assert_array_equal(got, got2)
    merged, mst = gd.merge_adapters(adapted, st)
    k = mst.data["model.layers.0.self_attn.q_proj"]["kernel"]
    assert k.dtype == BF16
    _, m32 = gd.merge_adapters(adapted, st.astype("float32"))
    np.testing.assert_array_equal(  # the float32 merge rounded once to bfloat16
        _np_bits(k), _np_bits(m32.data["model.layers.0.self_attn.q_proj"]["kernel"]
                               .astype(BF16)))
    y = gd.predict(merged, mst, {"input_ids": IDS})
    np.testing.assert_allclose(y, want, rtol=0, atol=2e-2 * scale)


def test_from_transformers_keeps_a_bfloat16_models_dtype(llama):
    ref, _ = llama["bfloat16"]
    _, st = hf.from_transformers(ref)
    k = st.data["model.layers.1.mlp.down_proj"]["kernel"]
    assert k.dtype == BF16
    np.testing.assert_array_equal(_np_bits(k),
                                  _bits(ref.state_dict()["model.layers.1.mlp.down_proj.weight"].T))


def test_without_ml_dtypes_a_bfloat16_checkpoint_needs_dtype_float32(llama):
    """bfloat16 values need ml_dtypes; widening on read (dtype="float32") does not."""
    import subprocess
    import sys
    _, path = llama["bfloat16"]
    code = ("import sys; sys.modules['ml_dtypes'] = None\n"
            "import numpy as np\nfrom graphdsl import hf, GraphDSLError\n"
            f"_, st = hf.from_pretrained({path!r}, dtype='float32')\n"
            "assert st.data['model.norm']['gamma'].dtype == np.float32\n"
            "try:\n"
            f"    hf.from_pretrained({path!r})\n"
            "except GraphDSLError as e:\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ml_dtypes" in out.stdout and "graphdsl[half]" in out.stdout


def test_the_bfloat16_upcast_is_exact_for_every_bit_pattern():
    """The NumPy backend's bfloat16 -> float32 (a 16-bit shift) against torch's own
    conversion, on all 65536 patterns (NaNs compared by bits: payloads kept)."""
    from graphdsl.backends.numpy_backend.half import upcast
    bits = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
    ours = upcast(bits.view(BF16).reshape(256, 256).T, np.float32)
    want = torch.from_numpy(bits).view(torch.bfloat16).float().numpy().reshape(256, 256).T
    np.testing.assert_array_equal(ours.view(np.int32), want.view(np.int32))


def test_load_peft_over_a_bfloat16_base_keeps_saved_modules_in_the_base_dtype(llama,
                                                                               tmp_path):
    """PEFT over a bf16 base: adapters float32 (autocast_adapter_dtype), a module it
    trains whole (modules_to_save) stays bf16; load_peft gives the same dtypes and bits,
    and PEFT's outputs within bfloat16 tolerance."""
    import peft

    ref, path = llama["bfloat16"]
    base = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    pm = peft.get_peft_model(base, peft.LoraConfig(r=2, lora_alpha=4, target_modules=[
        "q_proj"], modules_to_save=["lm_head"]))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n or "modules_to_save" in n:
                p.copy_(torch.randn(p.shape, generator=g).to(p.dtype) * 0.5)
    pm.save_pretrained(str(tmp_path))
    head = pm.base_model.model.lm_head.modules_to_save["default"].weight
    assert head.dtype == torch.bfloat16
    model, st = hf.from_pretrained(path)
    adapted, st2 = hf.load_peft(str(tmp_path), model, st)
    k = st2.data["lm_head"]["kernel"]
    assert k.dtype == BF16
    np.testing.assert_array_equal(_np_bits(k), _bits(head.T))
    assert st2.data["model.layers.0.self_attn.q_proj_lora"]["B"].dtype == np.float32
    with torch.no_grad():
        want = pm.eval()(torch.tensor(IDS)).logits.float().numpy()
    ours = gd.predict(adapted, st2, {"input_ids": IDS})
    np.testing.assert_allclose(ours, want, rtol=0, atol=4e-2 * float(np.abs(want).max()))


def test_a_tied_bfloat16_gpt2_on_numpy_matches_the_float32_forward(tmp_path, monkeypatch):
    """GPT-2 ties its head to the embedding (tied_dense reads the table transposed) and
    uses Conv1D kernels as stored: both upcast in blocks (forced small here) give the
    float32 forward of the same weights within float32 round-off."""
    import graphdsl.backends.numpy_backend.half as half

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=2,
                                  n_head=4, bos_token_id=None, eos_token_id=None)
    ref = transformers.GPT2LMHeadModel(cfg).eval()
    ref.to(torch.bfloat16).save_pretrained(tmp_path)
    model, st = hf.from_pretrained(str(tmp_path))
    assert st.data["transformer.wte"]["kernel"].dtype == BF16
    monkeypatch.setattr(half, "BLOCK", 16 * 6)
    ours = gd.predict(model, st, {"input_ids": IDS})
    with torch.no_grad():
        want = ref.float()(torch.tensor(IDS)).logits.numpy()
    np.testing.assert_allclose(ours, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))
