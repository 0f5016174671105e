"""The routing envelope's wire form in frames: the route's text parsed once per job, hop and steps apart."""

from __future__ import annotations

import json

import pytest

from splitup.node import wire
from splitup.node.wire import Envelope, Hop, WireError


def _env(hop: int = 0, steps: tuple[int | None, ...] = (4, 9)) -> Envelope:
    return Envelope("job", hop, [Hop(["http://a:1"], "t0", ["h"], "s0", steps[0]),
                                 Hop(["http://b:2", "http://c:3"], "t1", ["logits"], "s1", steps[1], ["logits"])],
                    12.5, {"decoding": "{}"})


def test_round_trip_and_the_text_is_parsed_once_per_route():
    env = _env()
    text, hop, steps = env.to_wire()
    assert hop == 0 and steps == [4, 9] and "step" not in text
    back = Envelope.from_wire([text, 1, [5, 10]])
    assert back == Envelope(env.job, 1, [Hop(h.urls, h.task, h.send, h.session, s, h.last)
                                         for h, s in zip(env.route, [5, 10], strict=True)], 12.5, env.meta)
    # the next token's frame: same text, new steps; parsed from the kept route, forwarded as received
    assert wire._ROUTES[text].route[1].urls is Envelope.from_wire([text, 0, [6, 11]]).route[1].urls
    assert back.next().to_wire() == [text, 2, [5, 10]] and back.next().wire is text
    # a generation's next step: the route at new steps, sent with them (None: a hop's step as it was)
    later = back.at_steps([6, None])
    assert [h.step for h in later.route] == [6, 10] and later.to_wire() == [text, 1, [6, 10]]
    assert back.at_steps([7, 11]).to_wire() == [text, 1, [7, 11]]
    with pytest.raises(ValueError, match="1 steps for a route of 2 hops"):
        back.at_steps([6])
    # a stateless hop has no step
    free = Envelope("j", 0, [Hop(["http://a"], "t", ["y"])])
    assert Envelope.from_wire(free.to_wire()) == free


@pytest.mark.parametrize(("value", "words"), [
    ({"job": "j"}, "expected \\[text, hop index, steps\\]"),
    (["{}", 0], "expected \\[text, hop index, steps\\]"),
    (["{}", "0", []], "expected \\[text, hop index, steps\\]"),
    (["not json", 0, [1]], "malformed routing envelope"),
    (["[1, 2]", 0, [1]], "expected an object with a route"),
    ([json.dumps({"job": "j", "route": [{"urls": ["ftp://x"], "task": "t", "send": []}]}), 0, [1]], "http"),
    ([json.dumps({"job": "j", "route": []}), 0, []], "route of 0 hops"),
    ([json.dumps({"job": "j", "route": [{"urls": ["http://x"], "task": "t", "send": []}], "hop_timeout": 0}), 0,
      [None]], "hop_timeout"),
])
def test_malformed_wire_forms_are_refused_typed(value: object, words: str):
    with pytest.raises(WireError, match=words):
        Envelope.from_wire(value)


def test_hop_index_and_steps_are_checked_against_the_kept_route():
    text = _env().to_wire()[0]
    Envelope.from_wire([text, 1, [1, 2]])  # the route is kept now: the checks below run on the cached one
    with pytest.raises(WireError, match="hop index 2"):
        Envelope.from_wire([text, 2, [1, 2]])
    with pytest.raises(WireError, match="1 steps"):
        Envelope.from_wire([text, 0, [1]])
    with pytest.raises(WireError, match="session needs an integer step"):
        Envelope.from_wire([text, 0, [1, None]])
    with pytest.raises(WireError, match="not an integer"):
        Envelope.from_wire([text, 0, [1, 2.5]])


def test_the_route_cache_is_bounded(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(wire, "_ROUTES", {})
    monkeypatch.setattr(wire, "ROUTE_CACHE", 3)
    texts = [Envelope(f"job{i}", 0, [Hop(["http://a"], "t", ["y"])]).to_wire()[0] for i in range(5)]
    for text in texts:
        Envelope.from_wire([text, 0, [None]])
    assert list(wire._ROUTES) == texts[2:]  # the oldest went first
    long = Envelope("j" * 100, 0, [Hop(["http://a"], "t" * (wire.ROUTE_CACHE_CHARS + 1), ["y"])]).to_wire()
    assert Envelope.from_wire(long).current.task == "t" * (wire.ROUTE_CACHE_CHARS + 1)
    assert long[0] not in wire._ROUTES  # parsed, not kept


def test_a_later_envelope_takes_the_route_text_only_when_just_steps_and_hop_differ():
    first = _env()
    first.to_wire()
    later = _env(steps=(5, 10))
    assert later.to_wire(like=first)[0] is first.wire and later.to_wire()[2] == [5, 10]
    moved = Envelope("job", 0, [Hop(["http://a:1"], "t0", ["h"], "s0", 5),
                                Hop(["http://d:4"], "t1", ["logits"], "s9", 10, ["logits"])], 12.5, {"decoding": "{}"})
    text = moved.to_wire(like=first)[0]
    assert text != first.wire and Envelope.from_wire([text, 1, [5, 10]]).current.urls == ["http://d:4"]
    assert not _env().same_route(Envelope("job", 0, _env().route, 12.5, {}))  # meta differs
