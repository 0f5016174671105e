"""ONNX conformance node cases through validate -> make_plan -> LocalPipeline (``conformance.py``).

CI runs the modules below: the integer and unsigned types that once raised KeyError, reductions and
slices whose axes arrive as data (bounded by their input), the newest opsets, ops admitted since, and
data-sized ops that must stay refused. ``bench/conformance_sweep.py`` runs every case onnx generates.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conformance import generate, run  # noqa: E402

MODULES = [
    "add", "sub", "mul", "div", "mod", "max", "min", "equal", "greater", "bitshift", "bitwiseand", "clip",
    "where", "gather", "concat", "constant", "cumsum", "cumprod", "argmax",
    "reducesum", "reducemax", "reducel2", "reducesumsquare", "slice", "split", "squeeze", "unsqueeze",
    "groupnormalization", "rmsnormalization", "swish", "layernormalization", "softmax_cross_entropy_loss",
    "nonzero", "unique", "compress", "expand", "tile", "topk", "onehot",
]
# Refusals that are the point: data-sized outputs, strings, and ops/domains/opsets outside the allow-list.
EXPECTED_REFUSALS = {"DisallowedOp", "UnboundedDimension", "BadOpset", "DisallowedDomain", "StringTensor"}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return run(generate(MODULES), tmp_path_factory.mktemp("conformance"))


def test_every_case_onnxruntime_runs_is_run_or_refused_with_a_typed_error(sweep):
    assert not sweep.failures, "\n".join(f"{n}: {why}" for n, why in sweep.failures)
    assert {cls for cls, _ in sweep.rejected} <= EXPECTED_REFUSALS, sweep.rejected
    assert sweep.outcomes["match"] >= 350, sweep.outcomes


def test_integer_types_and_data_axes_run(sweep):
    """Cases the issue found refused or crashing: all run now and match onnxruntime."""
    for name in ("test_add_int16", "test_add_uint16", "test_add_uint32", "test_add_uint64", "test_mul_uint64",
                 "test_max_uint32", "test_min_uint64", "test_mod_mixed_sign_int16", "test_bitshift_left_uint16",
                 "test_equal_uint64", "test_reduce_sum_keepdims_example", "test_reduce_sum_do_not_keepdims_random",
                 "test_slice_start_out_of_bounds", "test_split_variable_parts_1d_opset18", "test_unsqueeze_two_axes",
                 "test_squeeze", "test_group_normalization_example", "test_swish", "test_cumprod_1d"):
        assert sweep.by_case.get(name) == "match", (name, sweep.by_case.get(name))


def test_data_sized_outputs_stay_refused(sweep):
    for name in ("test_nonzero_example", "test_unique_sorted_with_axis", "test_expand_dim_changed",
                 "test_tile", "test_top_k", "test_compress_0"):
        assert sweep.by_case.get(name, "").startswith("rejected"), (name, sweep.by_case.get(name))
