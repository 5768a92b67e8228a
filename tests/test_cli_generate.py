"""``graphdsl generate`` and hf.load_tokenizer: a tiny LLaMA checkpoint with a WordLevel
tokenizer.json prints the text of transformers' greedy generate; --ids on a .gdsl file;
--sample with --seed reproducible; incremental decoding of multi-byte characters; and each
bad argument is one error line naming it (exit status 1)."""
from __future__ import annotations

import sys

import numpy as np
import pytest

import graphdsl as gd
from graphdsl import hf
from graphdsl.cli import main
from graphdsl.cli_generate import _Printer
from graphdsl.errors import GraphDSLError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = ("the cat dog sat ran on a mat log and big small red blue house tree "
         "bird sun moon star fish").split()


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", *WORDS])},
                                     unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """(folder, transformers model, tokenizer): save_pretrained + tokenizer.json."""
    tok = _tokenizer()
    cfg = transformers.LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=16, intermediate_size=24,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=16, attn_implementation="eager", bos_token_id=None,
        eos_token_id=None, pad_token_id=None)
    torch.manual_seed(0)
    ref = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # larger weights than the default init: decisive argmaxes
        for p in ref.parameters():
            p.normal_(0, 0.5)
    folder = tmp_path_factory.mktemp("llama")
    ref.save_pretrained(folder)
    tok.save(str(folder / "tokenizer.json"))
    return folder, ref, tok


def _run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_load_tokenizer(ckpt):
    folder, _, tok = ckpt
    for path in (folder, folder / "tokenizer.json"):
        loaded = hf.load_tokenizer(path)
        assert loaded.encode("the cat sat").ids == tok.encode("the cat sat").ids == [1, 2, 4]
    with pytest.raises(GraphDSLError, match="no tokenizer file"):
        hf.load_tokenizer(folder / "missing.json")
    with pytest.raises(GraphDSLError, match="not a tokenizers file"):
        hf.load_tokenizer(folder / "config.json")


