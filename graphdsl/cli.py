"""The ``graphdsl`` command (also ``python -m graphdsl``).

::

    graphdsl summary FILE
    graphdsl graph FILE --format mermaid|dot|svg [-o OUT]
    graphdsl predict FILE --input x=data.npy [-o out.npy] [--backend numpy|torch]
    graphdsl merge FILE -o merged.gdsl
    graphdsl export FILE -o model.onnx [--opset N] [--optional-inputs all|NAME,...]
    graphdsl generate DIR|FILE --prompt TEXT|--ids 1,2,3 [--max-new-tokens N] [--sample ...]

FILE is a saved model (``gd.save``, a zip) or a JSON definition (``gd.to_json``); a JSON
model gets fresh weights from ``--seed`` (default 0) for predict and merge (summary and
graph create no weights). ``-o -`` writes to stdout (bytes for .gdsl, .npy, .npz, svg);
any other output is written atomically (temp file + rename) and may not be one of the
input files. Errors are one line on stderr and
a non-zero exit status (1: a problem with the input; 2: bad command line; 3: a bug —
set GRAPHDSL_DEBUG=1 to see its traceback).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, BinaryIO, NoReturn

import numpy as np

from . import __version__, display
from .adapters import merge_adapters
from .arrays import as_numpy
from .cli_generate import run_generate
from .compiler import build
from .errors import GraphDSLError
from .graph import analyze
from .io import adapter_layers, atomic_writer, from_json, load, sniff, write_model
from .node import Node, caller_location
from .state import ModelState

PROG = "graphdsl"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit status 2."""
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def one_line(e: BaseException) -> str:
    """A (multi-line) error message folded into one line."""
    parts = [p.strip() for p in str(e).splitlines() if p.strip()]
    return "; ".join(parts) or type(e).__name__


# -- files in and out ------------------------------------------------------------------------
MODEL_FILES = "a saved model (.gdsl) or a JSON definition (.json)"


def check_input_file(path: str, what: str, expect: str) -> None:
    """Refuse an input that is missing, a directory, not a regular file or empty, saying
    which (``what`` prefixes the message, ``expect`` names the file wanted)."""
    if not os.path.exists(path):
        raise GraphDSLError(f"{what}no such file: {path}", fix="check the path")
    if os.path.isdir(path):
        raise GraphDSLError(f"{what}{path} is a directory, not a file",
                            fix=f"pass {expect} (a file inside it?)")
    if not os.path.isfile(path):
        raise GraphDSLError(f"{what}{path} is not a regular file (a device, pipe or socket)",
                            fix=f"pass {expect}")
    if os.path.getsize(path) == 0:
        raise GraphDSLError(f"{what}{path} is empty (0 bytes)", fix=f"pass {expect}")


