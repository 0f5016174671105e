"""The tensor graph layer: ONNX models, their memory-safety validation, and the builder API."""

from splitup.graph.builder import Tensor, TensorContext
from splitup.graph.errors import BuilderError, GraphRejected

__all__ = ["Tensor", "TensorContext", "BuilderError", "GraphRejected"]
