"""The official ``openai`` client against the gateway: every answer is a settled market job whose text
equals the single-process run of the same model."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

import splitup
from splitup.chat.renderer import render_chat

from .conftest import reference_text


@pytest.fixture(scope="module")
def oa(env) -> openai.OpenAI:
    return openai.OpenAI(base_url=env.url + "/v1", api_key="not-needed", max_retries=0, timeout=120)


def test_models_lists_the_registered_model(oa) -> None:
    ids = [m.id for m in oa.models.list().data]
    assert ids == ["tiny-llama"]


def test_completion_is_the_single_process_text(env, oa) -> None:
    r = oa.completions.create(model="tiny-llama", prompt="Hello, market", max_tokens=8, temperature=0)
    assert r.object == "text_completion"
    assert r.choices[0].text == reference_text(env, "Hello, market", 8)
    assert r.choices[0].finish_reason in ("length", "stop")
    assert r.usage.completion_tokens <= 8 and r.usage.prompt_tokens == len("Hello, market")
    assert r.model_extra["splitup"]["job"]


def test_chat_streams_the_same_text_as_without_streaming(env, oa) -> None:
    messages = [{"role": "user", "content": "Name a colour."}]
    whole = oa.chat.completions.create(model="tiny-llama", messages=messages, max_tokens=6, temperature=0)
    chunks = list(oa.chat.completions.create(model="tiny-llama", messages=messages, max_tokens=6, temperature=0,
                                             stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == whole.choices[0].message.content
    assert whole.choices[0].message.role == "assistant"
    prompt = render_chat(env.prep.model.chat_template, messages)
    assert streamed == reference_text(env, prompt, 6)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_sse_wire_format(env) -> None:
    body = {"model": "tiny-llama", "prompt": "abc", "max_tokens": 4, "temperature": 0, "stream": True}
    with httpx.stream("POST", env.url + "/v1/completions", json=body, timeout=120) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert len(events) >= 3  # at least one text chunk, the finish chunk and [DONE]


def test_stop_string_cuts_the_text(env, oa) -> None:
    full = oa.completions.create(model="tiny-llama", prompt="xyz", max_tokens=8, temperature=0).choices[0].text
    stop = full[2:4]
    assert stop  # the tiny model produced at least four characters
    r = oa.completions.create(model="tiny-llama", prompt="xyz", max_tokens=8, temperature=0, stop=[stop])
    assert r.choices[0].text == full[: full.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_errors_in_openai_shape(oa) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        oa.completions.create(model="no-such-model", prompt="x", max_tokens=2)
    assert "no-such-model" in str(nf.value)
    with pytest.raises(openai.BadRequestError):
        oa.completions.create(model="tiny-llama", prompt="x", max_tokens=2, n=2)
    with pytest.raises(openai.BadRequestError):
        oa.chat.completions.create(model="tiny-llama", messages=[], max_tokens=2)


def test_console_api_reports_the_jobs_settled_and_paid(env, oa) -> None:
    r = oa.completions.create(model="tiny-llama", prompt="pay me", max_tokens=3, temperature=0)
    job = r.model_extra["splitup"]["job"]
    deadline = time.monotonic() + 120
    while True:
        rows = {j["address"]: j for j in httpx.get(env.url + "/api/jobs", timeout=10).json()}
        if rows.get(job, {}).get("state") == "closed" or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    row = rows[job]
    assert row["state"] == "closed" and row["closed"] is True
    assert [t["status"] for t in row["tasks"]] == ["SETTLED"] * 3
    assert all(t["verdict"] == "agree" and t["validator"] != t["node"] for t in row["tasks"])  # rate 100%
    assert row["verified"] == 3
    assert row["paid"] == sum(t["node_paid"] + t["validator_paid"] + t["fee"] for t in row["tasks"])
    # (other tests may add nodes and models to this market: look at the tiny LLaMA's)
    nodes = [n for n in httpx.get(env.url + "/api/nodes", timeout=10).json() if n["name"] in env.net.node_names]
    assert sorted(n["name"] for n in nodes) == ["node-a", "node-b", "node-c", "node-d"]
    assert all(n["stake"] >= 2 * 10**9 and n["specialized"] for n in nodes)
    beats = [n["chain_heartbeat"] for n in nodes]  # the on-chain heartbeat, beside the polled one
    assert all(b["fresh"] and b["slot"] > 0 and b["version"] == splitup.__version__ for b in beats), beats
    done = {t["node"] for t in row["tasks"]}
    assert all(n["reputation"]["tasks_done"] >= 1 for n in nodes if n["address"] in done)
    models = [m for m in httpx.get(env.url + "/api/models", timeout=10).json() if m["name"] == "tiny-llama"]
    assert [len(m["tasks"]) for m in models] == [3]
    holders = [sum(t["index"] in h for h in env.net.holds) for t in models[0]["tasks"]]
    assert [len(t["holders"]) for t in models[0]["tasks"]] == holders and min(holders) >= 2
    assert [t["vram_bytes"] for t in models[0]["tasks"]] == [t.vram_bytes for t in env.net.plan.tasks]


def test_a_stream_abandoned_midway_is_still_committed_and_settled(env) -> None:
    body = {"model": "tiny-llama", "prompt": "abandon me", "max_tokens": 12, "temperature": 0, "stream": True}
    with httpx.stream("POST", env.url + "/v1/completions", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                break  # one chunk, then hang up
    deadline = time.monotonic() + 120
    row: dict = {}
    while time.monotonic() < deadline:
        rows = [j for j in httpx.get(env.url + "/api/jobs", timeout=10).json() if j.get("prompt") == "abandon me"]
        row = rows[0] if rows else {}
        if row.get("state") in ("closed", "failed"):
            break
        time.sleep(0.3)
    assert row.get("state") == "closed", row
    # Every executor committed what it computed, so nobody was slashed and every task was paid.
    assert [t["status"] for t in row["tasks"]] == ["SETTLED"] * 3
    assert all(t["node_paid"] == t["price"] and t["node_slashed"] == 0 for t in row["tasks"])