def test_load_tokenizer_without_the_package(ckpt, monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # import tokenizers fails
    with pytest.raises(GraphDSLError, match=r"(?s)needs the tokenizers package.*graphdsl\[hf\]"):
        hf.load_tokenizer(ckpt[0])


def test_prompt_matches_transformers_greedy(ckpt, capsys):
    folder, ref, tok = ckpt
    prompt = "the cat sat on"
    ids = tok.encode(prompt).ids
    with torch.no_grad():
        full = ref.generate(torch.tensor([ids]), max_new_tokens=5, do_sample=False)[0].tolist()
    code, out, err = _run(capsys, "generate", folder, "--prompt", prompt,
                          "--max-new-tokens", 5)
    assert (code, err) == (0, "")
    new = full[len(ids):]
    assert len(new) == 5
    assert out == tok.decode(full)[len(tok.decode(ids)):] + "\n"
    assert out.strip() == tok.decode(new)
    # the same on torch and in ONNX Runtime
    for backend in ("torch", "onnxruntime"):
        assert _run(capsys, "generate", folder, "--prompt", prompt, "--max-new-tokens", 5,
                    "--backend", backend)[1] == out


def test_ids_on_gdsl_file_and_sampling(ckpt, capsys, tmp_path):
    folder, ref, tok = ckpt
    model, state = hf.from_pretrained(folder)
    path = gd.save(tmp_path / "llama.gdsl", model, state)
    prompt = [3, 7, 1]
    with torch.no_grad():
        full = ref.generate(torch.tensor([prompt]), max_new_tokens=4, do_sample=False)
    code, out, _ = _run(capsys, "generate", path, "--ids", "3,7,1", "--max-new-tokens", 4)
    assert code == 0 and out == ",".join(map(str, full[0, 3:].tolist())) + "\n"
    # a .gdsl with --tokenizer prints text
    code, out2, _ = _run(capsys, "generate", path, "--prompt", "dog ran", "--tokenizer",
                         folder / "tokenizer.json", "--max-new-tokens", 3)
    assert code == 0 and len(out2.split()) == 3
    sample = ("generate", folder, "--ids", "3,7,1", "--max-new-tokens", 8, "--sample",
              "--temperature", 2.0, "--top-k", 10, "--top-p", 0.95)
    a = _run(capsys, *sample, "--seed", 1)[1]
    assert a == _run(capsys, *sample, "--seed", 1)[1]
    assert len(a.split(",")) == 8
    expected = gd.generate(model, state, np.array([prompt]), 8, do_sample=True,
                           temperature=2.0, top_k=10, top_p=0.95, seed=1)[0, 3:]
    assert a == ",".join(map(str, expected.tolist())) + "\n"
    others = {_run(capsys, *sample, "--seed", s)[1] for s in range(2, 6)}
    assert others - {a}  # another seed draws another continuation


def test_multibyte_characters_print_whole(capsys):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok = Tokenizer(models.BPE({c: i for i, c in enumerate(sorted(alphabet))}, []))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    ids = tok.encode("héllo ☃!").ids
    assert len(ids) == len("héllo ☃!".encode())  # one token per byte
    printer = _Printer(tok, ids[:1])
    seen = []
    for t in ids[1:]:
        printer(np.array([t]))
        seen.append(capsys.readouterr().out)
    assert "".join(seen) == "éllo ☃!"
    assert "\ufffd" not in "".join(seen) and "é" in seen  # printed once it was whole


def _error(capsys, *args):
    code, out, err = _run(capsys, "generate", *args)
    assert code == 1 and err.startswith("graphdsl: error:") and len(err.splitlines()) == 1
    return err


def test_errors(ckpt, capsys, tmp_path):
    folder, _, _ = ckpt
    model, state = hf.from_pretrained(folder)
    path = gd.save(tmp_path / "llama.gdsl", model, state)
    assert "--ids/--prompt (input_ids): token id 99 is outside the vocabulary" in \
        _error(capsys, folder, "--ids", "1,99")
    assert "longer than the model's 16 positions" in \
        _error(capsys, folder, "--ids", ",".join(["1"] * 17))
    assert "--max-new-tokens (max_new_tokens): must be an integer >= 1, got 0" in \
        _error(capsys, folder, "--ids", "1", "--max-new-tokens", 0)
    assert "--top-p (top_p): must be in (0, 1], got 1.5" in \
        _error(capsys, folder, "--ids", "1", "--sample", "--top-p", 1.5)
    assert "--top-p only apply with --sample" in _error(capsys, folder, "--ids", "1",
                                                        "--top-p", 0.5)
    for both_or_neither in (("--ids", "1", "--prompt", "the"), ()):
        assert "exactly one of --prompt TEXT and --ids" in \
            _error(capsys, folder, *both_or_neither)
    assert "--prompt needs a tokenizer" in _error(capsys, path, "--prompt", "the cat")
    assert "not a comma-separated list of integers" in _error(capsys, path, "--ids", "1,x")
    bert = gd.models.bert(transformers.BertConfig(
        vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=16))
    bert_path = gd.save(tmp_path / "bert.gdsl", bert, gd.build(bert, seed=0)[0]())
    assert "only causal language models generate" in _error(capsys, bert_path, "--ids", "1")


def test_eos_from_config_and_as_a_process(ckpt, tmp_path):
    """The checkpoint's eos_token_id ends generation (as transformers' generate); the
    command runs as ``python -m graphdsl``."""
    import json
    import os
    import shutil
    import subprocess

    folder, ref, _ = ckpt
    with torch.no_grad():
        full = ref.generate(torch.tensor([[3, 7, 1]]), max_new_tokens=6, do_sample=False)
    new = full[0, 3:].tolist()
    eos = new[2]
    stop = new.index(eos) + 1  # the first occurrence ends it, eos printed
    copy = tmp_path / "with_eos"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "eos_token_id": eos}))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "graphdsl", "generate", str(copy), "--ids",
                           "3,7,1", "--max-new-tokens", "6"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == ",".join(map(str, new[:stop])) + "\n"
    assert stop < 6
