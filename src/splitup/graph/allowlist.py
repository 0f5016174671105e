"""Which operators a stranger's graph may use: the default ONNX domain, deterministic ops only.

Left out on purpose: random generators (RandomNormal, Multinomial, ...) because Proof of Sampling
re-executes tasks and needs identical results, and sequence/optional/string ops. Everything here has an
output that shape inference sizes, or that ``splitup.graph.bounds`` bounds by its input (NonZero,
Compress, Unique, NonMaxSuppression: never more elements than their input), and a workspace proportional to its inputs
and outputs, except the attention ops, whose hidden score memory ``splitup.graph.memory.hidden_workspace``
adds to the node's peak. State is explicit in and out (CausalConvWithState, LinearAttention,
TensorScatter), never kept between calls.
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
Abs Acos Acosh Add And Asin Asinh Atan Atanh BitCast BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Ceil Celu Clip
Cos Cosh Div Elu Equal Erf Exp Floor Gelu Greater GreaterOrEqual HardSigmoid HardSwish IsInf IsNaN
LeakyRelu Less LessOrEqual Log Max Mean Min Mish Mod Mul Neg Not Or Pow PRelu Reciprocal Relu Round
Selu Shrink Sigmoid Sign Sin Sinh Softplus Softsign Sqrt Sub Sum Swish Tan Tanh ThresholdedRelu Where Xor
"""

_LINEAR_ALGEBRA = "Det Einsum Gemm MatMul MatMulInteger QLinearMatMul"

_ATTENTION = "Attention CausalConvWithState LinearAttention TensorScatter"

_DATA_SIZED = "Compress NonMaxSuppression NonZero Unique"

_NORMALISATION = """
BatchNormalization GroupNormalization InstanceNormalization LayerNormalization LpNormalization LRN
MeanVarianceNormalization RMSNormalization
"""

_REDUCTION = """
ArgMax ArgMin CumProd CumSum Hardmax LogSoftmax NegativeLogLikelihoodLoss ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Softmax SoftmaxCrossEntropyLoss TopK
"""

_SHAPE_AND_LAYOUT = """
AffineGrid Cast CastLike CenterCropPad Col2Im Concat Constant ConstantOfShape DepthToSpace Dropout Expand EyeLike Flatten Gather
GatherElements GatherND GridSample Identity ReverseSequence OneHot Pad Range Reshape Resize RotaryEmbedding ScatterElements
ScatterND Shape Size Slice SpaceToDepth Split Squeeze Tile Transpose Trilu Unsqueeze
"""

_CONVOLUTION = """
AveragePool Conv ConvInteger ConvTranspose DeformConv GlobalAveragePool GlobalLpPool GlobalMaxPool LpPool MaxPool
MaxUnpool QLinearConv
"""

_SIGNAL_AND_RECURRENT = "DFT GRU LSTM RNN STFT"

_QUANTISATION = "DequantizeLinear DynamicQuantizeLinear QuantizeLinear"

ALLOWED_OPS: frozenset[str] = frozenset(
    " ".join(
        (_ELEMENTWISE, _LINEAR_ALGEBRA, _ATTENTION, _DATA_SIZED, _NORMALISATION, _REDUCTION, _SHAPE_AND_LAYOUT, _CONVOLUTION, _QUANTISATION,
         _SIGNAL_AND_RECURRENT)
    ).split()
) | CONTROL_FLOW_OPS
