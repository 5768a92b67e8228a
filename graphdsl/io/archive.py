"""Safe reading and atomic writing of the zip archives graphdsl files are made of: reading
(``read_archive``) never extracts, unpickles or executes anything, checks the file kind,
member count and names (no traversal), compression, encryption, declared sizes and ratios
against ``LoadLimits``, and reads each member in bounded chunks that must match its
declared size and CRC (or maps a stored member read-only, ``read_archive``'s
``mapped``); writing (``atomic_writer``, ``write_archive``) goes through
a temp file renamed into place, with fixed timestamps (same content, same bytes).
"""
from __future__ import annotations

import contextlib
import os
import secrets
import stat
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from ..errors import GraphDSLError, SerializationError
from .filemap import map_file

# member names of the two file kinds (model file: gd.save; adapter file: gd.save_adapters)
MODEL_JSON = "model.json"
WEIGHTS = "weights.safetensors"
STATE_JSON = "state.json"
ADAPTERS_JSON = "adapters.json"
MODEL_MEMBERS = (MODEL_JSON, WEIGHTS, STATE_JSON)
ADAPTER_MEMBERS = (ADAPTERS_JSON, WEIGHTS)
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same model gives the same bytes


@dataclass(frozen=True)
class LoadLimits:
    """Bounds that make a hostile archive (zip bomb, huge JSON) fail fast, for ``gd.load``.

    Sizes are in bytes; ``max_ratio`` bounds uncompressed/compressed size for members larger
    than ``ratio_floor`` (the files graphdsl writes store weights uncompressed). The
    defaults are ``graphdsl.io.DEFAULT_LIMITS``.

    Attributes:
        max_file_bytes: the whole file (64 GiB).
        max_members: zip members (8).
        max_json_bytes: each JSON member (64 MiB).
        max_weights_bytes: the weights member (32 GiB).
        max_total_bytes: all members uncompressed (33 GiB).
        max_ratio: uncompressed/compressed size of a large member (200).
        ratio_floor: members below this size are not ratio-checked (1 MiB).

    Examples:
        >>> from graphdsl.io import LoadLimits
        >>> model = gd.dense(gd.input("x", shape=(None, 4)), 2)
        >>> _ = gd.save("m.gdsl", model, gd.build(model)[0](np.zeros((1, 4), np.float32)))
        >>> try:
        ...     gd.load("m.gdsl", limits=LoadLimits(max_file_bytes=100))
        ... except gd.errors.SerializationError:
        ...     print("refused")
        refused
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
def file_label(path: Any) -> str:
    """The file name of ``path`` (its last component), used to prefix messages."""
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
                 limits: LoadLimits | None = None, what: str = "model file",
                 mapped: str | None = None) -> dict[str, Any]:
    """Read exactly ``members`` from the zip at ``path`` with every safety check.

    Returns ``{member: bytes}``; the member ``mapped``, when stored uncompressed (as
    graphdsl writes weights), is instead a read-only memoryview of the file mapped into
    memory (zero-copy; its CRC is checked): a later save renames a new file over
    ``path``, which leaves the mapped bytes as they were. Raises SerializationError for
    anything else: a missing, empty, truncated or non-zip file, a pickle,
    unknown/duplicate/traversal member names, encrypted or exotic compression, sizes or
    ratios over ``limits``.
    """
    lim = limits or DEFAULT_LIMITS
    p = need_path(path, "graphdsl.io.read_archive")
    label = file_label(p)
    wanted = tuple(members)

    def bad(msg: str, fix: str) -> SerializationError:
        return SerializationError(f"{label}: {msg}", fix=fix)

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
            return _read_members(fh, wanted, lim, bad, what, mapped)
    except GraphDSLError:
        raise
    except MemoryError:
        raise bad("not enough memory to read the file", "free memory") from None
    except Exception as e:  # zipfile/zlib/OSError/...: a corrupt or truncated archive
        raise bad(f"corrupt or truncated archive ({type(e).__name__}: {str(e)[:200]})",
                  "the file is damaged; save the model again") from None


def _read_members(fh: Any, wanted: tuple[str, ...], lim: LoadLimits, bad: Any,
                  what: str, mapped: str | None) -> dict[str, Any]:
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
        return {name: _mapped_member(fh, info, bad)
                if name == mapped and info.compress_type == zipfile.ZIP_STORED
                else _bounded_read(zf, info, bad) for name, info in seen.items()}


def _mapped_member(fh: Any, info: zipfile.ZipInfo, bad: Any) -> memoryview:
    """The bytes of the stored member ``info`` as a read-only view of the file ``fh``
    mapped into memory: found after its local header, checked against its CRC."""
    fh.seek(info.header_offset)
    local = fh.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise bad(f"member {info.filename!r} has no local header (corrupt archive)",
                  "the file is damaged; save the model again")
    start = (info.header_offset + 30 + int.from_bytes(local[26:28], "little")
             + int.from_bytes(local[28:30], "little"))
    view = memoryview(map_file(fh.name, fh))
    if start + info.file_size > len(view):
        raise bad(f"member {info.filename!r} is truncated", "save the model again")
    view = view[start:start + info.file_size]
    if zlib.crc32(view) != info.CRC:
        raise bad(f"member {info.filename!r} fails its CRC check (corrupt or hostile)",
                  "the file is damaged; save the model again")
    return view


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


def zip_to(fh: BinaryIO, members: Mapping[str, tuple[bytes, int]]) -> None:
    """Write ``{name: (bytes, compression)}`` as a zip with fixed timestamps to ``fh``."""
    with zipfile.ZipFile(fh, "w") as zf:
        for name, (blob, method) in members.items():
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = method
            info.external_attr = 0o644 << 16
            zf.writestr(info, blob)


def write_archive(path: str, members: Mapping[str, tuple[bytes, int]],
                  what: str = "gd.save") -> str:
    """Write ``{name: (bytes, compression)}`` atomically (``atomic_writer``) to
    ``path`` (a ``need_path`` result); returns ``path``."""
    with atomic_writer(path, what) as fh:
        zip_to(fh, members)
    return path

