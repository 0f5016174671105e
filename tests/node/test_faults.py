"""A node killed (SIGKILL) in the middle of a generation: the job moves to a stand-in, same tokens."""

from __future__ import annotations

import httpx
import pytest

from splitup.client.pipeline import PipelineClient
from splitup.client.sampling import generate_tokens
from splitup.runtime.local import LocalPipeline

from .procs import start_node


@pytest.fixture
def victim(plan, store_url, logs):
    """A fresh node for task 1 that this test may kill."""
    d = start_node("victim", logs, tasks=[plan.tasks[1].task_id], store=store_url)
    try:
        d.wait_ready()
        yield d
    finally:
        d.stop()


def reference(plan_dir, prompt, n, **kw) -> list[int]:
    local = LocalPipeline(plan_dir)
    return generate_tokens(lambda ids: local.run({"input_ids": ids})["logits"], prompt, n, **kw)


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
def test_node_killed_mid_generation(plan, plan_dir, cluster, victim, sampled):
    prompt, n = [9, 8, 7, 6, 5], 20
    kw = {"temperature": 0.9, "top_k": 50, "seed": 5} if sampled else {}
    want = reference(plan_dir, prompt, n, **kw)
    route = [cluster.a.url, [victim.url, cluster.spare.url], cluster.c.url]
    with PipelineClient(plan, route, hop_timeout=10) as client, client.session() as gen:
        def on_token(_token: int, count=[0]) -> None:  # noqa: B006 - a counter local to this run
            count[0] += 1
            if count[0] == 7:
                victim.kill()

        got = generate_tokens(gen.step, prompt, n, on_token=on_token, **kw)
        assert not victim.alive()
        assert gen.recoveries == 1
        assert gen.places[1][0] == cluster.spare.url
    assert got == want


def test_a_node_that_lost_its_session_is_re_prefilled(plan, plan_dir, cluster):
    """Sessions expire or vanish with a restart; the same node gets a new session and the context again."""
    prompt, n = [3, 1, 4, 1, 5], 10
    want = reference(plan_dir, prompt, n)
    with PipelineClient(plan, cluster.route) as client, client.session() as gen:
        def on_token(_token: int, count=[0]) -> None:  # noqa: B006
            count[0] += 1
            if count[0] == 4:
                url, sid = gen.places[2]
                assert httpx.delete(f"{url}/sessions/{sid}").status_code == 200

        got = generate_tokens(gen.step, prompt, n, on_token=on_token)
        assert gen.recoveries == 1 and gen.places[2][0] == cluster.c.url
    assert got == want


def test_a_hung_node_times_out_and_its_task_moves(plan, plan_dir, cluster, victim):
    """SIGSTOP: the connection opens but nothing answers. The node before it gives up after its share of
    the timeout and names the hung hop; the client re-routes that task."""
    import signal
    import time

    prompt, n = [2, 7, 1, 8], 8
    want = reference(plan_dir, prompt, n)
    route = [cluster.a.url, [victim.url, cluster.spare.url], cluster.c.url]
    stopped_at: list[float] = []
    try:
        with PipelineClient(plan, route, hop_timeout=1.0) as client, client.session() as gen:
            def on_token(_token: int, count=[0]) -> None:  # noqa: B006
                count[0] += 1
                if count[0] == 3:
                    victim.proc.send_signal(signal.SIGSTOP)
                    stopped_at.append(time.monotonic())

            got = generate_tokens(gen.step, prompt, n, on_token=on_token)
            assert gen.recoveries == 1 and gen.places[1][0] == cluster.spare.url
        assert time.monotonic() - stopped_at[0] < 10  # detected by the hop timeout, not the client's
    finally:
        victim.proc.send_signal(signal.SIGCONT)
    assert got == want


def test_two_nodes_killed_at_once(plan, plan_dir, cluster, victim, store_url, logs):
    """Task 0's and task 1's nodes die together: each is re-routed and re-prefilled, lowest task first."""
    first = start_node("victim0", logs, tasks=[plan.tasks[0].task_id], store=store_url)
    try:
        first.wait_ready()
        prompt, n = [1, 2, 3, 4, 5, 6, 7], 12
        want = reference(plan_dir, prompt, n)
        route = [[first.url, cluster.a.url], [victim.url, cluster.spare.url], cluster.c.url]
        with PipelineClient(plan, route, hop_timeout=10) as client, client.session() as gen:
            def on_token(_token: int, count=[0]) -> None:  # noqa: B006
                count[0] += 1
                if count[0] == 5:
                    first.kill()
                    victim.kill()

            got = generate_tokens(gen.step, prompt, n, on_token=on_token)
            assert gen.recoveries == 2
            assert [p[0] for p in gen.places[:2]] == [cluster.a.url, cluster.spare.url]
        assert got == want
    finally:
        first.stop()
