"""Chat templates as models ship them render as ``transformers`` renders them, and a template that refuses the
messages or cannot render them is a ``ChatTemplateError`` naming why (the gateway's 400), never another
exception. The templates below use what Hugging Face templates use in the wild: ChatML, a refusal of roles
that do not alternate (Mistral, Llama 2), ``strftime_now``, ``namespace``, ``tojson`` and loop controls
(Llama 3.x), ``{% generation %}`` blocks."""

from __future__ import annotations

import pytest

from splitup.chat.renderer import render_chat
from splitup.models.errors import ChatTemplateError

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
ALTERNATING = (
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + '</s>' }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
DATED = (
    "{%- set date_string = strftime_now('%d %b %Y') %}"
    "{%- set ns = namespace(found=false, count=0) %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\n\nToday Date: ' + date_string + '\n' }}"
    "{{- {'tools': none, 'note': '<b>&</b>', 'é': 1} | tojson(indent=2) }}"
    "{%- for message in messages %}{%- set ns.count = ns.count + 1 %}"
    "{%- if message['role'] == 'stop' %}{%- break %}{%- endif %}"
    "{%- if message['role'] == 'skip' %}{%- continue %}{%- endif %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}{{- dict(n=ns.count) | tojson }}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
)
GENERATION = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}{% generation %}"
    "{{ 'A: ' + message['content'] + '\n' }}{% endgeneration %}{% else %}{{ 'U: ' + message['content'] + '\n' }}"
    "{% endif %}{% endfor %}"
)

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": " Why? "}],
    [{"role": "user", "content": "a"}, {"role": "skip", "content": "b"}, {"role": "stop", "content": "c"},
     {"role": "user", "content": "d"}],
]


@pytest.mark.parametrize("template", [CHATML, ALTERNATING, DATED, GENERATION], ids=["chatml", "alternating",
                                                                                   "dated", "generation"])
@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["one", "turns", "controls"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_templates_render_as_transformers_renders_them(template, messages, add_generation_prompt):
    chat = pytest.importorskip("transformers.utils.chat_template_utils")
    try:
        expected = chat._compile_jinja_template(template).render(messages=messages,
                                                                 add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # noqa: BLE001 - transformers' refusal, whatever its type: ours is named
        with pytest.raises(ChatTemplateError, match=str(exc)[:40].replace("(", r"\(").replace(")", r"\)")):
            render_chat(template, messages, add_generation_prompt)
        return
    assert render_chat(template, messages, add_generation_prompt) == expected


def test_a_refusal_names_the_templates_reason():
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        render_chat(ALTERNATING, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


@pytest.mark.parametrize("template", [
    "{{ messages[0]['content'] + 1 }}",  # a TypeError inside the template
    "{% for m in messages %}{{ m.missing.deeper }}{% endfor %}",  # undefined, then used
    "{{ nope( }}",  # not a template at all
    "{% set ns = namespace() %}{% set ns._secret = 1 %}",  # a sandbox escape attempt
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
], ids=["type", "undefined", "syntax", "namespace", "escape"])
def test_a_template_that_cannot_render_is_a_chat_template_error(template):
    with pytest.raises(ChatTemplateError):
        render_chat(template, [{"role": "user", "content": "x"}])
