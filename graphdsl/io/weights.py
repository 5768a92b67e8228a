"""Weights as safetensors bytes (the format of Hugging Face and PEFT), keyed
``"layer.param"``: writing checks a state against the tensors the graph reads; reading
validates the header itself (length, JSON, names, dtypes, shapes, contiguous offsets) and
compares names, shapes and dtypes with the graph before any value is decoded (by NumPy,
as views of the bytes: the safetensors library only writes). Safetensors *files*
(checkpoints, adapters) are also read with NumPy alone, mapped read-only from disk
(``file_header``, ``map_tensors``). Decoded arrays are views of the bytes they
come from (zero-copy), bfloat16 as ``ml_dtypes.bfloat16``.
"""
from __future__ import annotations

import io
import os
from collections.abc import Iterable, Mapping
from typing import Any, BinaryIO

import numpy as np

from ..dtypes import FLOATS, bfloat16_bits_to_float32, np_dtype
from ..errors import GraphDSLError, SerializationError, StateError, fmt_shape
from ..graph import Graph
from ..state import ModelState, need_state
from .filemap import FileMap, map_file
from .json_text import parse_json

# safetensors dtype code <-> NumPy dtype
ST_DTYPES = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16",
             "U32": "uint32", "I32": "int32", "U64": "uint64", "I64": "int64",
             "F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}
_FLOAT_DTYPES = FLOATS  # the dtypes a parameter without a fixed dtype may have


def _safetensors() -> Any:
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
    return {key: (tuple(spec.shape), (spec.dtype,) if spec.dtype else _FLOAT_DTYPES)
            for key, spec in g.params.items() if sel is None or key in sel}


def check_keys(have: Iterable[tuple[str, str]], want: Expected, source: str,
               cls: type[GraphDSLError], fix_missing: str,
               fix_extra: str = "the file and the model disagree; save them together with "
                                "gd.save") -> None:
    """``have`` (``(layer, param)`` keys) must be exactly the keys of ``want``: the first
    missing keys, else the first extra ones, are a ``cls`` error naming them."""
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
                  fix=fix_extra)


def check_array(key: tuple[str, str], shape: tuple, dtype: str, want: Expected, source: str,
                cls: type[GraphDSLError]) -> None:
    """The array ``key`` (of ``shape`` and NumPy ``dtype``) must have the shape and one of the
    dtypes ``want[key]`` gives, else a ``cls`` error naming it."""
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
    """The arrays of ``state`` the file will hold, checked against the graph.

    ``want`` (from ``expected_tensors``) names every ``(layer, param)`` with its shape and
    allowed dtypes; ``state.data`` must hold exactly those (a missing, extra, mis-shaped or
    mis-typed value is a StateError). Returns ``{"layer.param": array}``: NumPy arrays
    (a ModelState holds nothing else), C-contiguous, of exactly the shapes in ``want``
    (a dense kernel ``[in, out]``, a bias ``[out]``, a dropout key ``[]``).
    """
    need_state(state, "expected", "pass the state returned by init_fn (or gd.load)")
    have = {(layer, p): a for layer, ps in state.data.items() for p, a in ps.items()}
    check_keys(have, want, "the state", StateError,
                "initialize the state with init_fn(template, state) first")
    out = {}
    for key, a in have.items():
        arr = np.asarray(a)
        if not arr.flags.c_contiguous:
            arr = arr.copy(order="C")  # (np.ascontiguousarray would make 0-d arrays 1-d)
        check_array(key, arr.shape, arr.dtype.name, want, "the state", StateError)
        out[f"{key[0]}.{key[1]}"] = arr
    return out


#: bytes per element of every safetensors dtype code graphdsl can decode
ST_ITEMSIZE = {code: 2 if code == "BF16" else np.dtype(name).itemsize
               for code, name in ST_DTYPES.items()}
Entry = tuple[str, tuple[int, ...], int, int]  # (dtype code, shape, begin, end) in the data


