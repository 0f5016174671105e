"""Models on the market: a manifest blob per model, its sha256 as the on-chain model hash.

The chain holds, per model, 32 bytes of hash and each task's id, VRAM need and price. The manifest
(canonical JSON in the blob store) names the plan (``plan.json``, itself a blob) and the tokenizer blob,
so a client that knows only the chain and a store finds everything, each piece checked by hash.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from solders.keypair import Keypair
from solders.pubkey import Pubkey

from splitup import jsonparse
from splitup.chat import SPECIAL_TOKENS
from splitup.errors import SplitUpError
from splitup.market.accounts import ModelInfo
from splitup.market.layout import ModelTask
from splitup.market.market import Market
from splitup.partition.task import Plan, TaskDefinition
from splitup.storage import BlobClient, BlobStore, StorageError, fetch_plan, publish_plan

MANIFEST_FORMAT = "splitup.model"
MANIFEST_VERSION = 1
MAX_MANIFEST_BYTES = 1 << 20
MAX_TOKENIZER_BYTES = 64 << 20


class CatalogError(SplitUpError):
    """A model is unknown, incomplete on chain, or its manifest or plan does not check out."""


@dataclass(frozen=True)
class ModelManifest:
    name: str
    kind: str  # "decoder": text generation with a KV cache; "graph": one stateless pass
    plan: str  # sha256 of plan.json in the store
    tokenizer: str | None = None  # sha256 of tokenizer.json in the store
    chat_template: str | None = None
    bos_id: int | None = None
    eos_ids: tuple[int, ...] = ()
    description: str = ""
    # The tokenizer's special tokens by name (bos_token, ...: splitup.chat.SPECIAL_TOKENS), which chat
    # templates write themselves ({{ bos_token }}), as transformers gives them.
    special_tokens: Mapping[str, str] = field(default_factory=dict)

    def canonical(self) -> bytes:
        body = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, **asdict(self)}
        body["eos_ids"] = list(self.eos_ids)
        if not self.special_tokens:
            del body["special_tokens"]  # a manifest from before they were kept keeps its hash
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()

    @staticmethod
    def parse(raw: bytes) -> ModelManifest:
        try:
            d = jsonparse.loads(raw)
            if d.get("format") != MANIFEST_FORMAT or d.get("version") != MANIFEST_VERSION:
                raise ValueError("not a SplitUp model manifest of a known version")
            return ModelManifest(
                name=str(d["name"]), kind=str(d["kind"]), plan=str(d["plan"]),
                tokenizer=None if d.get("tokenizer") is None else str(d["tokenizer"]),
                chat_template=d.get("chat_template"), bos_id=d.get("bos_id"),
                eos_ids=tuple(int(x) for x in d.get("eos_ids", ())), description=str(d.get("description", "")),
                special_tokens=_special_tokens(d.get("special_tokens", {})),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CatalogError(f"malformed model manifest: {exc}") from None


def _special_tokens(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict) or not all(k in SPECIAL_TOKENS and isinstance(v, str) for k, v in raw.items()):
        raise ValueError(f"special_tokens must map some of {', '.join(SPECIAL_TOKENS)} to strings")
    return dict(raw)


def task_price(task: TaskDefinition, lamports_per_gflop: int, base: int) -> int:
    """What a node earns for one task of one job: a base plus its compute at the plan's largest chunk."""
    return base + task.flops * lamports_per_gflop // 1_000_000_000


@dataclass(frozen=True)
class Published:
    address: Pubkey
    manifest: ModelManifest
    manifest_sha256: str
    plan: Plan
    prices: list[int]


