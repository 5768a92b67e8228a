"""FSDP2 (``fully_shard``) on ``gd.to_torch`` modules: the blocks of a model (submodules
that group layers, e.g. ``model.layers.N``) run as calls of those submodules, so per-block
sharding gathers each block's parameters when it runs. Two gloo processes
(examples/fsdp_finetune.py under torchrun) train a DoRA-adapted LLaMA to the same
adapters as full-batch training in one process."""
from __future__ import annotations

import numpy as np
import pytest
from launch import load_example, logged_losses, needs_gloo, teardown_order, torchrun_example

import graphdsl as gd
from graphdsl import hf, models

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

STEPS, LR = 6, 0.5


@needs_gloo
def test_two_process_fsdp_per_block_matches_full_batch(tmp_path, capsys):
    """The same adapters, and the same logged loss: rank 0 prints the next-token loss
    all-reduced over the whole batch, what one process on the full batch prints."""
    out = tmp_path / "adapters.gdsl"
    proc = torchrun_example("fsdp_finetune", "--steps", str(STEPS), "--lr", str(LR),
                            "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es) on cpu" in proc.stdout
    for rank in (0, 1):  # really sharded: each rank holds half of every parameter
        assert f"rank {rank} holds 12256 of 24512 parameter values" in proc.stdout
    assert "returned a view tensor" not in proc.stderr

    ex = load_example("fsdp_finetune")
    model = ex.make_model()
    state = ex.initial_state(model)
    got = gd.load_adapters(out, model, state)
    capsys.readouterr()
    ref = ex.train(model, state, ex.make_data(), STEPS, LR, log=True)  # one process
    got_loss, want_loss = logged_losses(proc.stdout), logged_losses(capsys.readouterr().out)
    assert set(got_loss) == set(want_loss) == {0, STEPS - 1}
    # printed to 6 decimals (losses ~4): 1e-6 of rounding; sharded float32 sums differ
    # by ~1e-6 (the parameters agree to 1e-5 below)
    for step, want in want_loss.items():
        assert got_loss[step] == pytest.approx(want, abs=1e-5), step
    with torch.no_grad():  # the check can fail: rank 0's shard alone has another loss
        ids = torch.from_numpy(ex.make_data()[:ex.N // 2])
        shard0 = ex.next_token_loss(gd.to_torch(model, state)(ids), ids).item()
    assert abs(shard0 - want_loss[0]) > 1e-3
    trainable = ref.trainable_parameters()
    assert len(trainable) == 6  # q_proj, v_proj, down_proj adapters of both blocks
    for layer, ps in trainable.items():
        assert set(ps) == {"A", "B", "magnitude"}
        for p, v in ps.items():
            np.testing.assert_allclose(got.data[layer][p], v, rtol=1e-5, atol=1e-5,
                                       err_msg=f"{layer}.{p}")
            assert np.abs(v - state.data[layer][p]).max() > 1e-3, f"{layer}.{p} did not train"


def _llama_module(tie: bool = True):
    cfg = {"vocab_size": 11, "hidden_size": 16, "intermediate_size": 24,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "tie_word_embeddings": tie}
    model = models.llama(cfg)
    state = gd.build(model, seed=1)[0]({"input_ids": np.zeros((1, 4), np.int64)})
    return cfg, model, state, gd.to_torch(model, state)


def test_blocks_run_as_calls_with_the_values_transformers_computes():
    transformers = pytest.importorskip("transformers")
    hf_model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=11, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
        attn_implementation="eager")).eval()
    module = gd.to_torch(*hf.from_transformers(hf_model))
    seen = []
    for path in ("model", "model.layers.0", "model.layers.1", "model.layers.0.mlp"):
        module.get_submodule(path).register_forward_hook(
            lambda m, args, out, path=path: seen.append((path, out)))
    want_mlp = []
    hf_model.model.layers[0].mlp.register_forward_hook(lambda m, a, out: want_mlp.append(out))
    ids = torch.tensor([[3, 7, 1, 9, 4, 2], [5, 5, 8, 0, 6, 1]])
    logits = module(ids)
    assert [p for p, _ in seen] == ["model.layers.0.mlp", "model.layers.0", "model.layers.1",
                                    "model"]
    with torch.no_grad():
        want = hf_model(ids, output_hidden_states=True)
    # the model block returns the final normed hidden state (with tied embeddings it would
    # run lm_head too: that step reads model.embed_tokens), the mlp block its output
    torch.testing.assert_close(seen[-1][1], want.hidden_states[-1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(seen[0][1], want_mlp[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, want.logits, rtol=1e-4, atol=1e-5)


def test_interleaved_groups_are_no_blocks():
    """Groups whose steps interleave (a's span of steps holds b's layers and the other way
    round) cannot run as calls: both stay plain containers, a group after them is a block,
    and the values are unchanged."""
    x = gd.input("x", (None, 4))
    a1 = gd.dense(x, 4, name="a.first")
    b1 = gd.dense(x, 4, name="b.first")
    a2 = gd.dense(a1 + b1, 4, name="a.second")
    b2 = gd.dense(b1, 4, name="b.second")
    h = gd.dense(gd.dense(a2 * b2, 4, name="c.first"), 4, name="c.second")
    y = gd.dense(h, 2, name="head")
    state = gd.build(y, seed=0)[0]({"x": np.zeros((1, 4), np.float32)})
    module = gd.to_torch(y, state)
    xs = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    assert [type(module.get_submodule(p)).__name__ for p in "abc"] == [
        "Module", "Module", "GraphBlock"]
    np.testing.assert_allclose(module(torch.from_numpy(xs)).detach().numpy(),
                               gd.predict(y, state, xs), rtol=1e-5, atol=1e-6)


@pytest.fixture
def one_process_group():
    if dist.is_initialized():
        pytest.skip("a process group is already initialized")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@needs_gloo
def test_sharded_module_reads_back_through_a_full_state_dict(one_process_group):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    _, model, state, module = _llama_module(tie=False)
    ids = torch.tensor([[3, 7, 1, 9], [5, 5, 8, 0]])
    want = module(ids).detach()
    for i in range(2):
        fully_shard(module.get_submodule(f"model.layers.{i}"))
    fully_shard(module)
    torch.testing.assert_close(module(ids), want, rtol=1e-6, atol=1e-6)
    with pytest.raises(gd.GraphDSLError, match="(?s)is sharded.*get_model_state_dict"):
        gd.from_torch(module)
    full = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True))
    back = gd.from_torch(module, full)
    for layer, ps in state.data.items():
        for p, v in ps.items():
            np.testing.assert_array_equal(back.data[layer][p], v)
    assert back.frozen == state.frozen
    bad = dict(full)
    bad["lm_head.kernel"] = bad["lm_head.kernel"][:3]
    with pytest.raises(gd.GraphDSLError, match=r"lm_head.kernel'\] is shape \(3, 11\)"):
        gd.from_torch(module, bad)
    with pytest.raises(gd.GraphDSLError, match="keys the module does not: \\['extra'\\]"):
        gd.from_torch(module, {**full, "extra": torch.zeros(1)})


@needs_gloo
def test_sharding_a_submodule_the_forward_does_not_call_is_named(one_process_group):
    from torch.distributed.fsdp import fully_shard

    _, _, _, module = _llama_module(tie=False)
    fully_shard(module.get_submodule("model.layers.0.self_attn.q_proj"))  # one layer
    with pytest.raises(gd.GraphDSLError) as e:
        module(torch.tensor([[3, 7, 1, 9]]))
    msg = str(e.value)
    assert "'model.layers.0.self_attn.q_proj' still sharded" in msg
    assert "fully_shard to the module's blocks" in msg and "model.layers.0" in msg


@needs_gloo
def test_ranks_wait_for_each_other_before_the_group_is_destroyed(monkeypatch, tmp_path):
    """rank 0 gathers and saves last: a barrier comes before the group is destroyed."""
    calls = teardown_order("fsdp_finetune", monkeypatch, "--steps", "1", "--out",
                           str(tmp_path / "adapters.gdsl"))
    assert calls[-2:] == ["barrier", "destroy_process_group"]
