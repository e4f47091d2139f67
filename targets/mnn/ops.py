"""The ONNX ops MNN's converter lowers.

``SUPPORTED_OPS`` is what the converter itself lists (``MNNConvert -f ONNX --OP``) in
mnn 3.6.1, kept here so that ``inspect`` and the pre-write check work without loading
the converter. :func:`converter_ops` asks the installed converter (in a child process:
it prints from C++ and is a native library); the tests check that every op listed here
is one the installed converter still lists.
"""

from __future__ import annotations

# As the converter prints them (one name a word), so that a new list diffs line by line.
_LISTED = """
    ATan ATen Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
    BitShift Cast CastLike Ceil Celu Clip Compress Concat ConcatFromSequence Constant ConstantOfShape
    Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Det Div Dropout
    DynamicQuantizeLinear Einsum Elu Equal Erf Erfc Erfinv Exp Expand Expm1 EyeLike Flatten Floor GRU
    Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater
    GreaterOrEqual GridSample GridSampler HardSigmoid HardSwish Identity If InstanceNormalization LRN
    LSTM LayerNorm LayerNormalization LeakyRelu Less LessOrEqual Log Log1p LogSoftmax Loop
    LpNormalization LpPool MatMul Max MaxPool MaxRoiPool MaxUnpool Mean MeanVarianceNormalization Min
    Mod Mul Neg NegativeLogLikelihoodLoss NonMaxSuppression NonZero Not OneHot Or PRelu Pad Pow
    QuantizeLinear RNN RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal
    ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
    ReduceSumSquare Relu Reshape Resize ReverseSequence RoiAlign Round STFT Scatter ScatterElements
    ScatterND Selu SequenceAt SequenceConstruct SequenceEmpty SequenceErase SequenceInsert
    SequenceLength Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax SoftmaxCrossEntropyLoss
    Softplus Softsign SpaceToDepth Split SplitToSequence Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu
    Tile TopK Transpose Trilu Unique Unsqueeze Upsample Where Xor
"""
SUPPORTED_OPS = frozenset(_LISTED.split())


def dump_ops() -> str:
    """What the converter prints for ``-f ONNX --OP`` (the body of a child process)."""
    from mconv.targets.mnn.convert import run_tool

    return run_tool("mnnconvert", ["-f", "ONNX", "--OP"])


def converter_ops(timeout: float = 120.0) -> set[str]:
    """The op types the installed converter lists for ONNX."""
    from mconv.isolate import call_isolated

    text = call_isolated("mconv.targets.mnn.ops:dump_ops", {}, timeout=timeout, what="MNN converter")
    lines = [ln.strip() for ln in text.splitlines()]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("Dump ONNX support Ops")) + 1
    return {ln for ln in lines[start:] if ln and not ln.startswith("Total:")}
