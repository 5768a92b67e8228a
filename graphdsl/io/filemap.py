"""Weight files mapped into memory: read-only maps for state values (no copy on load), and
copy-on-write views of the same bytes for whoever needs writable memory (a torch module's
parameters) without a second copy of the weights: pages are shared until written, and a
write lands in a private page, so neither the file nor the state sees it."""
from __future__ import annotations

import contextlib
import mmap
import os
from typing import Any

import numpy as np


class FileMap(mmap.mmap):
    """A read-only map of a whole file that remembers which file it maps (``path`` and
    the file's identity at mapping time)."""

    path: str
    ident: tuple[int, int, int]


def _ident(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_dev, st.st_ino, st.st_size


def map_file(path: str, fh: Any = None) -> FileMap:
    """The file at ``path`` mapped read-only (``mmap.ACCESS_READ``); ``fh``: that file
    already open (mapped as it is, whatever ``path`` names now)."""
    with contextlib.nullcontext(fh) if fh is not None else open(path, "rb") as f:
        m = FileMap(f.fileno(), 0, access=mmap.ACCESS_READ)
        m.path, m.ident = os.path.abspath(path), _ident(os.fstat(f.fileno()))
    return m


def _file_map(arr: np.ndarray) -> FileMap | None:
    a = arr
    while isinstance(a, np.ndarray):
        a = a.base
    if isinstance(a, memoryview):
        a = a.obj
    return a if isinstance(a, FileMap) else None


def private_view(arr: np.ndarray) -> np.ndarray | None:
    """A writable array of ``arr``'s shape, dtype and strides over a copy-on-write map of
    the file bytes ``arr`` views (nothing is copied until written; writes stay private),
    or None when ``arr`` is not a view of a :class:`FileMap`, or the file at its path is
    no longer the one mapped (a save renamed a new file over it)."""
    fm = _file_map(arr)
    if fm is None or arr.size == 0:
        return None
    off = arr.ctypes.data - np.frombuffer(fm, np.uint8).ctypes.data
    lo = off + sum(min(0, s * (n - 1)) for s, n in zip(arr.strides, arr.shape))
    hi = off + sum(max(0, s * (n - 1)) for s, n in zip(arr.strides, arr.shape)) \
        + arr.itemsize
    start = lo // mmap.ALLOCATIONGRANULARITY * mmap.ALLOCATIONGRANULARITY
    try:
        fd = os.open(fm.path, os.O_RDONLY)
    except OSError:
        return None
    try:
        if _ident(os.fstat(fd)) != fm.ident:
            return None
        m = mmap.mmap(fd, hi - start, flags=mmap.MAP_PRIVATE,
                      prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=start)
    finally:
        os.close(fd)
    return np.ndarray(arr.shape, arr.dtype, buffer=m, offset=off - start, strides=arr.strides)
