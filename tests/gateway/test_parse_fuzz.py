"""Whatever JSON a client sends to ``/v1/completions`` or ``/v1/chat/completions``, the gateway's parsing ends in
a request or a ``BadRequest`` naming the field (its 4xx), before any job is posted: never another exception
(a 500). The model's own chat template renders the messages, so a template's refusal is a 400 too."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitup.gateway.openai_api import BadRequest, GenRequest, parse
from splitup.partition.task import Plan
from splitup.sdk.catalog import CatalogError
from splitup.sdk.client import Client
from splitup.verify.sandbox import write_plan

TEMPLATE = (  # refuses roles that do not alternate, as Mistral's and Llama 2's templates do
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{{ '<' + message['role'] + '>' + message['content'] }}{% endfor %}"
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)
FIELDS = ["model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "seed", "stop",
          "stream", "n", "top_p"]
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]) | json_values},
                                          optional={"content": st.text(max_size=20) | json_values | st.lists(
                                              st.fixed_dictionaries({"type": st.just("text") | json_values},
                                                                    optional={"text": json_values}), max_size=3)})
                    | json_values, max_size=4)
bodies = st.fixed_dictionaries({}, optional={
    "model": st.just("m") | json_values, "prompt": st.text(max_size=30) | json_values, "messages": messages,
    "max_tokens": st.integers(-3, 5000) | json_values, "temperature": st.floats() | json_values,
    "seed": st.integers(-3, 2**70) | json_values, "stop": st.lists(st.text(max_size=3), max_size=6) | json_values,
    **{k: json_values for k in ("max_completion_tokens", "stream", "n", "top_p")}}) | json_values


class _Client:
    """The SDK calls the parser makes, on a real small plan and this template; no chain."""

    def __init__(self, plan: Plan) -> None:
        self.entry = SimpleNamespace(name="m", plan=plan, manifest=SimpleNamespace(kind="decoder",
                                                                                 chat_template=TEMPLATE,
                                                                                 special_tokens={}))
        self.template_timeout = 2.0

    def plan(self, model: str) -> Any:
        if model != "m":
            raise CatalogError(f"no model named {model!r}")
        return self.entry

    chat_prompt = Client.chat_prompt

    def encode(self, entry: Any, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) % 500 for c in text]


@pytest.fixture(scope="module")
def svc(tmp_path_factory) -> SimpleNamespace:
    return SimpleNamespace(client=_Client(write_plan(tmp_path_factory.mktemp("plan"))))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(body=bodies, chat=st.booleans())
def test_any_body_is_a_request_or_a_bad_request(svc, body, chat):
    try:
        req = parse(body, svc, chat=chat)
    except BadRequest as exc:
        assert 400 <= exc.status < 500 and str(exc)
        return
    assert isinstance(req, GenRequest) and req.prompt_ids and 1 <= req.max_tokens


def test_typed_content_parts_that_are_not_text_are_a_bad_request(svc):
    body = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}
    with pytest.raises(BadRequest) as bad:
        parse(body, svc, chat=True)
    assert bad.value.status == 400 and bad.value.param == "messages"


def test_a_conversation_the_template_refuses_is_a_400_naming_its_reason(svc):
    body = {"model": "m", "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}
    with pytest.raises(BadRequest, match="roles must alternate") as bad:
        parse(body, svc, chat=True)
    assert bad.value.status == 400 and bad.value.param == "messages"
