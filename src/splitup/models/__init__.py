"""Real pretrained models, offline: registry, importers (GGUF, safetensors, PyTorch export), generation.

See docs/models.md. ``convert`` maps Hugging Face checkpoint names and layouts onto the zoo's.
"""

from splitup.models.errors import ModelError
from splitup.models.generate import GREEDY, OrtDecoder, Sampling, generate, pipeline_step, stream
from splitup.models.real import RealModel, import_weights, load_real_model, zoo_weights
from splitup.models.registry import AvailableModel, RealModelSpec, available, spec

__all__ = [
    "ModelError", "GREEDY", "OrtDecoder", "Sampling", "generate", "pipeline_step", "stream", "RealModel",
    "import_weights", "load_real_model", "zoo_weights", "AvailableModel", "RealModelSpec", "available", "spec",
]
