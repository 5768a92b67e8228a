"""The API reference covers the whole public surface (issue 25.4).

1. Every public name (``graphdsl.__all__`` and the public functions of the modules DESIGN.md
   section 3 names) is rendered by a ``::: path`` directive of a ``docs/api/*.md`` page,
   directly or as a member of a module directive.
2. Every public callable has a Google-style docstring (mkdocstrings' default parser): a
   summary, ``Args:`` naming every parameter of its signature, ``Returns:``, ``Raises:``
   (but the few in :data:`RAISE_NOTHING`) and ``Examples:``; a public class has a summary
   and ``Examples:``, its public methods ``Args:`` (when they take any) and ``Returns:``.
3. Every ``Examples:`` section has ``>>>`` lines, and each runs and prints what it shows
   (doctest, with ``np`` and ``gd`` in scope as the reference's index page says).

Each test lists every offender, so one run shows all that is missing. Objects are read
with ``inspect`` and the pages with a regex (no mkdocs needed); an example that needs an
optional package which is not installed (torch, onnx, transformers) is skipped with a
warning naming it, any other failing example fails the test.
"""
from __future__ import annotations

import dataclasses
import doctest
import importlib
import inspect
import os
import re
import sys
import warnings

import numpy as np
import pytest

import graphdsl as gd
from graphdsl import custom

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
API = os.path.join(ROOT, "docs", "api")

#: module -> its public names (None: the module's ``__all__``)
SURFACE: dict[str, list[str] | None] = {
    "graphdsl": None,
    "graphdsl.hf": None,
    "graphdsl.dora": ["build", "dora_layer", "wrap", "output_size", "recommended_defaults",
                      "adapt"],
    "graphdsl.lora": ["build", "lora_layer", "wrap", "output_size", "recommended_defaults",
                      "adapt", "loraplus_param_groups"],
    "graphdsl.mixed_precision": None,
    "graphdsl.generate": ["generate", "decoder", "optimum_name"],
    "graphdsl.models": None,
    "graphdsl.dtypes": ["np_dtype", "dtype_name", "is_float"],
    "graphdsl.display": None,
    "graphdsl.registry": ["ParamSpec", "OpDef"],  # the types of gd.OPS and gd.get_parameters
    "graphdsl.io": ["LoadLimits", "DEFAULT_LIMITS"],  # gd.load's limits=
    "graphdsl.errors": ["GraphDSLError", "ShapeError", "OptionError", "LayerNameError",
                        "InputError", "StateError", "ImmutableStateError", "BackendError",
                        "SerializationError"],
}
#: public functions that raise nothing (every other one has a ``Raises:`` section)
RAISE_NOTHING = {"graphdsl.dora.recommended_defaults", "graphdsl.lora.recommended_defaults",
                 "graphdsl.generate.optimum_name"}
#: how a run without an optional package fails (``ImportError``, or graphdsl's error naming
#: the extra to install)
MISSING_PACKAGE = re.compile(r"No module named|pip install 'graphdsl\[")
SECTION = re.compile(r"^(Args|Returns|Raises|Example|Examples|Attributes|Yields|Note):\s*$")


def module(name: str):
    importlib.import_module(name)
    return sys.modules[name]  # graphdsl.generate is also a function of graphdsl


def public() -> dict[str, object]:
    """``{"graphdsl.hf.from_pretrained": object, ...}`` of the whole public surface."""
    out = {}
    for mod, names in SURFACE.items():
        m = module(mod)
        for n in names if names is not None else m.__all__:
            try:
                out[f"{mod}.{n}"] = getattr(m, n)
            except gd.GraphDSLError:  # gd.to_torch & co. without torch: nothing to read
                continue
    return out


