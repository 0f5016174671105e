"""The client half of the network-namespace test, run inside a namespace: ``python netns_client.py PLAN OUT URL...``.

Writes the greedy tokens and one batch run's logits to OUT (safetensors) for the test to compare.
"""

from __future__ import annotations

import sys

import numpy as np
from safetensors.numpy import save_file

from splitup.client.pipeline import PipelineClient
from splitup.partition.task import Plan


def main(plan_dir: str, out: str, *route: str) -> None:
    with PipelineClient(Plan.load(plan_dir), list(route), hop_timeout=20) as client:
        tokens = client.generate([11, 22, 33], 12)
        logits = client.run({"input_ids": np.arange(8, dtype=np.int64).reshape(1, 8)}, outputs=["logits"])["logits"]
        nodes = [h["node"] for h in client.last_hops]
        assert client.last_parked
    save_file({"tokens": np.asarray(tokens, np.int64), "logits": logits}, out, metadata={"nodes": ",".join(nodes)})


if __name__ == "__main__":
    main(*sys.argv[1:])
