"""Nothing lost at the edges (issues 13 and 21) on the shared local market: requests beyond the model's
limits are refused before any money moves, a node refuses a step beyond its task's context with a 4xx
naming the limit, and a burst of concurrent requests ends served or refused at once, with no job left
open and no collateral locked afterwards."""

from __future__ import annotations

import time

import httpx
import numpy as np
import openai
import pytest

from splitup.market.connect import connect
from splitup.node.wire import Envelope, Hop, encode
from splitup.sdk.limits import context_length


def _client_jobs(env) -> list:
    m = connect(env.net.rpc_url, env.net.wallets["authority"])
    me = env.net.wallets["client"].pubkey()
    return [a for a, info in m.jobs() if info.header.client == me]


def test_over_long_prompt_gets_one_400_and_posts_no_job(env) -> None:
    sent: list[str] = []
    http = httpx.Client(event_hooks={"request": [lambda r: sent.append(str(r.url))]}, timeout=60)
    oa = openai.OpenAI(base_url=env.url + "/v1", api_key="x", http_client=http)  # default retries (2)
    before_chain = _client_jobs(env)
    before_gw = len(httpx.get(env.url + "/api/jobs", timeout=10).json())
    ctx = context_length(env.net.plan)
    assert ctx is not None
    with pytest.raises(openai.BadRequestError) as bad:
        oa.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "x" * 100_000}],
                                   max_tokens=8)
    assert len(sent) == 1  # not retried
    assert bad.value.status_code == 400
    err = bad.value.body
    assert err["type"] == "invalid_request_error" and err["code"] == "context_length_exceeded"
    assert f"maximum context length is {ctx} tokens" in err["message"]
    # Prompt within the context but prompt + max_tokens beyond it: the same refusal.
    with pytest.raises(openai.BadRequestError) as bad2:
        oa.completions.create(model="tiny-llama", prompt="a" * (ctx - 4), max_tokens=16)
    assert "maximum context length" in bad2.value.body["message"]
    for field, value in (("temperature", 7), ("max_tokens", 0), ("seed", "x"), ("stop", [1])):
        r = httpx.post(env.url + "/v1/completions", json={"model": "tiny-llama", "prompt": "hi", field: value},
                       timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text
    assert _client_jobs(env) == before_chain
    assert len(httpx.get(env.url + "/api/jobs", timeout=10).json()) == before_gw


def test_node_refuses_a_step_beyond_the_context_with_a_4xx(env) -> None:
    task = env.net.plan.tasks[0]
    url = env.net.nodes[0].url if 0 in env.net.holds[0] else next(
        c.url for c, h in zip(env.net.nodes, env.net.holds, strict=True) if 0 in h)
    ctx = context_length(env.net.plan)
    past = {s.name: np.zeros([ctx - 8 if d == "past" else (1 if isinstance(d, str) else d) for d in s.shape],
                             s.dtype) for s in task.inputs if s.name in task.state}
    for name in past:
        if name.endswith(".length"):
            past[name][...] = ctx - 8
    ids = np.zeros((1, 16), np.int64)
    send = [o.name for o in task.outputs][:1]
    body = encode({"input_ids": ids, **past}, Envelope("edge", 0, [Hop([url], task.task_id, send)]))
    r = httpx.post(url + "/execute", content=body, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["kind"] == "context_limit"
    assert f"maximum context of {ctx}" in r.json()["error"]


def test_json_nested_past_the_parsers_stack_is_a_4xx_everywhere(env) -> None:
    """A stranger's body whose JSON nests deeper than Python's parser recurses: refused as malformed by the
    gateway, a node's /execute and the ledger's RPC, which all keep serving (not a 500, not a dead worker)."""
    deep = b"[" * 100_000 + b"]" * 100_000
    r = httpx.post(env.url + "/v1/completions", content=deep, timeout=30)
    assert r.status_code == 400 and "not JSON" in r.text, r.text
    node = env.net.nodes[0].url
    r = httpx.post(node + "/execute", content=len(deep).to_bytes(8, "little") + deep, timeout=30)
    assert r.status_code == 400 and r.json()["kind"] == "bad_request", r.text
    r = httpx.post(env.net.rpc_url, content=deep, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 200 and r.json()["error"]["code"] == -32700, r.text  # JSON-RPC's parse error
    assert httpx.get(node + "/health", timeout=10).status_code == 200
    assert httpx.post(env.net.rpc_url, json={"jsonrpc": "2.0", "id": 1, "method": "getHealth"},
                      timeout=10).json()["result"] == "ok"


def _locked(env) -> int:
    m = connect(env.net.rpc_url, env.net.wallets["authority"])
    return sum(n.locked for _, n in m.nodes())


def test_burst_ends_served_or_refused_and_leaves_nothing_locked(env) -> None:
    from splitup.demo.burst import burst_in_process

    # The gateway has measured its pace (as one that has served anything has): then a request it cannot
    # start within its deadline is refused at arrival, not when the deadline runs out.
    warm = httpx.post(env.url + "/v1/completions", json={"model": "tiny-llama", "prompt": "warm", "max_tokens": 4,
                                                        "temperature": 0}, timeout=120)
    assert warm.status_code == 200, warm.text
    # 32 at once, from a lean client in its own process (this one hosts the market's arbiter thread).
    results = burst_in_process(env.url, 32, max_tokens=4)
    codes = [a.status for a in results]
    assert set(codes) <= {200, 429}, codes
    assert codes.count(200) >= 1
    refused = [a for a in results if a.status == 429]
    assert all(a.retry_after is not None and int(a.retry_after) >= 1 for a in refused), refused
    # Refused at once, every one: under a second (by the estimate at arrival, or for lack of queue room).
    assert all(a.seconds < 1.0 for a in refused), sorted(a.seconds for a in refused)
    # A minute after the burst: every job closed, no collateral locked.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (_client_jobs(env) or _locked(env)):
        time.sleep(0.5)
    assert _client_jobs(env) == [] and _locked(env) == 0
    rows = httpx.get(env.url + "/api/jobs", timeout=10).json()
    assert all(j["state"] in ("closed", "wound_up") for j in rows if j.get("source") == "gateway"), \
        [(j["address"], j["state"], j.get("error")) for j in rows if j["state"] not in ("closed", "wound_up")]
    r = httpx.post(env.url + "/v1/completions", json={"model": "tiny-llama", "prompt": "after", "max_tokens": 3,
                                                     "temperature": 0}, timeout=120)
    assert r.status_code == 200, r.text


def test_sdk_winds_up_a_job_whose_tasks_never_got_input(env) -> None:
    import splitup

    m = connect(env.net.rpc_url, env.net.wallets["authority"])
    stakes = {str(a): n.stake for a, n in m.nodes()}
    with splitup.Client(env.net.rpc_url, env.net.wallet_path("client"), store_url=env.net.store_url) as client:
        entry = client.plan("tiny-llama")
        job, _routes = client.place(entry, b"\1" * 32)  # accepted by the nodes, then the client fails
        report = client.wind_up(job, model_name=entry.name, task_ids=entry.task_ids())
    assert report.closed and [t.status for t in report.tasks] == ["RELEASED"] * 3
    assert report.paid == 0 and report.refund == report.deposit > 0
    assert all(n.stake == stakes[str(a)] for a, n in m.nodes() if str(a) in stakes)  # nobody slashed
    assert job not in _client_jobs(env)


def test_standin_that_finishes_a_task_is_recorded_and_paid(env) -> None:
    """A node dies mid-generation: the pipeline moves its task to a stand-in, the stand-in takes the task
    over on chain (client and stand-in sign), commits and is paid; the failed node is neither paid nor
    slashed (it was unlocked before its deadline)."""
    import splitup
    from splitup.demo.chaos import wait_node
    from splitup.sdk.client import Completion, TokenEvent

    m = connect(env.net.rpc_url, env.net.wallets["authority"])
    by_address = {str(m.node_address(env.net.wallets[c.name].pubkey())): c for c in env.net.nodes}
    stakes = {str(a): n.stake for a, n in m.nodes()}
    jobs: list = []
    with splitup.Client(env.net.rpc_url, env.net.wallet_path("client"), store_url=env.net.store_url,
                        hop_timeout=20) as client:
        # short enough to finish well inside the task deadline on a loaded machine (nodes commit before it,
        # and a committed task takes no more calls)
        events = client.stream("tiny-llama", "a stand-in takes over", max_tokens=24, on_job=jobs.append)
        victim = None
        result = None
        for i, e in enumerate(events):
            if isinstance(e, TokenEvent) and i == 3:
                victim = by_address[str(m.job(jobs[-1]).tasks[1].node)]
                env.net.procs.kill(victim)
                # Back soon (a new process, its work for the job lost): it validates the others' tasks.
                env.net.procs.restart(victim)
            if isinstance(e, Completion):
                result = e
    assert victim is not None and result is not None and result.report is not None
    t1 = result.report.tasks[1]
    standin = by_address[t1.node]
    assert standin is not victim
    assert t1.status == "SETTLED" and t1.node_paid == t1.price and t1.node_slashed == 0
    victim_address = str(m.node_address(env.net.wallets[victim.name].pubkey()))
    assert all(t.node != victim_address for t in result.report.tasks)
    assert m.node(env.net.wallets[victim.name].pubkey()).stake == stakes[victim_address]  # not slashed
    wait_node(env.net, victim)


def test_nodes_finish_on_their_own_when_the_client_vanishes(env) -> None:
    """A client posts a job, sends one step through the pipeline and goes silent: it never asks for a
    commit nor releases anything. Before their task deadlines the nodes commit what they computed on their
    own, so none is expired (slashed) for the client's silence, and the job settles and closes paid."""
    import splitup
    from splitup.client.pipeline import PipelineClient
    from splitup.client.sampling import decoding_for
    from splitup.market.constants import TaskStatus

    m = connect(env.net.rpc_url, env.net.wallets["authority"])
    stakes = {str(a): n.stake for a, n in m.nodes()}
    # Short task windows (8 s at 100 ms slots): a node acts on its own when its deadline nears.
    with splitup.Client(env.net.rpc_url, env.net.wallet_path("client"), store_url=env.net.store_url,
                        task_timeout_slots=80) as client:
        entry = client.plan("tiny-llama")
        job, routes = client.place(entry, b"\4" * 32)
        with PipelineClient(entry.plan, routes, hop_timeout=30) as pc, pc.session() as gen:
            gen.job = str(job)
            gen.decoding = decoding_for(0.0, None, None)
            gen.step(np.asarray([[5, 6, 7]], dtype=np.int64))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            statuses = [TaskStatus(t.status) for t in m.job(job).tasks]
            if TaskStatus.ACCEPTED not in statuses:
                break
            time.sleep(0.5)
        assert TaskStatus.ACCEPTED not in statuses, statuses
        fed = [bool(t.received) for t in m.job(job).tasks]
        report = client.wind_up(job, model_name=entry.name, task_ids=entry.task_ids(), ask=False)
    # A task fed by its node was committed and is paid; one its node never got (the pipeline moved it to a
    # stand-in, which the vanished client never made the executor) was released by the node, unslashed.
    assert report.closed and sum(fed) >= 2, (fed, report.tasks)
    for t, got in zip(report.tasks, fed, strict=True):
        assert (t.status == "SETTLED" and t.node_paid == t.price) if got else t.status == "RELEASED", t
        assert t.node_slashed == 0
    assert all(n.stake == stakes[str(a)] for a, n in m.nodes() if str(a) in stakes)