def publish_model(market: Market, owner: Keypair, plan_dir: Path, store: BlobStore, *, kind: str,
                  tokenizer_json: str | None = None, chat_template: str | None = None, bos_id: int | None = None,
                  eos_ids: tuple[int, ...] = (), special_tokens: Mapping[str, str] | None = None,
                  description: str = "", lamports_per_gflop: int = 1_000_000, base_price: int = 100_000) -> Published:
    """Put a written plan, its bundles, tokenizer and manifest into ``store`` and register the model on chain."""
    published = publish_plan(plan_dir, store)
    plan = Plan.load(plan_dir)
    tok_sha = store.put_bytes(tokenizer_json.encode()) if tokenizer_json is not None else None
    manifest = ModelManifest(name=plan.model, kind=kind, plan=published.plan_sha256, tokenizer=tok_sha,
                             chat_template=chat_template, bos_id=bos_id, eos_ids=tuple(eos_ids),
                             special_tokens=dict(special_tokens or {}), description=description)
    sha = store.put_bytes(manifest.canonical())
    prices = [task_price(t, lamports_per_gflop, base_price) for t in plan.tasks]
    entries = [ModelTask(task_id=bytes.fromhex(t.task_id), vram=t.vram_bytes, price=p)
               for t, p in zip(plan.tasks, prices, strict=True)]
    model_hash = bytes.fromhex(sha)
    address = market.model_address(owner.pubkey(), model_hash)
    if market.t.get_account(address) is None:
        market.register_model(owner, model_hash, entries)
    return Published(address, manifest, sha, plan, prices)


@dataclass
class CatalogEntry:
    """A registered model as a client sees it: chain record, manifest and plan."""

    address: Pubkey
    info: ModelInfo
    manifest: ModelManifest
    plan: Plan
    _tokenizer: Any = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.manifest.name

    def task_ids(self) -> list[str]:
        return [t.task_id.hex() for t in self.info.tasks]


class Catalog:
    """Models registered on the chain whose manifests are in the store; manifests and plans are cached by hash."""

    def __init__(self, market: Market, store_url: str, *, ttl_s: float = 2.0) -> None:
        self.market = market
        self.store_url = store_url
        self._blobs = BlobClient(store_url)
        self._by_hash: dict[str, tuple[ModelManifest, Plan] | None] = {}
        self._tokenizers: dict[str, Any] = {}
        # The models on chain change rarely; a gateway looks them up on every request.
        self.ttl_s = ttl_s
        self._entries: tuple[float, list[CatalogEntry]] | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        self._blobs.close()

    def entries(self) -> list[CatalogEntry]:
        with self._lock:
            cached = self._entries
        if cached is not None and time.monotonic() - cached[0] < self.ttl_s:
            return cached[1]
        out = self._read_entries()
        with self._lock:
            self._entries = (time.monotonic(), out)
        return out

    def _read_entries(self) -> list[CatalogEntry]:
        out = []
        for address, info in sorted(self.market.models(), key=lambda m: str(m[0])):
            if not info.complete:
                continue
            found = self._resolve(info.header.model_hash.hex())
            if found is None:
                continue  # registered by someone whose manifest is not in our store
            manifest, plan = found
            if [t.task_id for t in plan.tasks] != [t.task_id.hex() for t in info.tasks]:
                continue  # the chain and the plan disagree: not usable
            out.append(CatalogEntry(address, info, manifest, plan))
        return out

    def get(self, name: str) -> CatalogEntry:
        matches = [e for e in self.entries() if e.name == name]
        if not matches:
            known = sorted({e.name for e in self.entries()})
            raise CatalogError(f"no model {name!r} on the market (known: {', '.join(known) or 'none'})")
        return matches[-1]

    def tokenizer(self, entry: CatalogEntry) -> Any:
        """The model's ``tokenizers.Tokenizer`` (from its hash-checked blob)."""
        if entry._tokenizer is None:
            sha = entry.manifest.tokenizer
            if sha is None:
                raise CatalogError(f"model {entry.name} has no tokenizer: it takes tensors, not text")
            if sha not in self._tokenizers:
                from tokenizers import Tokenizer

                raw = self._blobs.get_bytes(sha, max_bytes=MAX_TOKENIZER_BYTES)
                self._tokenizers[sha] = Tokenizer.from_str(raw.decode())
            entry._tokenizer = self._tokenizers[sha]
        return entry._tokenizer

    def _resolve(self, sha: str) -> tuple[ModelManifest, Plan] | None:
        if sha not in self._by_hash:
            try:
                manifest = ModelManifest.parse(self._blobs.get_bytes(sha, max_bytes=MAX_MANIFEST_BYTES))
                self._by_hash[sha] = (manifest, fetch_plan(manifest.plan, self._blobs))
            except (StorageError, CatalogError):
                # Not cached: the blob may appear later (published after registration).
                return None
        return self._by_hash[sha]