def resolve(path: str):
    """The object a directive's dotted path names (a module, or an attribute of one)."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = module(".".join(parts[:i]))
        except ModuleNotFoundError as e:
            if e.name != ".".join(parts[:i]):
                raise  # the module exists but needs a package that is not installed
            continue
        for p in parts[i:]:
            obj = getattr(obj, p)
        return obj
    raise LookupError(path)


def directives() -> list[tuple[str, list[str] | None]]:
    """``[(path, members or None)]`` of every ``::: path`` in docs/api/*.md; ``members``
    is the directive's ``members: [...]`` option when it has one."""
    out = []
    for f in sorted(os.listdir(API)):
        if not f.endswith(".md"):
            continue
        text = open(os.path.join(API, f), encoding="utf-8").read()
        for m in re.finditer(r"^::: *([\w.]+)\n((?:[ \t]+\S.*\n?)*)", text, re.M):
            mem = re.search(r"members:\s*\[([^\]]*)\]", m.group(2))
            out.append((m.group(1), [s.strip() for s in mem.group(1).split(",") if s.strip()]
                        if mem else None))
    return out


def rendered() -> set[int]:
    """The ids of the objects the pages render (a module directive without ``members``
    renders its ``__all__``, or the public functions and classes it defines)."""
    ids = set()
    for path, members in directives():
        try:
            obj = resolve(path)
        except ImportError:
            continue
        ids.add(id(obj))
        if inspect.ismodule(obj):
            names = members if members is not None else getattr(obj, "__all__", [
                n for n, v in vars(obj).items() if not n.startswith("_")
                and getattr(v, "__module__", None) == obj.__name__])
            ids.update(id(getattr(obj, n)) for n in names)
        elif inspect.isclass(obj) and members:
            ids.update(id(getattr(obj, n)) for n in members)
    return ids


def test_every_public_name_is_in_the_api_reference():
    assert os.path.isdir(API), "docs/api/ is missing"
    found, broken = {}, []
    for path, _ in directives():
        try:
            found[path] = resolve(path)
        except (LookupError, AttributeError):
            broken.append(path)
        except ImportError:  # a module of an optional extra that is not installed
            continue
    assert not broken, f"directives naming nothing: {broken}"
    # gd.block, gd.nx, gd.generate, models.llama ... are functions that shadow modules of
    # their name; mkdocstrings reads such a path as the module, so a page must name the
    # function by its own module's path
    ambiguous = [p for p, obj in found.items() if "." in p and inspect.ismodule(obj)
                 and getattr(resolve(p.rsplit(".", 1)[0]), p.rsplit(".", 1)[1]) is not obj]
    assert not ambiguous, f"these name a module shadowed by a function: {ambiguous}"
    seen = rendered()
    missing = sorted(k for k, v in public().items() if id(v) not in seen)
    assert not missing, f"{len(missing)} public names in no docs/api page: {missing}"


def sections(doc: str) -> dict[str, list[str]]:
    """``{section title: its lines}`` of a Google-style docstring ("" is the summary)."""
    out: dict[str, list[str]] = {"": []}
    cur = ""
    for line in doc.splitlines():
        m = SECTION.match(line)
        if m:
            cur = m.group(1)
            out[cur] = []
        else:
            out[cur].append(line)
    return out


def arg_names(lines: list[str]) -> set[str]:
    """The parameter names an ``Args:`` section documents (``name (type): text``)."""
    return {m.group(1) for ln in lines if (m := re.match(r"^ {4}\*{0,2}(\w+)[^:]*:", ln))}


def params(fn) -> list[str]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    return [p for p in sig.parameters if p not in ("self", "cls")]


def problems(name: str, obj, kind: str = "function") -> list[str]:
    doc = inspect.getdoc(obj)
    if not doc or not doc.strip():
        return [f"{name}: no docstring"]
    s = sections(doc)
    out = []
    need = ["Examples"] if kind == "class" else (["Returns"] if kind == "property" else [])
    if kind in ("function", "method"):
        need = ["Returns"] + (["Examples"] if kind == "function" else [])
        if kind == "function" and name not in RAISE_NOTHING:
            need.append("Raises")
        names = params(obj)
        if names:
            undocumented = [p for p in names if p not in arg_names(s.get("Args", []))]
            if "Args" not in s:
                out.append(f"{name}: no Args section")
            elif undocumented:
                out.append(f"{name}: Args lacks {undocumented}")
    out += [f"{name}: no {k} section" for k in need if k not in s]
    if "Examples" in s and not any(ln.lstrip().startswith(">>>") for ln in s["Examples"]):
        out.append(f"{name}: its Examples have no >>> line (so no test runs them)")
    if "Example" in s:  # griffe renders "Examples:" as code, "Example:" as prose
        out.append(f"{name}: write 'Examples:', not 'Example:'")
    return out


def methods(cls) -> list[tuple[str, object, str]]:
    """The public methods and properties ``cls`` defines (a dataclass field whose default
    is a function is a field, not a method)."""
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    out = []
    for k, v in vars(cls).items():
        if k.startswith("_") or k in fields:
            continue
        if isinstance(v, property):
            out.append((k, v.fget, "property"))
        elif isinstance(v, (classmethod, staticmethod)):
            out.append((k, v.__func__, "method"))
        elif inspect.isfunction(v):
            out.append((k, v, "method"))
    return out


def test_every_public_callable_has_a_full_docstring():
    bad = []
    for name, obj in public().items():
        if inspect.isclass(obj):
            bad += problems(name, obj, "class")
            if not issubclass(obj, gd.GraphDSLError):
                for k, m, kind in methods(obj):
                    if kind == "property" and k == "state":
                        continue  # a deprecated alias, documented as such
                    bad += problems(f"{name}.{k}", m, kind)
        elif callable(obj) and not inspect.ismodule(obj):
            bad += problems(name, obj)
    assert not bad, f"{len(bad)} docstring problems:\n" + "\n".join(bad)


def examples() -> list[tuple[str, doctest.DocTest]]:
    finder = doctest.DocTestFinder(recurse=False)
    out = []
    for name, obj in public().items():
        if inspect.ismodule(obj) or not (callable(obj) or inspect.isclass(obj)):
            continue
        objs = [(name, obj)] + ([(f"{name}.{k}", m) for k, m, _ in methods(obj)]
                                if inspect.isclass(obj) else [])
        for n, o in objs:
            for t in finder.find(o, n, globs={"np": np, "gd": gd}):
                if t.examples:
                    out.append((n, t))
    return out


def test_examples_run(tmp_path, monkeypatch):
    """Every ``>>>`` example of the public surface, run as the reader would."""
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    for registry in ("FUNCTIONS", "ONNX_RULES"):  # examples register functions: undo it
        monkeypatch.setattr(custom, registry, dict(getattr(custom, registry)))
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    found = examples()
    assert len(found) > 100, f"only {len(found)} docstrings with examples"
    failed, missing = [], []
    for name, t in found:
        out: list[str] = []
        r = runner.run(t, out=out.append)
        text = "".join(out)
        if r.failed and MISSING_PACKAGE.search(text):
            missing.append(name)  # an optional extra (torch, onnx, ...) is not installed
        elif r.failed:
            failed.append(f"--- {name}\n{text}")
    assert not failed, f"{len(failed)} examples fail:\n" + "\n".join(failed)
    if missing:
        warnings.warn(f"examples skipped, an optional package is missing: {missing}",
                      stacklevel=1)


@pytest.mark.parametrize("doc,expected", [
    ("Sum.\n\nArgs:\n    x (Node): a.\n    *rest: b.\n\nReturns:\n    Node.", {"x", "rest"}),
])
def test_the_args_parser_reads_google_style(doc, expected):
    assert arg_names(sections(doc)["Args"]) == expected
