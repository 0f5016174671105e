"""What the demo runs: the real SmolLM2-135M (``splitup.models``) or, with ``--smaller``, the zoo's
tiny LLaMA with random weights and a byte-level tokenizer (for the integration test)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from splitup.partition import PartitionError, analyze, partition, plan_partition

TINY_CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                      "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@dataclass
class DemoModel:
    name: str
    graph: onnx.ModelProto  # the whole model with a KV cache: split for the market, run whole as the reference
    tokenizer_json: str
    chat_template: str | None
    bos_id: int | None
    eos_ids: tuple[int, ...]
    description: str
    special_tokens: dict[str, str] = field(default_factory=dict)  # bos_token, ...: what chat templates write


def byte_tokenizer_json() -> str:
    """A byte-level tokenizer (256 byte tokens + one end-of-text token) for models without their own."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    return str(tok.to_str())


def load_demo_model(smaller: bool, max_seq: int = 64, dtype: str = "fp32") -> DemoModel:
    """The demo's model; ``dtype`` fp32, fp16, int8 or int4 (SmolLM2's own 4-bit blocks as shipped)."""
    if smaller:
        from splitup.graph import zoo

        return DemoModel("tiny-llama", zoo.build("tiny-llama", seed=0, dtype=dtype), byte_tokenizer_json(),
                         TINY_CHAT_TEMPLATE, None, (256,), "4-layer LLaMA with random weights (zoo), byte-level tokenizer",
                         {"eos_token": "<|endoftext|>"})
    from splitup.models.real import load_real_model

    m = load_real_model("smollm2-135m", max_seq=max_seq, dtype=dtype)
    return DemoModel(m.name, m.model, str(m.tokenizer.to_str()), m.chat_template, m.bos_id, tuple(m.eos_ids),
                     m.spec.description, m.special_tokens)


def node_budgets(graph: onnx.ModelProto, nodes: int, tasks: int, workspace: int) -> list[int]:
    """``nodes`` different memory sizes (10% apart) under which the partitioner needs exactly ``tasks`` tasks."""
    a = analyze(graph)
    whole = partition(a, 2**42, workspace_bytes=workspace).segments[0].vram_bytes
    for frac in np.linspace(0.9, 0.1, 161):
        sizes = [int(whole * frac * (1 + 0.1 * k)) for k in range(nodes)]
        try:
            if len(plan_partition(a, sizes, workspace_bytes=workspace)[1].segments) == tasks:  # as make_plan plans
                return sizes
        except PartitionError:
            continue
    raise PartitionError(f"no set of {nodes} node sizes splits {graph.graph.name} into {tasks} tasks")
