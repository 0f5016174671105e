"""The node daemon: holds tasks, runs pipeline hops, forwards activations to the next node, keeps sessions.

:mod:`splitup.node.wire` is the tensor wire format (safetensors + a JSON envelope), :mod:`splitup.node.node`
the transport-free core, :mod:`splitup.node.app` its FastAPI service and :mod:`splitup.node.serve` the process.
"""

from splitup.node.node import Node, NodeConfig
from splitup.node.wire import Envelope, Hop, WireError, decode, encode

__all__ = ["Node", "NodeConfig", "Envelope", "Hop", "WireError", "decode", "encode"]
