"""Model files: ``save(path, model, state)`` / ``load(path) -> (model, state)``, and
adapter-only files: ``save_adapters`` / ``load_adapters``.

A model file (``.gdsl``) is a zip archive with exactly three members:

- ``model.json``: the JSON definition (:mod:`graphdsl.serialization`);
- ``weights.safetensors``: every parameter and state entry, keyed ``"layer.param"``
  (the safetensors format Hugging Face and PEFT use);
- ``state.json``: frozen flags and the names of non-parameter state entries.

An adapter file holds ``adapters.json`` (the adapter layers' ops and attributes, plus
frozen flags) and ``weights.safetensors`` with only the adapter parameters.

Loading never unpickles, imports or executes anything, never writes a file, and reads
each member with bounded reads after checking member names, count, declared sizes and
compression ratio. Every problem with a file is a :class:`SerializationError` (a
GraphDSLError) whose message says what is wrong.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import stat
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from .errors import GraphDSLError, SerializationError, StateError, fmt_shape
from .graph import Graph, analyze
from .node import Node
from .registry import OPS
from .serialization import (
    FORMAT_VERSION,
    encode_value,
    format_document,
    from_json,
    parse_json,
    to_json,
)
from .state import ModelState

MODEL_JSON = "model.json"
WEIGHTS = "weights.safetensors"
STATE_JSON = "state.json"
ADAPTERS_JSON = "adapters.json"
MODEL_MEMBERS = (MODEL_JSON, WEIGHTS, STATE_JSON)
ADAPTER_MEMBERS = (ADAPTERS_JSON, WEIGHTS)
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same model gives the same bytes

# safetensors dtype code <-> NumPy dtype
ST_DTYPES = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16",
             "U32": "uint32", "I32": "int32", "U64": "uint64", "I64": "int64",
             "F16": "float16", "F32": "float32", "F64": "float64"}
_FLOAT_DTYPES = ("float32", "float64")  # compute dtypes a parameter without a fixed dtype may have


@dataclass(frozen=True)
class LoadLimits:
    """Bounds that make a hostile archive (zip bomb, huge JSON) fail fast.

    Sizes are in bytes; ``max_ratio`` bounds uncompressed/compressed size for members larger
    than ``ratio_floor`` (the files graphdsl writes store weights uncompressed).
    """

    max_file_bytes: int = 64 << 30
    max_members: int = 8
    max_json_bytes: int = 64 << 20
    max_weights_bytes: int = 32 << 30
    max_total_bytes: int = 33 << 30
    max_ratio: float = 200.0
    ratio_floor: int = 1 << 20


DEFAULT_LIMITS = LoadLimits()


# -- reading an archive safely -----------------------------------------------------------------
def _label(path: Any) -> str:
    return os.path.basename(os.fspath(path)) or os.fspath(path)


def sniff(head: bytes) -> str:
    """What a file looks like from its first bytes: zip, json, pickle, empty or unknown."""
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    stripped = head.lstrip(b" \t\r\n\xef\xbb\xbf")
    if stripped.startswith(b"{"):
        return "json"
    return "unknown"


def _is_traversal(name: str) -> bool:
    return (name.startswith(("/", "\\")) or "\\" in name or "\x00" in name
            or (len(name) > 1 and name[1] == ":")
            or any(part in ("..", ".") for part in name.split("/")))


def read_archive(path: str | os.PathLike, members: Iterable[str],
                 limits: LoadLimits | None = None, what: str = "model file") -> dict[str, bytes]:
    """Read exactly ``members`` from the zip at ``path`` with every safety check.

    Returns ``{member: bytes}``. Raises SerializationError for anything else: a missing,
    empty, truncated or non-zip file, a pickle, unknown/duplicate/traversal member names,
    encrypted or exotic compression, sizes or ratios over ``limits``.
    """
    lim = limits or DEFAULT_LIMITS
    label = _label(path)
    wanted = tuple(members)

    def bad(msg: str, fix: str) -> SerializationError:
        return SerializationError(f"{label}: {msg}", fix=fix)

    try:
        p = os.fspath(path)
    except TypeError:
        raise SerializationError(f"a path must be a str or os.PathLike, got "
                                 f"{type(path).__name__}", fix="pass a file path") from None
    if not os.path.exists(p):
        raise SerializationError(f"no such file: {p}", fix="check the path")
    if not os.path.isfile(p):
        raise SerializationError(f"{p} is not a file", fix="pass the path of a .gdsl file")
    try:
        size = os.path.getsize(p)
        with open(p, "rb") as fh:
            head = fh.read(16)
            kind = sniff(head)
            if kind == "empty":
                raise bad("the file is empty", "save the model again with gd.save")
            if kind == "pickle":
                raise bad("this is a Python pickle; graphdsl never unpickles files (it could "
                          "run arbitrary code)",
                          "export the weights to a graphdsl model file with gd.save, or load "
                          "safetensors/NumPy arrays into a ModelState")
            if kind == "json":
                raise bad(f"this is a JSON text, not a {what} (a zip archive)",
                          "read a JSON definition with gd.from_json(open(path).read())")
            if kind != "zip":
                raise bad(f"not a graphdsl {what}: it is not a zip archive (starts with "
                          f"{head[:8]!r})", "pass a file written by gd.save")
            if size > lim.max_file_bytes:
                raise bad(f"the file is {size} bytes, over the limit of {lim.max_file_bytes}",
                          "raise LoadLimits.max_file_bytes if the file is trusted")
            fh.seek(0)
            return _read_members(fh, wanted, lim, bad, what)
    except GraphDSLError:
        raise
    except MemoryError:
        raise bad("not enough memory to read the file", "free memory") from None
    except Exception as e:  # zipfile/zlib/OSError/...: a corrupt or truncated archive
        raise bad(f"corrupt or truncated archive ({type(e).__name__}: {str(e)[:200]})",
                  "the file is damaged; save the model again") from None


def _read_members(fh: Any, wanted: tuple[str, ...], lim: LoadLimits, bad: Any,
                  what: str) -> dict[str, bytes]:
    with zipfile.ZipFile(fh) as zf:
        infos = zf.infolist()
        if len(infos) > lim.max_members:
            raise bad(f"the archive has {len(infos)} members (at most {lim.max_members})",
                      f"a {what} holds only {list(wanted)}")
        seen: dict[str, zipfile.ZipInfo] = {}
        total = 0
        for info in infos:
            name = info.filename
            if _is_traversal(name):
                raise bad(f"the archive member name {name!r} is a path-traversal name "
                          "(absolute, '..' or backslashes)",
                          "this file may be hostile; do not extract it")
            if name.endswith((".pkl", ".pickle")) or name.endswith("/data.pkl"):
                raise bad(f"the archive holds a pickle ({name!r}); graphdsl never unpickles",
                          "this looks like a PyTorch checkpoint; convert it to a ModelState")
            if name not in wanted and name == ADAPTERS_JSON:
                raise bad("this is an adapter file (gd.save_adapters), not a model file",
                          "load it with gd.load_adapters(path, adapted_model, base_state)")
            if name not in wanted and name in (MODEL_JSON, STATE_JSON):
                raise bad(f"this is a model file (gd.save), not an {what}",
                          "load it with gd.load(path)")
            if name not in wanted:
                raise bad(f"unexpected archive member {name!r}",
                          f"a {what} holds exactly {list(wanted)}")
            if name in seen:
                raise bad(f"the archive holds {name!r} twice", "save the model again")
            if info.flag_bits & 0x1:
                raise bad(f"member {name!r} is encrypted", "save the model again")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise bad(f"member {name!r} uses compression method {info.compress_type}",
                          "graphdsl reads stored or deflated members only")
            cap = lim.max_weights_bytes if name == WEIGHTS else lim.max_json_bytes
            if info.file_size > cap:
                raise bad(f"member {name!r} declares {info.file_size} bytes, over the limit "
                          f"of {cap} (zip bomb?)",
                          "raise the LoadLimits if the file is trusted")
            if (info.file_size > lim.ratio_floor
                    and info.file_size > lim.max_ratio * max(info.compress_size, 1)):
                raise bad(f"member {name!r} expands {info.compress_size} bytes to "
                          f"{info.file_size} (ratio over {lim.max_ratio:g}: zip bomb?)",
                          "raise LoadLimits.max_ratio if the file is trusted")
            total += info.file_size
            if total > lim.max_total_bytes:
                raise bad(f"the members declare more than {lim.max_total_bytes} bytes in "
                          "total (zip bomb?)", "raise LoadLimits.max_total_bytes if trusted")
            seen[name] = info
        missing = [m for m in wanted if m not in seen]
        if missing:
            raise bad(f"the archive lacks {missing} (it has {sorted(seen)})",
                      f"a {what} holds exactly {list(wanted)}; save it again")
        return {name: _bounded_read(zf, info, bad) for name, info in seen.items()}


def _bounded_read(zf: zipfile.ZipFile, info: zipfile.ZipInfo, bad: Any) -> bytes:
    """Read a member in chunks, never more than its declared size + 1 byte."""
    want = info.file_size
    chunks, got = [], 0
    with zf.open(info) as f:
        while got <= want:
            block = f.read(min(1 << 20, want + 1 - got))
            if not block:
                break
            chunks.append(block)
            got += len(block)
    if got != want:
        raise bad(f"member {info.filename!r} holds {'more' if got > want else 'fewer'} bytes "
                  f"than its declared {want} (corrupt or hostile)", "save the model again")
    return b"".join(chunks)


# -- writing files atomically ------------------------------------------------------------------
def need_path(path: Any, what: str) -> str:
    """``os.fspath(path)`` as a str, or a SerializationError naming ``what`` when ``path``
    is None, empty or not a path at all."""
    fix = "pass a file path such as 'model.gdsl'"
    if path is None:
        raise SerializationError(f"{what} needs a file path, got None", fix=fix)
    try:
        p = os.fspath(path)
    except TypeError:
        raise SerializationError(f"{what} needs a file path (str or os.PathLike), got "
                                 f"{type(path).__name__}", fix=fix) from None
    p = os.fsdecode(p)
    if not p:
        raise SerializationError(f"{what} needs a file path, got an empty string", fix=fix)
    return p


def _write_target(p: str, example: str) -> str:
    """The file a write to ``p`` replaces: the file a symlink points to (the link stays),
    else ``p`` itself. A directory or a missing folder is a SerializationError."""
    target = os.path.realpath(p) if os.path.islink(p) else p
    if os.path.isdir(target):
        raise SerializationError(f"cannot write {p}: it is a directory",
                                 fix=f"pass the path of a file, e.g. {os.path.join(p, example)}")
    folder = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(folder):
        raise SerializationError(f"cannot write {p}: the folder {folder} does not exist",
                                 fix="create the folder first")
    return target


def _existing_mode(target: str) -> int | None:
    """The permission bits of ``target``, or None when there is no such file yet."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        return None