def _same_file(a: str, b: str) -> bool:
    """Whether paths ``a`` and ``b`` name one file (also through symlinks and hard links)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)


def refuse_overwriting_inputs(output: str | None, inputs: Sequence[str]) -> None:
    """An error when ``-o output`` is one of the ``inputs``: writing it would destroy it."""
    if not output or output == "-":
        return
    for path in inputs:
        if _same_file(output, path):
            raise GraphDSLError(f"-o {output} is the input file {path}; writing the output "
                                "there would destroy the input",
                                fix="pass another output path (or -o - for stdout)")


def write_output(path: str, write: Callable[[BinaryIO], None], example: str,
                 note: str = "") -> None:
    """Write the bytes ``write(fh)`` produces to ``path`` atomically (an existing file is
    replaced only once everything is written), or to stdout for ``-o -``."""

    if path == "-":
        buf = io.BytesIO()
        write(buf)
        sys.stdout.flush()
        sys.stdout.buffer.write(buf.getvalue())
        sys.stdout.buffer.flush()
        return
    with atomic_writer(path, "-o", example) as fh:
        write(fh)
    print(f"wrote {path}{note}")


# -- loading FILE ------------------------------------------------------------------------
def load_any(path: str, seed: int = 0, weights: bool = True
             ) -> tuple[Node, ModelState | None, str]:
    """``(model, state, kind)`` from a saved model (kind "model") or a JSON definition
    (kind "json", weights initialized from ``seed``; state None when not ``weights``)."""

    check_input_file(path, "", MODEL_FILES)
    with open(path, "rb") as f:
        kind = sniff(f.read(16))
    if kind == "json" or (kind == "unknown" and path.endswith(".json")):
        with open(path, "rb") as f:
            text = f.read((64 << 20) + 1)
        if len(text) > 64 << 20:
            raise GraphDSLError(f"{path} is larger than 64 MiB",
                                fix="a JSON definition holds no weights; check the file")
        model = from_json(text, source=os.path.basename(path))
        return model, (_init_weights(model, seed, path) if weights else None), "json"
    model, state = load(path)
    return model, state, "model"


def _init_weights(model: Node, seed: int, path: str) -> ModelState:

    try:
        return build(model, seed=seed)[0]()
    except MemoryError:
        raise GraphDSLError(f"not enough memory to create the weights of {path}",
                            fix=f"check the layer sizes (graphdsl summary {path} shows the "
                                "parameter counts without creating weights)") from None


# -- subcommands ---------------------------------------------------------------------------
def _summary(args: argparse.Namespace) -> None:

    model, state, kind = load_any(args.file, weights=False)
    src = "saved model" if kind == "model" else "JSON definition, no weights created"
    print(f"{args.file} ({src})")
    print(display.as_table(model, state=state))


def _graph(args: argparse.Namespace) -> None:

    refuse_overwriting_inputs(args.output, [args.file])
    model, state, _ = load_any(args.file, weights=False)
    if args.format == "svg":
        if not args.output:
            raise GraphDSLError("--format svg needs -o OUT (an .svg path, or - for stdout)",
                                fix="add -o model.svg")
        data = _svg(model, state)
    else:
        text = (display.as_graph(model, state=state) if args.format == "mermaid"
                else display.to_dot(model, state=state))  # both end in a newline
        if not args.output:
            sys.stdout.write(text)
            return
        data = text.encode("utf-8")
    write_output(args.output, lambda fh: fh.write(data), f"model.{args.format}")


def _svg(model: Node, state: ModelState | None) -> bytes:
    """The model drawn by Graphviz as SVG bytes (rendered in a private temp folder)."""
    with tempfile.TemporaryDirectory(prefix="graphdsl-") as folder:
        out = os.path.join(folder, "model.svg")
        display.render(model, out, state=state, format="svg")
        with open(out, "rb") as f:
            return f.read()


def _input_paths(specs: Sequence[str]) -> list[str]:
    """The file paths of ``--input NAME=FILE`` / ``--input FILE`` specs."""
    return [path if eq else spec for spec in specs for _, eq, path in [spec.partition("=")]]


def _parse_inputs(specs: Sequence[str], names: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for spec in specs:
        name, eq, path = spec.partition("=")
        if not eq:
            if len(names) != 1:
                raise GraphDSLError(
                    f"--input {spec!r} has no name, and the model has inputs {names}",
                    fix="write --input NAME=FILE.npy for each input")
            name, path = names[0], spec
        if name in out:
            raise GraphDSLError(f"--input {name} is given twice", fix="give each input once")
        out[name] = path
    missing = [n for n in names if n not in out]
    extra = [n for n in out if n not in names]
    if missing or extra:
        raise GraphDSLError(f"--input does not match the model's inputs {names}: missing "
                            f"{missing}, unknown {extra}",
                            fix="pass --input NAME=FILE.npy for each model input")
    return out


def _read_npy(path: str, name: str, dtype: str) -> np.ndarray:
    check_input_file(path, f"input {name!r}: ", "an array saved with numpy.save (.npy)")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise GraphDSLError(f"input {name!r}: {path} is not a readable .npy array ({e})",
                            fix="save it with numpy.save (object arrays are refused: "
                                "no pickles)") from None
    if not isinstance(arr, np.ndarray):
        arr.close()
        raise GraphDSLError(f"input {name!r}: {path} is an .npz archive, not one array",
                            fix="save each input with numpy.save(path, array)")
    if ((arr.dtype.kind == "f" and dtype.startswith("float"))
            or (arr.dtype.kind in "iu" and dtype.startswith("int"))):
        arr = arr.astype(dtype, copy=False)  # the input's own width (float64 -> float32)
    return arr


def _predict(args: argparse.Namespace) -> None:

    refuse_overwriting_inputs(args.output, [args.file, *_input_paths(args.input or [])])
    model, state, _ = load_any(args.file, weights=False)
    g = analyze(model)
    names = list(g.inputs)
    paths = _parse_inputs(args.input or [], names)
    dtypes = {g.name(n): n.attrs["dtype"] for n in g.input_nodes}
    arrays = {k: _read_npy(paths[k], k, dtypes[k]) for k in names}
    state = state if state is not None else _init_weights(model, args.seed, args.file)
    predict_fn = build(model, backend=args.backend)[1]
    out = predict_fn(state, arrays if len(names) != 1 else arrays[names[0]])
    if isinstance(out, dict):
        result = {str(k): np.asarray(as_numpy(v)) for k, v in out.items()}
    elif isinstance(out, tuple):
        result = {f"output_{i}": np.asarray(as_numpy(v)) for i, v in enumerate(out)}
    else:
        result = np.asarray(as_numpy(out))
    if not args.output:
        items = result.items() if isinstance(result, dict) else [("output", result)]
        with np.printoptions(threshold=200, edgeitems=3, precision=6):
            for k, v in items:
                print(f"{k}: {v.dtype}{list(v.shape)}\n{v}")
        return
    _write_prediction(args.output, result)


def _write_prediction(path: str, result: np.ndarray | dict[str, np.ndarray]) -> None:
    """One array as .npy, several as .npz (``-o -``: the same bytes on stdout)."""
    if isinstance(result, dict):
        if path != "-" and not path.endswith(".npz"):
            raise GraphDSLError(
                f"the model has several outputs {list(result)}; they go to an .npz archive",
                fix="pass -o out.npz")
        write_output(path, lambda fh: np.savez(fh, **result), "out.npz")
        return
    if path != "-" and not path.endswith(".npy"):
        raise GraphDSLError(f"-o {path}: the output is one array, written as .npy",
                            fix="pass -o out.npy")
    write_output(path, lambda fh: np.save(fh, result, allow_pickle=False), "out.npy")


def _merge(args: argparse.Namespace) -> None:

    refuse_overwriting_inputs(args.output, [args.file])
    model, state, _ = load_any(args.file, weights=False)
    if not adapter_layers(model)[1]:
        raise GraphDSLError(f"{args.file} has no dora or lora layers to merge",
                            fix="merge folds the adapters of a model made with dora.adapt "
                                "or lora.adapt; a plain model needs no merging")
    state = state if state is not None else _init_weights(model, args.seed, args.file)
    merged, mstate = merge_adapters(model, state)
    write_output(args.output, lambda fh: write_model(fh, merged, mstate), "merged.gdsl",
                 f" ({mstate.parameter_count()} parameters, adapters merged)")


def _export(args: argparse.Namespace) -> None:
    refuse_overwriting_inputs(args.output, [args.file])
    model, state, _ = load_any(args.file, args.seed)
    opt = args.optional_inputs
    kept = True if opt == "all" else [n for n in (opt or "").split(",") if n]
    try:
        from .backends.onnx_backend import is_large, save_model, to_onnx
    except ImportError as e:
        raise GraphDSLError(f"export needs the onnx package ({e})",
                            fix="pip install 'graphdsl[onnx]'") from None
    proto = to_onnx(model, state, opset=args.opset, optional_inputs=kept)
    note = (f" (opset {proto.opset_import[0].version}, inputs "
            f"{', '.join(i.name for i in proto.graph.input)}; outputs "
            f"{', '.join(o.name for o in proto.graph.output)})")
    if args.output != "-":  # atomic; a side file over protobuf's 2 GB, a stale one removed
        save_model(proto, args.output)
        side = f" and {args.output}.data" if is_large(proto) else ""
        print(f"wrote {args.output}{side}{note}")
        return
    write_output(args.output, lambda fh: fh.write(proto.SerializeToString()), "model.onnx",
                 note)


def _generate(args: argparse.Namespace) -> None:
    run_generate(args, load_any)


# -- parser --------------------------------------------------------------------------------
def make_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Inspect, run and merge graphdsl models. FILE is a "
                "saved model (.gdsl) or a JSON definition (.json, weights from --seed).")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def command(name: str, func: Callable[[argparse.Namespace], None], help: str,
                file: tuple[str, str] = ("FILE", MODEL_FILES), seed: str = ""
                ) -> argparse.ArgumentParser:
        """A subcommand running ``func(args)``, with the FILE and --seed every one takes."""
        sp = sub.add_parser(name, help=help)
        sp.set_defaults(func=func)
        sp.add_argument("file", metavar=file[0], help=file[1])
        sp.add_argument("--seed", type=int, default=0,
                        help=f"seed for the weights of a JSON definition{seed} (default 0)")
        return sp

    command("summary", _summary, "print the layer table and parameter counts")

    s = command("graph", _graph, "draw the graph as Mermaid, DOT or SVG")
    s.add_argument("--format", choices=("mermaid", "dot", "svg"), default="mermaid")
    s.add_argument("-o", "--output", help="output file, - for stdout (default: stdout; "
                   "required for svg)")

    s = command("predict", _predict, "run the model on .npy inputs")
    s.add_argument("--input", action="append", metavar="NAME=FILE.npy",
                   help="an input array (repeat per input; NAME= optional for one input)")
    s.add_argument("-o", "--output", help="write the prediction (.npy; .npz for several "
                   "outputs; - for those bytes on stdout); default: print it")
    s.add_argument("--backend", choices=("numpy", "torch"), default="numpy")

    s = command("merge", _merge, "fold DoRA/LoRA adapters into the plain dense, conv and "
                "embedding layers they adapt")
    s.add_argument("-o", "--output", required=True, help="the merged model file (.gdsl), "
                   "- for stdout")

    s = command("export", _export, "write an ONNX model (ONNX Runtime, serving stacks)")
    s.add_argument("-o", "--output", required=True, help="the ONNX file, - for stdout")
    s.add_argument("--opset", type=int, default=None,
                   help="ONNX opset (default: the lowest that covers the model's layers)")
    s.add_argument("--optional-inputs", metavar="all|NAME,...",
                   help="optional inputs (e.g. attention_mask) to export as graph inputs; "
                        "default: none, their defaults are computed in the graph")

    s = command("generate", _generate, "continue a prompt with a causal LM, printing the "
                "text as it is produced", ("DIR|FILE", "a Hugging Face checkpoint folder, or "
                + MODEL_FILES), " and of the --sample draws")
    s.add_argument("--prompt", help="the text to continue (needs a tokenizer.json)")
    s.add_argument("--ids", metavar="1,2,3", help="prompt token ids instead of --prompt")
    s.add_argument("--tokenizer", metavar="PATH", help="tokenizer.json (default: DIR's)")
    s.add_argument("--max-new-tokens", type=int, default=32, help="default 32")
    s.add_argument("--backend", choices=("numpy", "torch", "onnxruntime"), default="numpy")
    s.add_argument("--sample", action="store_true", help="sample (default: greedy); "
                   "--seed seeds the draws")
    s.add_argument("--temperature", type=float, help="with --sample (default 1)")
    s.add_argument("--top-k", type=int, help="with --sample (default: no top-k filter)")
    s.add_argument("--top-p", type=float, help="with --sample, in (0, 1]")
    return p


class _Terminated(BaseException):
    """SIGTERM, raised so that cleanup (a half-written output's temp file) still runs."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated()


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises _Terminated (main thread only; restored after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _message(e: GraphDSLError) -> str:
    """``e`` in one line, without a "defined at" that names this command's own entry
    point (nodes made here have no location in the user's code)."""

    if e.where and e.where.rpartition(":")[0] == caller_location().rpartition(":")[0]:
        e = GraphDSLError(e.what, layer=e.layer, op=e.op, shapes=e.shapes, fix=e.fix)
    return one_line(e)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 user error, 2 usage, 3 internal,
    130 interrupted, 143 terminated)."""
    args = make_parser().parse_args(argv)
    with _sigterm_raises():
        try:
            args.func(args)
        except GraphDSLError as e:
            print(f"{PROG}: error: {_message(e)}", file=sys.stderr)
            return 1
        except OSError as e:
            print(f"{PROG}: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "),
                  file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted", file=sys.stderr)
            return 130
        except _Terminated:
            print(f"{PROG}: terminated", file=sys.stderr)
            return 143
        except Exception as e:  # a bug: still one line unless asked for the traceback
            if os.environ.get("GRAPHDSL_DEBUG"):
                raise
            print(f"{PROG}: internal error: {type(e).__name__}: {one_line(e)} (set "
                  "GRAPHDSL_DEBUG=1 for a traceback)", file=sys.stderr)
            return 3
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
