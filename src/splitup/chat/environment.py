"""The Jinja environment chat templates render in, made to behave as ``transformers``' renderer, and one
render in it with its output bounded. This runs inside a render worker (:mod:`splitup.chat.worker`)."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Compiling costs milliseconds (tens for a long template), rendering a conversation far less; a gateway
# renders the few templates of the models it serves over and over.
COMPILED_TEMPLATES = 32


class TemplateRefusal(Exception):
    """The template called ``raise_exception``: it refuses the messages, for the reason it gives."""


class OutputTooLarge(Exception):
    """The rendered text passed its limit of characters."""


def render(template: str, variables: Mapping[str, Any], max_chars: int) -> str:
    """``template`` rendered with ``variables``, the text stopped as soon as it passes ``max_chars``."""
    pieces: list[str] = []
    size = 0
    # generate() yields what render() joins, so the text is the same; text a macro or filter builds before
    # it is yielded is bounded by the worker's memory limit instead.
    for piece in _compiled(template).generate(**variables):
        size += len(piece)
        if size > max_chars:
            raise OutputTooLarge(max_chars)
        pieces.append(piece)
    return "".join(pieces)


@functools.lru_cache(maxsize=COMPILED_TEMPLATES)
def _compiled(template: str) -> jinja2.Template:
    return chat_environment().from_string(template)


@functools.cache
def chat_environment() -> ImmutableSandboxedEnvironment:
    """A sandbox (a template is data, not trusted code) with what Hugging Face's templates use besides the
    messages: ``raise_exception`` (a template refusing the conversation, e.g. roles that do not alternate),
    ``strftime_now``, ``tojson`` without HTML escaping, loop controls, ``{% generation %}`` blocks, ``dict``
    and ``namespace``."""

    class Generation(Extension):
        """``{% generation %}...{% endgeneration %}`` marks the assistant's part for training masks: its body."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return str(caller())

    class Namespace(jinja2.utils.Namespace):
        """No underscore names: a template must not reach the interpreter's internals through attributes."""

        def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - jinja's own signature trick (self in args)
            self, rest = args[0], args[1:]
            attrs = dict(*rest, **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name: Any) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"a template may not set {name!r} on a namespace")

    class Dict:
        """``dict(...)`` and ``dict.fromkeys(...)``, without the type itself (its attributes lead out)."""

        def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
            return dict(*args, **kwargs)

        def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
            return dict.fromkeys(*args, **kwargs)

    def raise_exception(message: Any) -> None:
        raise TemplateRefusal(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, namespace=Namespace,
                       strftime_now=lambda fmt: datetime.now().strftime(fmt), dict=Dict())
    return env
