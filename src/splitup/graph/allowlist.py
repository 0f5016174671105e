"""Which operators a stranger's graph may use: the default ONNX domain, deterministic ops only.

Left out on purpose: random generators (RandomNormal, Multinomial, ...) because Proof of Sampling
re-executes tasks and needs identical results; ops whose output size depends on data (NonZero, Unique,
Compress) because no static bound exists; sequence/optional/string ops; and fused ops with large hidden
scratch memory that shape inference cannot see (Attention).
"""

from __future__ import annotations

DEFAULT_DOMAINS: frozenset[str] = frozenset({"", "ai.onnx"})

# Ops that carry subgraphs; their bodies are validated recursively with the same rules.
CONTROL_FLOW_OPS: frozenset[str] = frozenset({"If", "Loop", "Scan"})

# The attribute that holds each control-flow body; a graph anywhere else is refused.
GRAPH_ATTRIBUTES: dict[str, frozenset[str]] = {
    "If": frozenset({"then_branch", "else_branch"}),
    "Loop": frozenset({"body"}),
    "Scan": frozenset({"body"}),
}

_ELEMENTWISE = """
Abs Acos Acosh Add And Asin Asinh Atan Atanh BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Ceil Celu Clip
Cos Cosh Div Elu Equal Erf Exp Floor Gelu Greater GreaterOrEqual HardSigmoid HardSwish IsInf IsNaN
LeakyRelu Less LessOrEqual Log Max Mean Min Mish Mod Mul Neg Not Or Pow PRelu Reciprocal Relu Round
Selu Shrink Sigmoid Sign Sin Sinh Softplus Softsign Sqrt Sub Sum Tan Tanh ThresholdedRelu Where Xor
"""

_LINEAR_ALGEBRA = "Einsum Gemm MatMul MatMulInteger"

_NORMALISATION = """
BatchNormalization GroupNormalization InstanceNormalization LayerNormalization LpNormalization
MeanVarianceNormalization RMSNormalization
"""

_REDUCTION = """
ArgMax ArgMin CumSum Hardmax LogSoftmax ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Softmax TopK
"""

_SHAPE_AND_LAYOUT = """
Cast CastLike Concat Constant ConstantOfShape DepthToSpace Dropout Expand EyeLike Flatten Gather
GatherElements GatherND Identity OneHot Pad Range Reshape Resize RotaryEmbedding ScatterElements
ScatterND Shape Size Slice SpaceToDepth Split Squeeze Tile Transpose Trilu Unsqueeze
"""

_CONVOLUTION = """
AveragePool Conv ConvInteger ConvTranspose GlobalAveragePool GlobalLpPool GlobalMaxPool LpPool MaxPool
"""

_QUANTISATION = "DequantizeLinear DynamicQuantizeLinear QuantizeLinear"

ALLOWED_OPS: frozenset[str] = frozenset(
    " ".join(
        (_ELEMENTWISE, _LINEAR_ALGEBRA, _NORMALISATION, _REDUCTION, _SHAPE_AND_LAYOUT, _CONVOLUTION, _QUANTISATION)
    ).split()
) | CONTROL_FLOW_OPS
