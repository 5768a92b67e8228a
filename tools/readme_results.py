"""Writes the README's headline results from ``benchmarks/RESULTS.md``, the one source of
every benchmark figure: a few chosen rows (ratio, goal, met or missed) and a count of the
goals met and missed over all rows, between the markers ``<!-- results:start -->`` and
``<!-- results:end -->`` of README.md.

    python tools/readme_results.py          # rewrite the README's rows
    python tools/readme_results.py --check  # exit 1 if they differ from RESULTS.md

``tests/test_readme_results.py`` fails when the README's rows are not what this writes.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
README = ROOT / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"

#: (section of RESULTS.md, its "benchmark" cell, what the README calls it)
HEADLINES = [
    ("bench_core", "MLP 784-512-512-10 predict, batch 256",
     "NumPy backend, MLP 784-512-512-10 batch 256, vs hand-written NumPy"),
    ("bench_llama", "LLaMA 512x2 layers, batch 4x128: NumPy forward",
     "NumPy backend, LLaMA forward (512 wide, 2 layers), vs transformers eager"),
    ("bench_llama_dora", "LLaMA 512x2 DoRA r=16 train step, batch 4x128, vs LoRA",
     "DoRA training step of that LLaMA through `to_torch`, vs PEFT's LoRA step"),
    ("bench_llama_dora", "LLaMA 512x2 DoRA r=16 train step, batch 4x128: peak memory",
     "peak memory of that step, vs PEFT's DoRA step"),
    ("bench_generate",
     "LLaMA 512x4 layers, vocab 32000, prompt 16: numpy gd.generate, time per token (256 new)",
     "`gd.generate` on NumPy, time per token, vs transformers' `generate`"),
    ("bench_conv", "conv 3x3 32x32x64->64 b=32: NumPy backend",
     "NumPy conv 3x3 32x32x64 -> 64 batch 32, vs `torch.nn.functional.conv2d`"),
]


@dataclass(frozen=True)
class Row:
    section: str
    benchmark: str
    reference: str
    ratio: str
    goal: str
    status: str  # "ok", "MISSED" or "" (no goal)


def parse(text: str) -> list[Row]:
    """Every row of every ``| benchmark | ours | reference | ratio | goal | |`` table."""
    rows, section, in_table = [], "", False
    for line in text.splitlines():
        if line.startswith("## "):
            section, in_table = line[3:].strip(), False
        elif line.startswith("| benchmark | ours | reference | ratio | goal |"):
            in_table = True
        elif in_table and line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) != 6:
                raise ValueError(f"RESULTS.md, {section}: a row without 6 cells: {line}")
            rows.append(Row(section, cells[0], cells[2], cells[3], cells[4], cells[5]))
        elif in_table and not line.startswith("|"):
            in_table = False
    return rows


def find(rows: list[Row], section: str, benchmark: str) -> Row:
    for r in rows:
        if r.section == section and r.benchmark == benchmark:
            return r
    raise KeyError(f"benchmarks/RESULTS.md has no row {benchmark!r} in {section}; "
                   "update HEADLINES in tools/readme_results.py")


def block(text: str) -> str:
    """The README's results block (without the markers) for RESULTS.md's ``text``."""
    rows = parse(text)
    head = text.split("\n## ", 1)[0]
    dates = sorted(set(re.findall(r"\d{4}-\d\d-\d\d", head)))
    when = f" (run of {dates[0]})" if len(dates) == 1 else \
        f" (runs of {dates[0]} to {dates[-1]})" if dates else ""
    lines = ["| benchmark | ratio (ours / reference) | goal | |", "|---|---|---|---|"]
    for section, benchmark, label in HEADLINES:
        r = find(rows, section, benchmark)
        met = {"ok": "met", "MISSED": "**missed**"}.get(r.status, "")
        lines.append(f"| {label} | {r.ratio} | {r.goal} | {met} |")
    goals = [r for r in rows if r.goal not in ("", "-")]
    missed = [r for r in goals if r.status == "MISSED"]
    by = sorted({r.section for r in missed})
    lines += ["", f"Of the {len(goals)} rows with a goal in `benchmarks/RESULTS.md`"
              f"{when}, "
              f"{len(goals) - len(missed)} meet it and {len(missed)} miss it"
              + (f" ({', '.join(f'`{s}`' for s in by)})." if by else ".")]
    return "\n".join(lines)


def rewrite(readme: str, new_block: str) -> str:
    if readme.count(START) != 1 or readme.count(END) != 1:
        raise ValueError(f"README.md needs one {START} and one {END}")
    head, rest = readme.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{new_block}\n{END}{tail}"


def main(argv: list[str]) -> int:
    readme = README.read_text(encoding="utf-8")
    new = rewrite(readme, block(RESULTS.read_text(encoding="utf-8")))
    if "--check" in argv:
        if new != readme:
            print("README.md's results differ from benchmarks/RESULTS.md: "
                  "run python tools/readme_results.py", file=sys.stderr)
            return 1
        return 0
    if new != readme:
        README.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
