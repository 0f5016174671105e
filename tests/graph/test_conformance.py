"""ONNX conformance node cases through validate -> make_plan -> LocalPipeline (``conformance.py``).

CI runs a few cases of each module below (the first ``PER_MODULE`` and every case named in a test): the
integer and unsigned types that once raised KeyError, reductions and slices whose axes arrive as data
(bounded by their input), the newest opsets, the attention ops, outputs sized by data but bounded by their
input, old opsets upgraded by onnx's version converter, value-sized ops run once the harness declares their inputs'
value ranges, and what must stay refused.
``bench/byo_models.py`` runs every case onnx generates.
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
    "nonzero", "unique", "compress", "expand", "tile", "topk", "onehot", "reshape", "nonmaxsuppression",
    "attention", "linear_attention", "causal_conv_with_state", "tensorscatter", "and_", "scan", "dropout", "upsample",
    "resize", "pad", "col2im", "center_crop_pad", "constantofshape", "affinegrid", "stft", "dft", "maxunpool",
]
PER_MODULE = 4
RUN = {
    # integer and unsigned types, data axes, newest opsets
    "test_add_int16", "test_add_uint16", "test_add_uint32", "test_add_uint64", "test_mul_uint64", "test_max_uint32",
    "test_min_uint64", "test_mod_mixed_sign_int16", "test_bitshift_left_uint16", "test_equal_uint64",
    "test_reduce_sum_keepdims_example", "test_reduce_sum_do_not_keepdims_random", "test_slice_start_out_of_bounds",
    "test_split_variable_parts_1d_opset18", "test_unsqueeze_two_axes", "test_squeeze", "test_group_normalization_example",
    "test_swish", "test_cumprod_1d",
    # outputs sized by data, bounded by their input
    "test_nonzero_example", "test_unique_sorted_with_axis", "test_unique_not_sorted_without_axis", "test_top_k",
    "test_compress_0", "test_compress_default_axis", "test_nonmaxsuppression_two_batches",
    "test_reshape_reordered_all_dims", "test_reshape_zero_and_negative_dim",
    # attention ops (hidden score memory counted), state in and out
    "test_attention_4d", "test_attention_4d_gqa", "test_attention_3d_with_past_and_present",
    "test_attention_4d_with_past_and_present_qk_matmul", "test_linear_attention_gated_delta_gqa",
    "test_causal_conv_with_state_with_past_state", "test_tensorscatter_circular",
    # a Scan body reading the outer graph's constants, some folded from shapes (function-expanded LinearAttention)
    "test_linear_attention_linear_expanded", "test_linear_attention_gated_delta_gqa_expanded",
    # opsets below 13, upgraded by onnx's version converter (a Scan 8 over one sequence keeps its batch axis)
    "test_and2d", "test_scan9_sum", "test_dropout_default_old", "test_scan_sum",
}
# Outputs sized by the values of a graph input: run once the harness declares the input's range (from the
# case's feeds, as a user told to would), and a feed beyond it is refused by the pipeline.
DECLARED = {
    "test_expand_dim_changed", "test_tile", "test_upsample_nearest", "test_resize_upsample_scales_nearest",
    "test_resize_downsample_sizes_nearest_not_smaller", "test_resize_tf_crop_and_resize", "test_edge_pad",
    "test_constantofshape_int_zeros", "test_col2im", "test_center_crop_pad_crop", "test_affine_grid_3d", "test_stft",
    "test_dft_rfft", "test_maxunpool_export_with_output_shape",
}
REFUSED = {
    # the expanded function reads the padded tensor's Shape, so its size would become a value
    "test_center_crop_pad_crop_expanded": "UnboundedDimension",
}
# Refusals that are the point: value-sized outputs, strings, and ops/domains/opsets outside the allow-list.
EXPECTED_REFUSALS = {"DisallowedOp", "UnboundedDimension", "BadOpset", "DisallowedDomain", "StringTensor"}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    cases = generate(MODULES, per_module=PER_MODULE, keep=frozenset(RUN | DECLARED | set(REFUSED)))
    return run(cases, tmp_path_factory.mktemp("conformance"))


def test_every_case_onnxruntime_runs_is_run_or_refused_with_a_typed_error(sweep):
    assert not sweep.failures, "\n".join(f"{n}: {why}" for n, why in sweep.failures)
    assert {cls for cls, _ in sweep.rejected} <= EXPECTED_REFUSALS, sweep.rejected
    assert sweep.outcomes["match"] >= 200, sweep.outcomes


def test_named_cases_run_and_match_onnxruntime(sweep):
    """Cases once refused or crashing: integer types, data axes, data-sized outputs, attention, old opsets."""
    wrong = {name: sweep.by_case.get(name) for name in RUN if sweep.by_case.get(name) != "match"}
    assert not wrong, wrong


def test_value_sized_outputs_run_with_declared_ranges(sweep):
    """Resize/Expand/Tile/Pad/ConstantOfShape/Col2Im/... sized by a graph input: refused until the harness
    declares the input's range, then bounded, planned, run and equal to onnxruntime."""
    wrong = {name: sweep.by_case.get(name) for name in DECLARED if sweep.by_case.get(name) != "match"}
    assert not wrong, wrong
    assert DECLARED <= sweep.declared


def test_what_stays_refused_says_why(sweep):
    for name, error in REFUSED.items():
        assert sweep.by_case.get(name) == f"rejected {error}", (name, sweep.by_case.get(name))
    reasons = " ".join(why for _, why in sweep.rejected)
    assert "Pad's output size follows the values of" in reasons