def read_header(fh: BinaryIO, size: int, source: str, dtypes: Iterable[str] = ST_DTYPES
                ) -> tuple[dict[str, Entry], int]:
    """``({name: (dtype code, shape, begin, end)}, data start)`` of the safetensors file open
    as ``fh`` (``size`` bytes), reading only its header; the offsets are relative to the
    data start. Checked: the header's length, JSON and fields; each dtype one of ``dtypes``
    (else "unsupported dtype"); each tensor's byte span equal to its shape times its
    element size; spans contiguous, without overlap, covering the data exactly."""
    def bad(msg: str) -> SerializationError:
        return SerializationError(f"{source}: {msg}", fix="the weights are damaged; save the "
                                  "model again")

    dtypes = set(dtypes)
    first = fh.read(8)
    if len(first) < 8:
        raise bad("the weights are truncated (no safetensors header)")
    n = int.from_bytes(first, "little")
    if n < 2 or n > min(100 << 20, size - 8):
        raise bad(f"the safetensors header length {n} does not fit the {size}-byte data")
    header = parse_json(fh.read(n), f"{source} header")
    if not isinstance(header, dict):
        raise bad("the safetensors header is not a JSON object")
    data_len = size - 8 - n
    out: dict[str, Entry] = {}
    for key, v in header.items():
        if key == "__metadata__":
            if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
                raise bad("__metadata__ must map strings to strings")
            continue
        if not isinstance(v, dict) or set(v) != {"dtype", "shape", "data_offsets"}:
            raise bad(f"tensor {key!r} needs exactly dtype, shape, data_offsets")
        dt, shape, offs = v["dtype"], v["shape"], v["data_offsets"]
        if not isinstance(dt, str) or dt not in dtypes:
            raise SerializationError(
                f"{source}: tensor {key!r} has unsupported dtype {dt!r}",
                fix=f"graphdsl reads {', '.join(sorted(dtypes))}; convert the weights "
                    "(e.g. to float32 or bfloat16) and save them again")
        if not (isinstance(shape, list) and len(shape) <= 32 and all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise bad(f"tensor {key!r} has an invalid shape {shape!r}")
        if not (isinstance(offs, list) and len(offs) == 2 and all(
                isinstance(o, int) and not isinstance(o, bool) for o in offs)
                and 0 <= offs[0] <= offs[1] <= data_len):
            raise bad(f"tensor {key!r} has data offsets {offs!r} outside the "
                      f"{data_len}-byte data")
        nbytes = int(np.prod(shape, dtype=object) if shape else 1) * ST_ITEMSIZE[dt]
        if offs[1] - offs[0] != nbytes:
            raise bad(f"tensor {key!r} spans {offs[1] - offs[0]} bytes, its shape "
                      f"{fmt_shape(tuple(shape))} and dtype {dt} need {nbytes}")
        out[key] = (dt, tuple(shape), offs[0], offs[1])
    pos = 0
    for _, _, b, e in sorted(out.values(), key=lambda t: (t[2], t[3])):
        if b != pos:
            raise bad("the tensors' data overlap or leave a gap")
        pos = e
    if pos != data_len:
        raise bad(f"the data holds {data_len - pos} bytes no tensor uses")
    return out, 8 + n


def file_header(path: str) -> dict[str, Entry]:
    """The checked header of the ``.safetensors`` file ``path``, from its header only:
    ``{name: (dtype code, shape, begin, end)}`` with offsets from the file's start (BF16
    allowed, see ``map_tensors``); damage is a SerializationError naming the file."""
    with open(path, "rb") as fh:
        entries, start = read_header(fh, os.fstat(fh.fileno()).st_size,
                                     f"cannot read {os.path.basename(path)}")
    return {k: (dt, shape, start + b, start + e) for k, (dt, shape, b, e) in entries.items()}


def decode(buf: Any, entry: Entry, start: int = 0, widen_bf16: bool = False
           ) -> np.ndarray:
    """The array of ``entry`` (from ``read_header``) in ``buf`` (bytes, a read-only
    memoryview or mmap) whose offsets count from ``start``: a read-only view, no copy.
    Shape: the entry's. BF16 is ``ml_dtypes.bfloat16``, or with ``widen_bf16`` float32
    (a new array; exact: bfloat16's 16 bits are a float32's high half, and this path
    needs no ml_dtypes)."""
    dt, shape, b, e = entry
    if dt == "BF16" and widen_bf16:
        raw = np.frombuffer(buf, "<u2", (e - b) // 2, start + b)
        return bfloat16_bits_to_float32(raw).reshape(shape)
    code = np_dtype(ST_DTYPES[dt]).newbyteorder("<")
    return np.frombuffer(buf, code, (e - b) // ST_ITEMSIZE[dt], start + b).reshape(shape)


def map_tensors(entries: Mapping[str, tuple[str, Entry]], widen_bf16: bool = False
                ) -> dict[str, np.ndarray]:
    """``{name: array}`` of ``{name: (file path, its entry from file_header)}``, mapped from
    the files read-only (no copy; ``decode``, BF16 as bfloat16 unless ``widen_bf16``);
    each array has the entry's shape."""
    maps: dict[str, FileMap] = {}
    out = {}
    for key, (path, entry) in entries.items():
        if path not in maps:
            maps[path] = map_file(path)
        out[key] = decode(maps[path], entry, 0, widen_bf16)
    return out


def read_safetensors_file(path: str, widen_bf16: bool = True) -> dict[str, np.ndarray]:
    """``{name: array}`` of one ``.safetensors`` file, read with NumPy only (its header is
    checked first; bfloat16 is widened to float32 exactly unless ``widen_bf16`` is False)."""
    return map_tensors({k: (path, e) for k, e in file_header(path).items()}, widen_bf16)


def _parse_header(blob: Any, source: str
                  ) -> tuple[dict[tuple[str, str], Entry], int]:
    """``({(layer, param): entry}, data start)`` of safetensors bytes, checked ourselves."""
    n = int.from_bytes(bytes(blob[:8]), "little")
    head = io.BytesIO(bytes(blob[:8 + min(n, 100 << 20)]))
    entries, start = read_header(head, len(blob), source)
    out = {}
    for key, entry in entries.items():
        layer, dot, param = key.rpartition(".")  # layer names may hold dots, params not
        if not (layer and dot and param):
            raise SerializationError(f"{source}: tensor name {key!r} is not 'layer.param'",
                                     fix="the weights are damaged; save the model again")
        out[(layer, param)] = entry
    return out, start


def read_weights(blob: Any, want: Expected, source: str) -> dict[tuple[str, str], np.ndarray]:
    """Decode safetensors bytes (``bytes``, or a read-only memoryview of a mapped file),
    checking names, shapes and dtypes against ``want``.

    Returns ``{(layer, param): array}``, one NumPy array per key of ``want``, each of the
    shape and one of the dtypes ``want`` gives (float16 and bfloat16 as stored), a
    read-only view of ``blob`` (no copy). Any mismatch or damage is a SerializationError
    prefixed with ``source``.
    """
    header, start = _parse_header(blob, source)
    check_keys(header, want, source, SerializationError,
                "the weights do not belong to this model; save model and state together")
    for key, (dt, shape, _, _) in header.items():
        check_array(key, shape, ST_DTYPES[dt], want, source, SerializationError)
    return {key: decode(blob, entry, start) for key, entry in header.items()}


def encode_weights(tensors: dict[str, np.ndarray], kind: str) -> bytes:
    """safetensors bytes of ``{"layer.param": array}`` (arrays of any shape, C-contiguous,
    as ``state_tensors`` gives), with ``{"format": kind}`` as metadata."""
    return _safetensors().save(tensors, metadata={"format": kind})


def by_layer(arrays: Mapping[tuple[str, str], np.ndarray], keys: Iterable[tuple[str, str]]
             ) -> dict[str, dict[str, np.ndarray]]:
    """``{layer: {param: array}}`` of ``arrays`` (keyed ``(layer, param)``, as
    ``read_weights`` returns them), in the order of ``keys``; arrays keep their shapes."""
    data: dict[str, dict[str, np.ndarray]] = {}
    for layer, p in keys:
        data.setdefault(layer, {})[p] = arrays[(layer, p)]
    return data
