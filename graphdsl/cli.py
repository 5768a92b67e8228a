"""The ``graphdsl`` command (also ``python -m graphdsl``).

::

    graphdsl summary FILE
    graphdsl graph FILE --format mermaid|dot|svg [-o OUT]
    graphdsl predict FILE --input x=data.npy [-o out.npy] [--backend numpy|torch]
    graphdsl merge FILE -o merged.gdsl

FILE is a saved model (``gd.save``, a zip) or a JSON definition (``gd.to_json``); a JSON
model gets fresh weights from ``--seed`` (default 0). Errors are one line on stderr and
a non-zero exit status (1: a problem with the input; 2: bad command line; 3: a bug —
set GRAPHDSL_DEBUG=1 to see its traceback).
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

import numpy as np

from .errors import GraphDSLError
from .node import Node
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


# -- loading FILE ------------------------------------------------------------------------
def load_any(path: str, seed: int = 0) -> tuple[Node, ModelState, str]:
    """``(model, state, kind)`` from a saved model (kind "model") or a JSON definition
    (kind "json", weights initialized from ``seed``)."""
    from .compiler import build
    from .io import load, sniff
    from .serialization import from_json

    if not os.path.isfile(path):
        raise GraphDSLError(f"no such file: {path}", fix="check the path")
    with open(path, "rb") as f:
        head = f.read(16)
    kind = sniff(head)
    if kind == "json" or (kind == "unknown" and path.endswith(".json")):
        with open(path, "rb") as f:
            text = f.read((64 << 20) + 1)
        if len(text) > 64 << 20:
            raise GraphDSLError(f"{path} is larger than 64 MiB",
                                fix="a JSON definition holds no weights; check the file")
        model = from_json(text, source=os.path.basename(path))
        state = build(model, seed=seed)[0]()
        return model, state, "json"
    model, state = load(path)
    return model, state, "model"


# -- subcommands ---------------------------------------------------------------------------
def _summary(args: argparse.Namespace) -> None:
    from . import display

    model, state, kind = load_any(args.file, args.seed)
    src = "saved model" if kind == "model" else f"JSON definition, weights from seed {args.seed}"
    print(f"{args.file} ({src})")
    print(display.as_table(model, state=state))


def _graph(args: argparse.Namespace) -> None:
    from . import display

    model, state, _ = load_any(args.file, args.seed)
    if args.format == "svg":
        if not args.output:
            raise GraphDSLError("--format svg needs -o OUT (an .svg path)",
                                fix="add -o model.svg")
        display.render(model, args.output, state=state, format="svg")
        print(f"wrote {args.output}")
        return
    text = (display.as_graph(model, state=state) if args.format == "mermaid"
            else display.to_dot(model, state=state))
    _write_text(args.output, text)


def _write_text(path: str | None, text: str) -> None:
    if not path or path == "-":
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {path}")


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
    if not os.path.isfile(path):
        raise GraphDSLError(f"input {name!r}: no such file: {path}", fix="check the path")
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
    if arr.dtype.kind == "f" and dtype.startswith("float") and arr.dtype != np.dtype(dtype):
        arr = arr.astype(dtype)
    elif arr.dtype.kind in "iu" and dtype.startswith("int") and arr.dtype != np.dtype(dtype):
        arr = arr.astype(dtype)
    return arr


def _predict(args: argparse.Namespace) -> None:
    from .compiler import _to_numpy, build
    from .graph import analyze

    model, state, _ = load_any(args.file, args.seed)
    g = analyze(model)
    names = list(g.inputs)
    paths = _parse_inputs(args.input or [], names)
    dtypes = {g.name(n): n.attrs["dtype"] for n in g.input_nodes}
    arrays = {k: _read_npy(paths[k], k, dtypes[k]) for k in names}
    predict_fn = build(model, backend=args.backend)[1]
    out = predict_fn(state, arrays if len(names) != 1 else arrays[names[0]])
    if isinstance(out, dict):
        result = {str(k): np.asarray(_to_numpy(v)) for k, v in out.items()}
    elif isinstance(out, tuple):
        result = {f"output_{i}": np.asarray(_to_numpy(v)) for i, v in enumerate(out)}
    else:
        result = np.asarray(_to_numpy(out))
    if not args.output:
        items = result.items() if isinstance(result, dict) else [("output", result)]
        with np.printoptions(threshold=200, edgeitems=3, precision=6):
            for k, v in items:
                print(f"{k}: {v.dtype}{list(v.shape)}\n{v}")
        return
    if isinstance(result, dict):
        if not args.output.endswith(".npz"):
            raise GraphDSLError(
                f"the model has several outputs {list(result)}; they go to an .npz archive",
                fix="pass -o out.npz")
        np.savez(args.output, **result)
    else:
        if not args.output.endswith(".npy"):
            raise GraphDSLError(f"-o {args.output}: the output is one array, written as .npy",
                                fix="pass -o out.npy")
        np.save(args.output, result)
    print(f"wrote {args.output}")


def _merge(args: argparse.Namespace) -> None:
    from .adapters import merge_adapters
    from .io import save

    model, state, _ = load_any(args.file, args.seed)
    merged, mstate = merge_adapters(model, state)
    save(args.output, merged, mstate)
    print(f"wrote {args.output} ({mstate.parameter_count()} parameters, adapters merged)")


# -- parser --------------------------------------------------------------------------------
def make_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Inspect, run and merge graphdsl models. FILE is a "
                "saved model (.gdsl) or a JSON definition (.json, weights from --seed).")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("file", metavar="FILE", help="a saved model (.gdsl) or a JSON "
                        "definition (.json)")
        sp.add_argument("--seed", type=int, default=0,
                        help="seed for the weights of a JSON definition (default 0)")

    s = sub.add_parser("summary", help="print the layer table and parameter counts")
    common(s)
    s.set_defaults(func=_summary)

    s = sub.add_parser("graph", help="draw the graph as Mermaid, DOT or SVG")
    common(s)
    s.add_argument("--format", choices=("mermaid", "dot", "svg"), default="mermaid")
    s.add_argument("-o", "--output", help="output file (default: stdout; required for svg)")
    s.set_defaults(func=_graph)

    s = sub.add_parser("predict", help="run the model on .npy inputs")
    common(s)
    s.add_argument("--input", action="append", metavar="NAME=FILE.npy",
                   help="an input array (repeat per input; NAME= optional for one input)")
    s.add_argument("-o", "--output", help="write the prediction (.npy; .npz for several "
                   "outputs); default: print it")
    s.add_argument("--backend", choices=("numpy", "torch"), default="numpy")
    s.set_defaults(func=_predict)

    s = sub.add_parser("merge", help="fold DoRA/LoRA adapters into plain dense layers")
    common(s)
    s.add_argument("-o", "--output", required=True, help="the merged model file (.gdsl)")
    s.set_defaults(func=_merge)
    return p


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 user error, 2 usage, 3 internal)."""
    args = make_parser().parse_args(argv)
    try:
        args.func(args)
    except GraphDSLError as e:
        print(f"{PROG}: error: {one_line(e)}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"{PROG}: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: still one line unless asked for the traceback
        if os.environ.get("GRAPHDSL_DEBUG"):
            raise
        print(f"{PROG}: internal error: {type(e).__name__}: {one_line(e)} (set "
              "GRAPHDSL_DEBUG=1 for a traceback)", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
