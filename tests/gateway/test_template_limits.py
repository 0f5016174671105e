"""Through the gateway's HTTP API, on the shared local market: anyone may publish a model with any chat
template, and one whose rendering runs past its time limit or grows past its memory limit gets a 400 naming
the limit within about the limit (2 s by default), while the gateway goes on serving: a chat with the
market's model right after is answered. Its model stays registered, so this file runs after those that
list the market's models (conftest)."""

from __future__ import annotations

import time

import httpx
import pytest

from splitup.demo.models import byte_tokenizer_json
from splitup.graph import zoo
from splitup.market.connect import connect
from splitup.partition.plan import make_plan
from splitup.sdk.catalog import publish_model
from splitup.storage import BlobStore

HOSTILE = (  # nested loops for "loop", a string doubled past any memory for anything else
    "{% if messages[0]['content'] == 'loop' %}"
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    "{% else %}{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
    "{{ ns.s }}{% endif %}"
)


@pytest.fixture(scope="module")
def hostile(env) -> str:
    """A decoder on the market whose template is HOSTILE (no node holds it: rendering comes before a job)."""
    root = env.net.root / "plan-hostile"
    make_plan(zoo.build("mlp", seed=4), "hostile-chat", [2**40], workspace_bytes=0, out_dir=root)
    authority = env.net.wallets["authority"]
    publish_model(connect(env.net.rpc_url, authority), authority, root, BlobStore(env.net.root / "store"),
                  kind="decoder", tokenizer_json=byte_tokenizer_json(), chat_template=HOSTILE)
    return "hostile-chat"


def _chat(env, model: str, content: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 4, "temperature": 0}
    return httpx.post(env.url + "/v1/chat/completions", json=body, timeout=120)


def test_a_template_past_its_limits_is_a_400_and_the_gateway_goes_on(env, hostile) -> None:
    deadline = time.monotonic() + 30
    while (r := _chat(env, hostile, "loop")).status_code == 404:  # the gateway's catalog is a few seconds old
        assert time.monotonic() < deadline, r.text
        time.sleep(0.5)
    for content, limit in (("loop", "within the limit of 2 s"), ("grow", "more than the limit of 256 MiB")):
        t0 = time.monotonic()
        r = _chat(env, hostile, content)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == "messages"
        assert limit in error["message"]
        assert time.monotonic() - t0 < 15
    served = _chat(env, "tiny-llama", "Name a colour.")
    assert served.status_code == 200, served.text
    assert served.json()["choices"][0]["message"]["role"] == "assistant"
