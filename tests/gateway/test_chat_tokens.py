"""Chat templates write the tokenizer's special tokens themselves (``{{ bos_token }}``, ``{{ eos_token }}``), as
transformers gives them to a template, and the rendered prompt is encoded without adding them again: the
gateway's prompt ids for a conversation are ``apply_chat_template(tokenize=True)``'s. The tokens travel in
the model's manifest, taken from the model's ``tokenizer_config.json`` when it is published; a manifest from
before they did keeps its hash and renders without them. No chain: the SDK calls the parser makes run on a
real manifest, tokenizer and small plan."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from splitup.chat import SPECIAL_TOKENS
from splitup.chat.tokenizer_config import read_tokenizer_config
from splitup.errors import SplitUpError
from splitup.gateway.openai_api import parse
from splitup.sdk.catalog import CatalogError, ModelManifest
from splitup.sdk.client import Client
from splitup.verify.sandbox import write_plan

# Llama 2 chat's template as its tokenizer_config.json ships it: BOS before each turn, EOS after each answer.
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)
SPECIAL = ["<s>", "</s>", "<unk>"]
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Why?"}]


def _tokenizer() -> Any:
    """Byte-level BPE whose post-processor adds BOS to whatever it encodes, as Llama's does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for token in SPECIAL:
        vocab[token] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return tok


class _Client:
    """The SDK's own chat_prompt and encode, on this manifest and tokenizer."""

    def __init__(self, manifest: ModelManifest, plan: Any) -> None:
        self.entry = SimpleNamespace(name=manifest.name, plan=plan, manifest=manifest)
        tok = _tokenizer()
        self.catalog = SimpleNamespace(tokenizer=lambda entry: tok)
        self.template_timeout = 2.0

    def plan(self, model: str) -> Any:
        return self.entry

    chat_prompt = Client.chat_prompt
    encode = Client.encode


@pytest.fixture(scope="module")
def plan(tmp_path_factory) -> Any:
    return write_plan(tmp_path_factory.mktemp("plan"))


def _manifest(**kw: Any) -> ModelManifest:
    """As a gateway reads it from the store."""
    made = ModelManifest(name="llama-style", kind="decoder", plan="0" * 64, tokenizer="1" * 64, **kw)
    return ModelManifest.parse(made.canonical())


def _added(content: str) -> dict[str, Any]:
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False}


# As model repositories ship it: tokens as AddedToken objects or strings, unset ones null, named templates.
CONFIG = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": _added("<s>"), "eos_token": _added("</s>"),
          "unk_token": "<unk>", "pad_token": None,
          "chat_template": [{"name": "default", "template": LLAMA2}, {"name": "tool_use", "template": "{{ tools }}"}]}


def test_chat_prompt_ids_are_transformers_apply_chat_template_ids(plan, tmp_path):
    transformers = pytest.importorskip("transformers")
    (tmp_path / "tokenizer.json").write_text(_tokenizer().to_str())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(CONFIG))
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    # What ``splitup market publish --tokenizer-config`` puts in the manifest.
    config = read_tokenizer_config(tmp_path / "tokenizer_config.json")
    assert config.special_tokens == {k: v for k, v in hf.special_tokens_map.items() if k in SPECIAL_TOKENS}
    assert config.chat_template == LLAMA2
    svc = SimpleNamespace(client=_Client(_manifest(chat_template=config.chat_template,
                                                   special_tokens=config.special_tokens), plan))
    req = parse({"model": "llama-style", "messages": MESSAGES, "max_tokens": 4}, svc, chat=True)
    assert req.prompt_text == hf.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert req.prompt_ids == list(hf.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=True)["input_ids"])
    bos, eos = hf.convert_tokens_to_ids(["<s>", "</s>"])
    assert (req.prompt_ids[:2].count(bos), req.prompt_ids.count(bos), req.prompt_ids.count(eos)) == (1, 2, 1)
    # A completion's prompt is encoded as the tokenizer encodes text: with the special tokens it adds.
    completion = parse({"model": "llama-style", "prompt": "Hi", "max_tokens": 4}, svc, chat=False)
    assert completion.prompt_ids == hf("Hi").input_ids


@pytest.mark.parametrize("change", [{"bos_token": 1}, {"eos_token": {"content": None}},
                                    {"chat_template": [{"name": "tool_use", "template": "x"}]}, {"chat_template": 3}])
def test_a_tokenizer_config_it_cannot_use_is_an_error_naming_the_field(tmp_path, change):
    path = tmp_path / "tokenizer_config.json"
    path.write_text(json.dumps({**CONFIG, **change}))
    with pytest.raises(SplitUpError, match=next(iter(change))):
        read_tokenizer_config(path)


def test_a_manifest_without_special_tokens_keeps_its_hash_and_renders_without_them(plan):
    template = "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"
    old = ModelManifest(name="llama-style", kind="decoder", plan="0" * 64, tokenizer="1" * 64, chat_template=template)
    assert "special_tokens" not in json.loads(old.canonical())  # its bytes, so its hash on chain, as published
    svc = SimpleNamespace(client=_Client(ModelManifest.parse(old.canonical()), plan))
    req = parse({"model": "llama-style", "messages": MESSAGES[1:2], "max_tokens": 4}, svc, chat=True)
    assert req.prompt_text == "[INST] Hi [/INST]"


@pytest.mark.parametrize("tokens", [["<s>"], {"bos_token": 1}, {"sep_token": "<s>"}])
def test_malformed_special_tokens_make_a_malformed_manifest(tokens):
    body = json.loads(_manifest(chat_template=LLAMA2).canonical())
    body["special_tokens"] = tokens
    with pytest.raises(CatalogError, match="special_tokens"):
        ModelManifest.parse(json.dumps(body).encode())
