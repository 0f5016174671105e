"""What a Hugging Face ``tokenizer_config.json`` says about chat: its special tokens by name and its chat
template, read as ``transformers`` reads them (a token is a string or an ``AddedToken`` object with its
``content``; a template is a string, or a list of named ones of which chat uses ``default``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from splitup.chat import SPECIAL_TOKENS
from splitup.errors import SplitUpError


@dataclass(frozen=True)
class ChatConfig:
    special_tokens: dict[str, str] = field(default_factory=dict)
    chat_template: str | None = None


def read_tokenizer_config(path: Path) -> ChatConfig:
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SplitUpError(f"cannot read the tokenizer config {path}: {exc}") from None
    if not isinstance(config, dict):
        raise SplitUpError(f"{path} is not a JSON object")
    tokens = {name: _token(path, name, config[name]) for name in SPECIAL_TOKENS if config.get(name) is not None}
    return ChatConfig(tokens, _template(path, config.get("chat_template")))


def _token(path: Path, name: str, value: Any) -> str:
    content = value.get("content") if isinstance(value, dict) else value
    if not isinstance(content, str):
        raise SplitUpError(f"{path}: {name} is neither a string nor a token with a string content")
    return content


def _template(path: Path, value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        if isinstance(named.get("default"), str):
            return str(named["default"])
    raise SplitUpError(f"{path}: chat_template is neither a string nor a list holding a 'default' template")
