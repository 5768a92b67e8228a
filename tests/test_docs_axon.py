"""docs/axon.md, the "Axon to graphdsl" page: it has a row for every public function of
Axon's lib/axon.ex (the list below is Axon's at commit dfec027, March 2026, its `def`s plus
the ones its `for` loops generate), and every ``gd.<name>`` it names exists."""
from __future__ import annotations

import re
from pathlib import Path

import graphdsl as gd

PAGE = Path(__file__).resolve().parents[1] / "docs" / "axon.md"

AXON_DEFS = """activation attach_hook bias bidirectional bilinear block blur_pool build compile
concatenate cond constant container conv conv_lstm conv_transpose dense depthwise_conv
embedding flatten freeze get_inputs get_op_counts get_options get_output_shape get_parameters
group_norm gru init input layer lstm map_nodes mask nx optional or_else pad param parameter
pop_node predict properties reduce_nodes reshape resize rewrite_nodes rms_norm
separable_conv2d separable_conv3d set_options set_parameters split stack_columns
trace_backward trace_forward trace_init transpose unfreeze""".split()
AXON_GENERATED = """celu elu exp gelu hard_sigmoid hard_silu hard_tanh leaky_relu linear log_sumexp
log_sigmoid log_softmax mish relu relu6 sigmoid silu selu softmax softplus softsign tanh
dropout feature_alpha_dropout spatial_dropout alpha_dropout max_pool avg_pool lp_pool
adaptive_avg_pool adaptive_max_pool adaptive_lp_pool global_avg_pool global_max_pool
global_lp_pool batch_norm instance_norm layer_norm add subtract multiply""".split()


def _rows() -> list[tuple[str, str]]:
    rows = []
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 3 and not set(cells[0]) <= {"-"}:
            rows.append((cells[0], cells[1]))
    return rows


def test_every_axon_function_has_a_row():
    axon_column = " ".join(axon for axon, _ in _rows())
    named = set(re.findall(r"[a-z_0-9]+", axon_column))
    missing = sorted(set(AXON_DEFS + AXON_GENERATED) - named)
    assert not missing, f"docs/axon.md has no row for Axon's {missing}"


def test_every_graphdsl_name_on_the_page_exists():
    text = PAGE.read_text(encoding="utf-8")
    names = sorted(set(re.findall(r"gd\.([a-z_][a-z_0-9.]*)", text)))
    assert len(names) > 40
    for name in names:
        obj = gd
        for part in name.rstrip(".").split("."):
            assert hasattr(obj, part), f"docs/axon.md names gd.{name}, which does not exist"
            obj = getattr(obj, part)
