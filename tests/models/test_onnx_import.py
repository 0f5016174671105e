"""A PyTorch model we did not write: exported with torch.onnx, validated, partitioned, run in pieces."""

import numpy as np
import onnx
import pytest

from splitup.graph.errors import GraphRejected
from splitup.graph.validate import validate_model
from splitup.models.errors import ModelError
from splitup.models.onnx_import import declare_dims, export_torch
from splitup.runtime.local import LocalPipeline

from .splits import plan_with_tasks

torch = pytest.importorskip("torch", reason="the export path needs the torch extra")


class Block(torch.nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(d)
        self.up = torch.nn.Linear(d, 4 * d)
        self.down = torch.nn.Linear(4 * d, d)

    def forward(self, x):
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))


class Net(torch.nn.Module):
    def __init__(self, d: int = 64, n: int = 4) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(16, d)
        self.blocks = torch.nn.ModuleList(Block(d) for _ in range(n))
        self.out = torch.nn.Linear(d, 10)

    def forward(self, x):
        h = self.inp(x)
        for b in self.blocks:
            h = b(h)
        return torch.softmax(self.out(h), -1)


@pytest.fixture(scope="module")
def net_and_model():
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():  # distinct LayerNorm parameters: the exporter merges identical initializers
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model = export_torch(net, (torch.randn(2, 16),), input_names=["x"], output_names=["probs"],
                         dynamic_axes={"x": {0: "batch"}, "probs": {0: "batch"}}, dim_max={"batch": 64})
    return net, model


def test_export_validates_with_declared_bounds(net_and_model):
    _, model = net_and_model
    report = validate_model(model)
    assert report.dim_max == {"batch": 64}
    assert report.input_shapes["x"] == (64, 16)
    assert report.parameter_count == sum(p.numel() for p in net_and_model[0].parameters())


def test_undeclared_dynamic_axis_is_refused(net_and_model):
    _, model = net_and_model
    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    del bare.metadata_props[:]
    with pytest.raises(GraphRejected):
        validate_model(bare)
    with pytest.raises(ModelError, match="batch"):
        declare_dims(bare, {})


@pytest.mark.parametrize("tasks", [2, 3])
def test_partitioned_export_matches_torch(net_and_model, tasks, tmp_path):
    net, model = net_and_model
    plan_with_tasks(model, "net", tasks, tmp_path)
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = net(x).numpy()
    got = LocalPipeline(tmp_path).run({"x": x.numpy()})["probs"]
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
