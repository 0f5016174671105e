"""A commit retried while the first is still in flight (its answer lost, the chain not yet showing it) must
commit to the same transcript: whichever of the two lands, the announcement the node keeps, publishes and
shows its validator opens the commitment on chain. A fresh salt per try made them differ, and an honest node
would then look like one hiding its work."""

from __future__ import annotations

import numpy as np

from splitup.client.pipeline import plan_sends
from splitup.node.agent import RecordingNode
from splitup.node.node import NodeConfig
from splitup.node.wire import Envelope, Hop
from splitup.partition.task import Plan, task_dir
from splitup.verify.sandbox import write_plan


def test_every_transcript_of_a_task_commits_alike_until_it_is_committed(tmp_path) -> None:
    plan_dir = tmp_path / "plan"
    write_plan(plan_dir)
    tasks = Plan.load(plan_dir).tasks
    node = RecordingNode(NodeConfig(cache_dir=tmp_path / "cache", max_session_bytes=1 << 30))
    for t in tasks:
        node.load_bundle(task_dir(plan_dir, t), t.task_id)
    _, sends = plan_sends(tasks, ["logits"])
    route = [Hop(["http://127.0.0.1:9"], t.task_id, sends[k]) for k, t in enumerate(tasks)]

    def run(job: str) -> None:
        tensors = {"input_ids": np.array([[1, 2, 3]], np.int64)}
        for k in range(len(route)):
            tensors = node.compute(Envelope(job, k, route), tensors)

    last = tasks[-1].task_id
    run("a")
    run("b")
    first, retried = node.transcript("a", 2, last), node.transcript("a", 2, last)
    assert retried.salt == first.salt and retried.commitment() == first.commitment()
    assert node.transcript("b", 2, last).salt != first.salt  # salts still hide each job's transcript
    node.forget("a", last)  # committed: the salt goes with the rest of the record
    assert ("a", last) not in node.salts and ("b", last) in node.salts
