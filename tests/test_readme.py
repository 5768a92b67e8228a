"""The README and every page of docs/ are true as written: every ```python block runs, in
order, in a fresh folder
(a block may use what an earlier block of the page defined, as a reader would), and the
results the page shows are checked:

- an expression statement whose comment starts with a Python literal (``x.shape  # (8,
  4), ...``, ``# True``, ``# {"rank": 8}``) must evaluate to it (a ``print(...)`` must
  print it); a node's comment ``# #Node<...>`` must be its repr;
- a plain ````` ``` ````` block right after a python block is what that block prints.

A block right after ``<!-- skip: reason -->`` is not run; the page says why.
"""
from __future__ import annotations

import ast
import contextlib
import glob
import io
import os
import re
import tokenize
from dataclasses import dataclass

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: README.md and every docs page with a python block (the API pages have none of their own)
PAGES = ["README.md"] + sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "**", "*.md"),
                                                 recursive=True)
    if re.search(r"^```python$", open(p, encoding="utf-8").read(), re.M))


@dataclass
class Block:
    line: int  # of the opening fence
    code: str
    skip: str | None  # the reason, from <!-- skip: reason -->
    shown: str | None  # the plain block printed right after it, if any


def python_blocks(text: str) -> list[Block]:
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() != "```python":
            i = _fence_end(lines, i) + 1 if lines[i].startswith("```") else i + 1
            continue
        end = _fence_end(lines, i)
        before = lines[i - 1].strip() if i else ""
        skip = re.fullmatch(r"<!--\s*skip:\s*(.*?)\s*-->", before)
        shown = None
        if end + 1 < len(lines) and lines[end + 1].strip() == "```":
            shown = "\n".join(lines[end + 2:_fence_end(lines, end + 1)])
        blocks.append(Block(i + 1, "\n".join(lines[i + 1:end]) + "\n",
                            skip and skip.group(1), shown))
        i = end + 1
    return blocks


def _fence_end(lines: list[str], start: int) -> int:
    """Index of the line closing the fence opened at ``start``."""
    for j in range(start + 1, len(lines)):
        if lines[j].strip() == "```":
            return j
    raise AssertionError(f"unclosed ``` fence at line {start + 1}")


def comments(code: str) -> dict[int, str]:
    """{line: comment text after '#'} of a block."""
    toks = tokenize.generate_tokens(io.StringIO(code).readline)
    return {t.start[0]: t.string[1:].strip() for t in toks if t.type == tokenize.COMMENT}


def claim(comment: str) -> tuple[str, object] | None:
    """What a comment says an expression gives: ("repr", text) for a node's repr,
    ("value", literal) for the longest literal the comment starts with (up to ',', ':',
    ';' or a space), or None (prose)."""
    if comment.startswith("#Node<"):
        return "repr", comment
    for end in range(len(comment), 0, -1):
        if end < len(comment) and comment[end] not in ",:; ":
            continue
        try:
            return "value", ast.literal_eval(comment[:end].rstrip(",:;"))
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            pass
    return None


def same(value: object, expected: object) -> bool:
    if isinstance(expected, bool) or isinstance(value, (bool, np.bool_)):
        return isinstance(value, (bool, np.bool_)) and bool(value) is expected
    if isinstance(expected, tuple) and not isinstance(value, tuple):
        try:
            value = tuple(value)  # a shape
        except TypeError:
            return False
    return bool(value == expected)


def run_block(block: Block, ns: dict, where: str) -> str:
    """Runs the block one statement at a time; returns what it printed."""
    said = comments(block.code)
    out = io.StringIO()
    for stmt in ast.parse(block.code).body:
        line = f"{where}:{block.line + stmt.lineno}"
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            try:
                if isinstance(stmt, ast.Expr):
                    value = eval(compile(ast.Expression(stmt.value), line, "eval"), ns)
                else:
                    exec(compile(ast.Module([stmt], []), line, "exec"), ns)
            except Exception as e:
                raise AssertionError(f"{line}: {ast.unparse(stmt)[:200]}\nraised "
                                     f"{type(e).__name__}: {e}") from e
        out.write(printed.getvalue())
        said_here = claim(said.get(stmt.end_lineno, ""))
        if not isinstance(stmt, ast.Expr) or said_here is None:
            continue
        kind, expected = said_here
        if isinstance(stmt.value, ast.Call) and ast.unparse(stmt.value.func) == "print":
            got = printed.getvalue().strip()
            printed_claim = claim(got)
            ok = got == expected if kind == "repr" else (
                printed_claim is not None and same(printed_claim[1], expected))
            assert ok, f"{line}: printed {got!r}, the page says {said[stmt.end_lineno]!r}"
        elif kind == "repr":
            assert repr(value) == expected, f"{line}: {repr(value)!r}, the page says {expected!r}"
        else:
            assert same(value, expected), f"{line}: {value!r}, the page says {expected!r}"
    return out.getvalue()


def test_claims_are_read_from_comments():
    assert claim("(8, 4), before anything runs") == ("value", (8, 4))
    assert claim("(16, 32): Axon layout [in, out]") == ("value", (16, 32))
    assert claim('{"rank": 8, "alpha": 16.0}') == ("value", {"rank": 8, "alpha": 16.0})
    assert claim("#Node<out>") == ("repr", "#Node<out>")
    assert claim("concrete shapes; omit inputs for symbolic") is None
    assert same((8, 4), (8, 4)) and same(np.float32(0.5), 0.5) and same(np.bool_(True), True)
    assert not same(1, True) and not same(True, 1) and not same((8, 5), (8, 4))
    blocks = python_blocks("a\n<!-- skip: needs a GPU -->\n```python\nx = 1\n```\n```\n1\n```\n"
                           "```bash\nls\n```\n```python\nprint(2)  # 2\n```\n")
    assert [(b.line, b.code, b.skip, b.shown) for b in blocks] == [
        (3, "x = 1\n", "needs a GPU", "1"), (12, "print(2)  # 2\n", None, None)]
    with pytest.raises(AssertionError, match="the page says"):
        run_block(Block(1, "1 + 1  # 3\n", None, None), {}, "page")


@pytest.mark.parametrize("page", PAGES)
def test_page_blocks_run_as_written(page, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("onnxruntime")
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        blocks = python_blocks(f.read())
    assert blocks, f"{page} has no python blocks"
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "__readme__"}
    for block in blocks:
        if block.skip:
            continue
        printed = run_block(block, ns, page)
        if block.shown is not None:
            assert [s.rstrip() for s in printed.strip("\n").splitlines()] == \
                [s.rstrip() for s in block.shown.strip("\n").splitlines()], \
                f"{page}:{block.line}: the block prints\n{printed}"