def _open_temp(folder: str) -> tuple[int, str]:
    """A new hidden temp file in ``folder``; mode 0o666 less the umask, as open() gives."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(folder, f".graphdsl-{secrets.token_hex(8)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp file name in {folder}")  # pragma: no cover


@contextlib.contextmanager
def atomic_writer(path: Any, what: str = "gd.save", example: str = "model.gdsl"
                  ) -> Iterator[BinaryIO]:
    """Open ``path`` for writing through a temp file in the same folder, renamed over it
    (``os.replace``) when the block ends without error; on any error, KeyboardInterrupt
    included, the temp file is removed and ``path`` is untouched.

    An existing file keeps its permission bits, a new one gets 0o666 less the umask; a
    symlink keeps pointing where it did (the file it points to is replaced). ``what`` and
    ``example`` (a file name) word the errors for a bad path.
    """
    target = _write_target(need_path(path, what), example)
    mode = _existing_mode(target)
    tmp: str | None = None
    try:
        fd, tmp = _open_temp(os.path.dirname(os.path.abspath(target)))
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
        tmp = None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _zip_to(fh: BinaryIO, members: Mapping[str, tuple[bytes, int]]) -> None:
    """Write ``{name: (bytes, compression)}`` as a zip with fixed timestamps to ``fh``."""
    with zipfile.ZipFile(fh, "w") as zf:
        for name, (blob, method) in members.items():
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = method
            info.external_attr = 0o644 << 16
            zf.writestr(info, blob)


def _write_archive(path: Any, members: Mapping[str, tuple[bytes, int]],
                   what: str = "gd.save") -> str:
    """Write ``{name: (bytes, compression)}`` atomically (:func:`atomic_writer`)."""
    p = need_path(path, what)
    with atomic_writer(p, what) as fh:
        _zip_to(fh, members)
    return p


def _check_model(model: Any, what: str) -> None:
    if not isinstance(model, Node):
        raise GraphDSLError(f"{what}: the model must be a graph node (a layer's output), got "
                            f"{type(model).__name__}",
                            fix=f"call {what}(path, model, state) with the model's output node")


def _check_state(state: Any, what: str) -> None:
    if not isinstance(state, ModelState):
        raise StateError(f"{what}: the state must be a ModelState, got {type(state).__name__}",
                         fix=f"call {what}(path, model, state) with the state from init_fn "
                             "(or gd.load)")


# -- weights -----------------------------------------------------------------------------------
def _safetensors():
    try:
        import safetensors.numpy as stnp
    except ImportError:  # pragma: no cover - depends on the environment
        raise GraphDSLError("saving and loading model files needs the safetensors package",
                            fix="pip install 'graphdsl[io]' (or pip install safetensors)"
                            ) from None
    return stnp


Expected = dict[tuple[str, str], tuple[tuple, tuple[str, ...]]]


def expected_tensors(g: Graph, keys: Iterable[tuple[str, str]] | None = None) -> Expected:
    """``{(layer, param): (shape, allowed dtypes)}`` the graph reads (or only ``keys``)."""
    sel = set(keys) if keys is not None else None
    out: Expected = {}
    for key, spec in g.params.items():
        if sel is None or key in sel:
            out[key] = (tuple(spec.shape), (spec.dtype,) if spec.dtype else _FLOAT_DTYPES)
    return out


def _check_keys(have: Iterable[tuple[str, str]], want: Expected, source: str,
                cls: type[GraphDSLError], fix_missing: str) -> None:
    have = set(have)
    missing = sorted(k for k in want if k not in have)
    extra = sorted(k for k in have if k not in want)
    if missing:
        names = ", ".join(f"{a}.{b}" for a, b in missing[:10])
        raise cls(f"{source} lacks {len(missing)} value(s) the model needs: {names}",
                  fix=fix_missing)
    if extra:
        names = ", ".join(f"{a}.{b}" for a, b in extra[:10])
        raise cls(f"{source} has {len(extra)} value(s) the model does not use: {names}",
                  fix="the file and the model disagree; save them together with gd.save")


def _check_array(key: tuple[str, str], shape: tuple, dtype: str, want: Expected, source: str,
                 cls: type[GraphDSLError]) -> None:
    wshape, wdtypes = want[key]
    if tuple(shape) != wshape:
        raise cls(f"{source}: {key[0]}.{key[1]} has shape {fmt_shape(tuple(shape))}, the "
                  f"model needs {fmt_shape(wshape)}", layer=key[0],
                  shapes={"expected": wshape, "given": tuple(shape)},
                  fix="the weights do not belong to this model")
    if dtype not in wdtypes:
        raise cls(f"{source}: {key[0]}.{key[1]} has dtype {dtype}, the model needs "
                  f"{' or '.join(wdtypes)}", layer=key[0],
                  fix="convert the array (e.g. arr.astype('float32')) before saving")


def state_tensors(g: Graph, state: ModelState, want: Expected) -> dict[str, np.ndarray]:
    """The arrays of ``state`` the file will hold, checked against the graph."""
    if not isinstance(state, ModelState):
        raise StateError(f"expected a ModelState, got {type(state).__name__}",
                         fix="pass the state returned by init_fn (or gd.load)")
    have = {(layer, p): a for layer, ps in state.data.items() for p, a in ps.items()}
    _check_keys(have, want, "the state", StateError,
                "initialize the state with init_fn(template, state) first")
    out = {}
    for key, a in have.items():
        if hasattr(a, "detach"):
            a = a.detach().cpu().numpy()
        arr = np.asarray(a)
        if not arr.flags.c_contiguous:
            arr = arr.copy(order="C")  # (np.ascontiguousarray would make 0-d arrays 1-d)
        _check_array(key, arr.shape, arr.dtype.name, want, "the state", StateError)
        out[f"{key[0]}.{key[1]}"] = arr
    return out


def _parse_header(blob: bytes, source: str) -> dict[tuple[str, str], tuple[tuple, str]]:
    """Validate a safetensors header ourselves before the library sees the bytes."""
    def bad(msg: str) -> SerializationError:
        return SerializationError(f"{source}: {msg}", fix="the weights are damaged; save the "
                                  "model again")

    if len(blob) < 8:
        raise bad("the weights are truncated (no safetensors header)")
    n = int.from_bytes(blob[:8], "little")
    if n < 2 or n > min(100 << 20, len(blob) - 8):
        raise bad(f"the safetensors header length {n} does not fit the {len(blob)}-byte data")
    header = parse_json(blob[8:8 + n], f"{source} header")
    if not isinstance(header, dict):
        raise bad("the safetensors header is not a JSON object")
    data_len = len(blob) - 8 - n
    spans, out = [], {}
    for key, v in header.items():
        if key == "__metadata__":
            if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
                raise bad("__metadata__ must map strings to strings")
            continue
        layer, dot, param = key.partition(".")
        if not (layer and dot and param):
            raise bad(f"tensor name {key!r} is not 'layer.param'")
        if not isinstance(v, dict) or set(v) != {"dtype", "shape", "data_offsets"}:
            raise bad(f"tensor {key!r} needs exactly dtype, shape, data_offsets")
        dt, shape, offs = v["dtype"], v["shape"], v["data_offsets"]
        if not isinstance(dt, str) or dt not in ST_DTYPES:
            raise bad(f"tensor {key!r} has unsupported dtype {dt!r}")
        if not (isinstance(shape, list) and len(shape) <= 32 and all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise bad(f"tensor {key!r} has an invalid shape {shape!r}")
        if not (isinstance(offs, list) and len(offs) == 2 and all(
                isinstance(o, int) and not isinstance(o, bool) for o in offs)
                and 0 <= offs[0] <= offs[1] <= data_len):
            raise bad(f"tensor {key!r} has invalid data offsets {offs!r}")
        nbytes = int(np.prod(shape, dtype=object) if shape else 1) * np.dtype(
            ST_DTYPES[dt]).itemsize
        if offs[1] - offs[0] != nbytes:
            raise bad(f"tensor {key!r} spans {offs[1] - offs[0]} bytes, its shape and dtype "
                      f"need {nbytes}")
        spans.append((offs[0], offs[1], key))
        out[(layer, param)] = (tuple(shape), ST_DTYPES[dt])
    pos = 0
    for b, e, key in sorted(spans):
        if b != pos:
            raise bad(f"tensor {key!r} overlaps another or leaves a gap in the data")
        pos = e
    if pos != data_len:
        raise bad(f"the data holds {data_len - pos} bytes no tensor uses")
    return out


def read_weights(blob: bytes, want: Expected, source: str) -> dict[tuple[str, str], np.ndarray]:
    """Decode safetensors bytes, checking names, shapes and dtypes against ``want``."""
    header = _parse_header(blob, source)
    _check_keys(header, want, source, SerializationError,
                "the weights do not belong to this model; save model and state together")
    for key, (shape, dt) in header.items():
        _check_array(key, shape, dt, want, source, SerializationError)
    stnp = _safetensors()
    try:
        arrays = stnp.load(blob)
    except BaseException as e:  # includes pyo3's PanicException
        if isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        raise SerializationError(f"{source}: the weights could not be decoded "
                                 f"({type(e).__name__}: {str(e)[:200]})",
                                 fix="the file is damaged; save the model again") from None
    out = {}
    for name, arr in arrays.items():
        layer, _, param = name.partition(".")
        out[(layer, param)] = arr
    return out


# -- model files -------------------------------------------------------------------------------
def _flags_doc(g: Graph, state: ModelState, keys: Iterable[tuple[str, str]]) -> dict[str, Any]:
    keys = set(keys)
    unknown = sorted(k for k in state.frozen if k not in g.params)
    if unknown:
        names = ", ".join(f"{a}.{b}" for a, b in unknown[:10])
        raise StateError(f"the state marks {names} frozen, which the model does not have",
                         fix="unfreeze them, or save the state that belongs to this model")
    frozen = sorted(k for k in state.frozen if k in keys and g.params[k].kind == "param")
    entries: dict[str, list[str]] = {}
    for (layer, p), spec in g.params.items():
        if (layer, p) in keys and spec.kind == "state":
            entries.setdefault(layer, []).append(p)
    return {"format": "graphdsl.state", "format_version": FORMAT_VERSION,
            "frozen": [list(k) for k in frozen], "state": entries}


def _read_flags(doc: Any, g: Graph, keys: Iterable[tuple[str, str]], source: str
                ) -> tuple[set[tuple[str, str]], dict[str, list[str]]]:
    keys = set(keys)

    def bad(msg: str) -> SerializationError:
        return SerializationError(f"{source}: {msg}", fix="the file is damaged or edited; "
                                  "save the model again")

    if not isinstance(doc, dict) or set(doc) - {"format", "format_version", "frozen", "state"}:
        raise bad("must be an object with format_version, frozen and state")
    if doc.get("format_version") != FORMAT_VERSION or isinstance(doc.get("format_version"),
                                                                 bool):
        raise SerializationError(
            f"{source} has format_version {doc.get('format_version')!r}; this graphdsl reads "
            f"version {FORMAT_VERSION}", fix="save the file again with this graphdsl")
    fr = doc.get("frozen", [])
    if not isinstance(fr, list) or not all(
            isinstance(x, list) and len(x) == 2 and all(isinstance(s, str) for s in x)
            for x in fr):
        raise bad("'frozen' must be a list of [layer, param] pairs")
    frozen = {(a, b) for a, b in fr}
    wrong = sorted(k for k in frozen if k not in keys or g.params[k].kind != "param")
    if wrong:
        raise bad(f"'frozen' names {['.'.join(k) for k in wrong[:10]]}, which are not "
                  "parameters of the model")
    st = doc.get("state", {})
    if not isinstance(st, dict) or not all(
            isinstance(v, list) and all(isinstance(s, str) for s in v) for v in st.values()):
        raise bad("'state' must map layer names to lists of entry names")
    want: dict[str, list[str]] = {}
    for (layer, p), spec in g.params.items():
        if (layer, p) in keys and spec.kind == "state":
            want.setdefault(layer, []).append(p)
    if {k: sorted(v) for k, v in st.items() if v} != {k: sorted(v) for k, v in want.items()}:
        raise bad(f"'state' lists {st}, but the model's state entries are {want}")
    return frozen, {k: list(v) for k, v in want.items()}


def _model_members(model: Node, state: ModelState) -> dict[str, tuple[bytes, int]]:
    """The checked members of a model file: ``{name: (bytes, compression)}``."""
    _check_model(model, "gd.save")
    _check_state(state, "gd.save")
    text = to_json(model)
    g = analyze(model)
    want = expected_tensors(g)
    tensors = state_tensors(g, state, want)
    flags = _flags_doc(g, state, want)
    blob = _safetensors().save(tensors, metadata={"format": "graphdsl.weights"})
    return {
        MODEL_JSON: (text.encode("utf-8"), zipfile.ZIP_DEFLATED),
        WEIGHTS: (blob, zipfile.ZIP_STORED),
        STATE_JSON: (format_document(flags).encode("utf-8"), zipfile.ZIP_DEFLATED),
    }


def save(path: str | os.PathLike, model: Node, state: ModelState) -> str:
    """Write ``model`` and ``state`` to one file (a zip: model.json, weights.safetensors,
    state.json). Everything is checked before anything is written: an unregistered custom
    function, or a state that misses, adds or mis-shapes a parameter, is an error. The
    file is written atomically (a temp file renamed into place; removed on any error); an
    existing file keeps its permissions, a symlink keeps pointing to the file it names.
    Returns the path."""
    p = need_path(path, "gd.save")
    return _write_archive(p, _model_members(model, state), "gd.save")


def write_model(fh: BinaryIO, model: Node, state: ModelState) -> None:
    """Write the bytes :func:`save` would write to an open binary file (e.g. a stream)."""
    _zip_to(fh, _model_members(model, state))


def load(path: str | os.PathLike, *, limits: LoadLimits | None = None
         ) -> tuple[Node, ModelState]:
    """Read a model file written by :func:`save`: returns ``(model, state)``.

    Nothing is executed or written. Any problem (not a zip, a pickle, a zip bomb,
    traversal names, a wrong format_version, an unknown op, a cycle, a dangling reference,
    weights that do not fit the graph) is a GraphDSLError saying what is wrong.
    """
    path = need_path(path, "gd.load")
    label = _label(path)
    members = read_archive(path, MODEL_MEMBERS, limits)
    model = from_json(members[MODEL_JSON], f"{label}:{MODEL_JSON}")
    g = analyze(model)
    want = expected_tensors(g)
    flags = parse_json(members[STATE_JSON], f"{label}:{STATE_JSON}")
    frozen, entries = _read_flags(flags, g, want, f"{label}:{STATE_JSON}")
    arrays = read_weights(members[WEIGHTS], want, f"{label}:{WEIGHTS}")
    data: dict[str, dict[str, np.ndarray]] = {}
    for (layer, p) in want:  # the graph's order
        data.setdefault(layer, {})[p] = arrays[(layer, p)]
    return model, ModelState(data, frozen, entries)


# -- adapter files -----------------------------------------------------------------------------
def adapter_layers(model: Node) -> tuple[Graph, list[Node]]:
    """The adapter nodes (op category "adapter") of ``model`` in topological order."""
    g = analyze(model)
    return g, [n for n in g.order if OPS[n.op].category == "adapter"]


def adapter_keys(model: Node) -> list[tuple[str, str]]:
    """``(layer, param)`` of the adapter parameters: the ones each adapter layer owns
    (A, B, magnitude, its dropout key), not the base weights it wraps or carries
    (kernel/bias of the wrapped layer, or its own frozen ``base_weight``/``bias``)."""
    g, nodes = adapter_layers(model)
    keys = []
    for n in nodes:
        name = g.name(n)
        for spec in n.params:
            if spec.owner is None and spec.name not in ("base_weight", "bias"):
                keys.append((name, spec.name))
    return keys


def _adapter_doc(g: Graph, nodes: list[Node]) -> list[dict[str, Any]]:
    return [{"name": g.name(n), "op": n.op,
             "attrs": {k: encode_value(n.attrs[k], f"adapter {g.name(n)!r} attribute {k!r}")
                       for k in sorted(n.attrs)}} for n in nodes]


def save_adapters(path: str | os.PathLike, model: Node, state: ModelState,
                  modules_to_save: Iterable[str] = ()) -> str:
    """Write only the adapter parameters of ``state`` (``gd.adapter_state``: A, B,
    magnitude, dropout keys; plus the layers named in ``modules_to_save``), with the
    adapter layers' ops and attributes and the frozen flags. A model without adapter
    layers is an error. Returns the path."""
    from .adapters import adapter_state

    p = need_path(path, "gd.save_adapters")
    _check_model(model, "gd.save_adapters")
    _check_state(state, "gd.save_adapters")
    g, nodes = adapter_layers(model)
    if not nodes:
        raise GraphDSLError("the model has no adapter layers (dora/lora) to save",
                            fix="adapt it first (dora.adapt / lora.adapt), or save the whole "
                                "model with gd.save")
    mods = [modules_to_save] if isinstance(modules_to_save, str) else list(modules_to_save)
    ad = adapter_state(model, state, mods)
    keys = [(layer, p) for layer, ps in ad.data.items() for p in ps]
    want = expected_tensors(g, keys)
    tensors = state_tensors(g, ad, want)
    doc = {"format": "graphdsl.adapters", "format_version": FORMAT_VERSION,
           "adapters": _adapter_doc(g, nodes), "modules_to_save": sorted(mods),
           "frozen": [list(k) for k in sorted(ad.frozen) if k in want]}
    blob = _safetensors().save(tensors, metadata={"format": "graphdsl.adapters"})
    return _write_archive(p, {
        ADAPTERS_JSON: (format_document(doc).encode("utf-8"), zipfile.ZIP_DEFLATED),
        WEIGHTS: (blob, zipfile.ZIP_STORED),
    }, "gd.save_adapters")


def load_adapters(path: str | os.PathLike, model: Node, base_state: ModelState, *,
                  seed: int = 0, limits: LoadLimits | None = None) -> ModelState:
    """Attach the adapter parameters saved by :func:`save_adapters` to ``base_state``
    (through ``gd.attach_adapters``, which validates the complete state).

    ``model`` is the adapted model; its adapter layers (names, ops, attributes) must match
    the file. Returns a new ModelState (``base_state`` is not modified).
    """
    from .adapters import attach_adapters

    path = need_path(path, "gd.load_adapters")
    _check_model(model, "gd.load_adapters")
    label = _label(path)
    if not isinstance(base_state, ModelState):
        raise StateError(f"base_state must be a ModelState, got {type(base_state).__name__}",
                         fix="pass the base model's state (e.g. from gd.load or init_fn)")
    members = read_archive(path, ADAPTER_MEMBERS, limits, what="adapter file")
    source = f"{label}:{ADAPTERS_JSON}"
    doc = parse_json(members[ADAPTERS_JSON], source)
    keys = {"format", "format_version", "adapters", "modules_to_save", "frozen"}
    if not isinstance(doc, dict) or set(doc) != keys:
        raise SerializationError(f"{source}: must be an object with the keys {sorted(keys)}",
                                 fix="save the adapters again with gd.save_adapters")
    if doc["format_version"] != FORMAT_VERSION or isinstance(doc["format_version"], bool):
        raise SerializationError(f"{source} has format_version {doc['format_version']!r}; "
                                 f"this graphdsl reads version {FORMAT_VERSION}",
                                 fix="save the adapters again with this graphdsl")
    g, nodes = adapter_layers(model)
    mine = {e["name"]: e for e in _adapter_doc(g, nodes)}
    theirs = doc["adapters"]
    if not isinstance(theirs, list) or not all(
            isinstance(e, dict) and isinstance(e.get("name"), str) for e in theirs):
        raise SerializationError(f"{source}: 'adapters' must be a list of layer entries",
                                 fix="save the adapters again")
    names = [e["name"] for e in theirs]
    if sorted(names) != sorted(mine):
        raise SerializationError(
            f"{label}: the file has adapter layers {sorted(names)}, the model has "
            f"{sorted(mine)}",
            fix="adapt the model the same way as when the adapters were saved")
    for e in theirs:
        m = mine[e["name"]]
        if e.get("op") != m["op"]:
            raise SerializationError(f"{label}: adapter {e['name']!r} is a {e.get('op')!r} "
                                     f"layer in the file, a {m['op']} layer in the model",
                                     layer=e["name"], fix="use the same adapter kind")
        fa = e.get("attrs") if isinstance(e.get("attrs"), dict) else {}
        diff = sorted(k for k in set(fa) | set(m["attrs"]) if fa.get(k) != m["attrs"].get(k))
        if diff:
            k = diff[0]
            raise SerializationError(
                f"{label}: adapter {e['name']!r} has {k}={fa.get(k)!r} in the file but "
                f"{k}={m['attrs'].get(k)!r} in the model", layer=e["name"], op=m["op"],
                fix="adapt the model with the same options as when the adapters were saved")
    mods = doc["modules_to_save"]
    owners = {k[0] for k in g.params}
    if not isinstance(mods, list) or not all(isinstance(x, str) and x in owners for x in mods):
        raise SerializationError(f"{source}: 'modules_to_save' lists {mods!r}, which are not "
                                 "layers with parameters in this model",
                                 fix="use the model the adapters were saved with")
    want = expected_tensors(g, adapter_keys(model) + [k for k in g.params if k[0] in mods])
    fr = doc["frozen"]
    if not isinstance(fr, list) or not all(
            isinstance(x, list) and len(x) == 2 and all(isinstance(s, str) for s in x)
            and tuple(x) in want for x in fr):
        raise SerializationError(f"{source}: 'frozen' must list [layer, param] pairs of the "
                                 "saved parameters", fix="save the adapters again")
    arrays = read_weights(members[WEIGHTS], want, f"{label}:{WEIGHTS}")
    data: dict[str, dict[str, np.ndarray]] = {}
    entries: dict[str, list[str]] = {}
    for (layer, p) in want:
        data.setdefault(layer, {})[p] = arrays[(layer, p)]
        if g.params[(layer, p)].kind == "state":
            entries.setdefault(layer, []).append(p)
    return attach_adapters(model, base_state, ModelState(data, {tuple(x) for x in fr}, entries),
                           seed=seed)
