"""POST /v1/chat/completions against POST /v1/completions, the reference:
the messages rendered by the documented template (docs/server.md) and the
default stop "\\n\\n" give byte for byte the completion of that prompt."""
from __future__ import annotations

import json

import openai
import pytest
import requests

from conftest import HTTP_TIMEOUT, SHAKESPEARE, TINY, Server, sse_events

SAMPLED = dict(temperature=0.8, top_k=40, top_p=0.9, min_p=0.05, repeat_penalty=1.1, seed=7)
HISTORY = [
    {"role": "system", "content": "A scene in Verona."},
    {"role": "user", "name": "ROMEO", "content": "What light through yonder window breaks?"},
    {"role": "assistant", "content": [{"type": "text", "text": "It is the east, "}, {"type": "text", "text": "and Juliet is the sun."}]},
    {"role": "user", "content": "Arise, fair sun."},
]
QUESTION = [{"role": "user", "content": "What say you?"}]
# user lines whose greedy reply (the shipped model) may end at a blank line soon
CANDIDATES = ["What say you?", "Hear me.", "Speak, speak.", "Who goes there?", "Farewell, my lord."]


def render(messages, assistant="ASSISTANT") -> str:
    """The template of docs/server.md, written out independently of the server."""
    def text(c):
        return c if isinstance(c, str) else "".join(p["text"] for p in c)
    turns = "".join(f"{m.get('name') or m['role'].upper()}:\n{text(m['content'])}\n\n" for m in messages)
    return turns + f"{assistant}:\n"


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """One server per model for the module (each test uses its own session ids)."""
    d = tmp_path_factory.mktemp("chat")
    started = {m: Server(m, str(d / f"sessions-{m.stem}"), log=d / f"{m.stem}.log") for m in (SHAKESPEARE, TINY)}
    yield started
    for s in started.values():
        s.kill()


@pytest.fixture(scope="module")
def asked(servers):
    """A question whose greedy reply ends at a blank line within 60 bytes,
    found rather than assumed (the stop must fire, not the length)."""
    s = servers[SHAKESPEARE]
    for line in CANDIDATES:
        question = [{"role": "user", "content": line}]
        full = s.complete(prompt=render(question), max_tokens=60, temperature=0)["choices"][0]["text"]
        if "\n\n" in full[:58]:
            return question, full
    pytest.fail("no candidate's greedy reply has a blank line within 60 bytes")


def client(s: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=s.url + "/v1", api_key="unused", timeout=HTTP_TIMEOUT, max_retries=0)


def chat(s: Server, **body) -> dict:
    r = s.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("model", [SHAKESPEARE, TINY], ids=["shakespeare", "tiny"])
@pytest.mark.parametrize("settings", [dict(temperature=0), SAMPLED], ids=["greedy", "seeded"])
def test_chat_equals_completion_of_the_rendered_prompt(servers, model, settings):
    s = servers[model]
    prompt = render(HISTORY, "JULIET")
    want = s.complete(prompt=prompt, max_tokens=60, stop="\n\n", **settings)
    c = client(s).chat.completions.create(model="m", messages=HISTORY, max_tokens=60,
                                          extra_body={"assistant_name": "JULIET", **settings})
    assert c.object == "chat.completion" and c.id.startswith("chatcmpl-") and c.model == want["model"]
    assert c.choices[0].index == 0 and c.choices[0].message.role == "assistant"
    assert c.choices[0].message.content == want["choices"][0]["text"]
    assert c.choices[0].finish_reason == want["choices"][0]["finish_reason"]
    assert c.usage.prompt_tokens == len(prompt.encode()) == want["usage"]["prompt_tokens"]
    assert c.usage.completion_tokens == want["usage"]["completion_tokens"]
    assert c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens

    # streamed: role first, then content deltas, then an empty delta with the finish and usage
    chunks = list(client(s).chat.completions.create(model="m", messages=HISTORY, max_tokens=60, stream=True,
                                                    extra_body={"assistant_name": "JULIET", **settings}))
    assert all(ch.object == "chat.completion.chunk" and ch.id == chunks[0].id for ch in chunks)
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert all(ch.choices[0].delta.role is None and ch.choices[0].delta.content for ch in chunks[1:-1])
    last = chunks[-1].choices[0]
    assert last.delta.content is None and last.finish_reason == c.choices[0].finish_reason
    assert all(ch.choices[0].finish_reason is None for ch in chunks[:-1])
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == c.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == c.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == c.usage.prompt_tokens


def test_stream_events_end_with_done(servers, asked):
    s = servers[SHAKESPEARE]
    r = s.post("/v1/chat/completions", json=dict(messages=asked[0], temperature=0, stream=True), stream=True)
    assert r.headers["Content-Type"] == "text/event-stream"
    events = sse_events(r)
    assert events[-1] == "[DONE]"
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[-2]["choices"][0]["delta"] == {} and events[-2]["choices"][0]["finish_reason"] == "stop"
    assert "usage" in events[-2] and all("usage" not in e for e in events[:-2])


def test_default_stop_ends_the_turn_at_a_blank_line(servers, asked):
    s = servers[SHAKESPEARE]
    question, full = asked
    end = full.index("\n\n")
    # no max_tokens: a chat reply runs to its stop (bounded by --max-tokens)
    c = client(s).chat.completions.create(model="m", messages=question, temperature=0)
    assert c.choices[0].message.content == full[:end]
    assert c.choices[0].finish_reason == "stop"
    assert c.usage.completion_tokens == end + 2  # the stop sequence counts: the state consumed it

    # a given stop replaces the default: the blank line stays in the reply
    after = full[end + 2:end + 18]  # up to 16 bytes of the next turn: found there first
    c = client(s).chat.completions.create(model="m", messages=question, temperature=0, max_tokens=80, stop=[after])
    assert c.choices[0].message.content == full[:end + 2] and c.choices[0].finish_reason == "stop"
    # and an empty list means no stop at all
    got = chat(s, messages=question, temperature=0, max_tokens=60, stop=[])
    assert got["choices"][0]["message"]["content"] == full and got["choices"][0]["finish_reason"] == "length"


def test_max_completion_tokens_is_max_tokens(servers):
    s = servers[TINY]
    want = s.complete(prompt=render(QUESTION), max_tokens=7, temperature=0, stop="\n\n")
    c = client(s).chat.completions.create(model="m", messages=QUESTION, temperature=0, max_completion_tokens=7)
    assert c.choices[0].message.content == want["choices"][0]["text"]
    assert c.usage.completion_tokens == want["usage"]["completion_tokens"]
    if want["choices"][0]["finish_reason"] == "length":
        assert c.usage.completion_tokens == 7
    assert chat(s, messages=QUESTION, max_completion_tokens=0)["usage"]["completion_tokens"] == 0


def test_session_across_two_turns_equals_one_completion(servers, asked):
    s = servers[SHAKESPEARE]
    first = asked[0]
    second = [{"role": "user", "name": "ROMEO", "content": "Hear me."}]
    r1 = chat(s, messages=first, temperature=0, max_tokens=60, session="chat-a")
    a1 = r1["choices"][0]["message"]["content"]
    assert r1["choices"][0]["finish_reason"] == "stop"
    r2 = chat(s, messages=second, temperature=0, max_tokens=60, session="chat-a")
    a2 = r2["choices"][0]["message"]["content"]

    # the session holds the whole transcript: turn 1, its reply and the blank line that stopped it, turn 2
    text = render(first) + a1 + "\n\n" + render(second)
    want = s.complete(prompt=text, max_tokens=60, temperature=0, stop="\n\n")
    assert a2 == want["choices"][0]["text"]
    assert r2["usage"]["prompt_tokens"] == len(render(second).encode())
    position = s.get("/v1/sessions/chat-a").json()["position"]
    assert position == len(text.encode()) + r2["usage"]["completion_tokens"]

    # which is what a client without a session gets by resending the whole history
    history = first + [{"role": "assistant", "content": a1}] + second
    assert chat(s, messages=history, temperature=0, max_tokens=60)["choices"][0]["message"]["content"] == a2


BAD = [
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": "hello"}, "messages"),
    ({"messages": [1]}, "messages[0]"),
    ({"messages": [{"content": "x"}]}, "messages[0].role"),
    ({"messages": QUESTION + [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, "messages[1].role"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "a\u0000b"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]}, "messages[0].content[0]"),
    ({"messages": QUESTION + [{"role": "user", "content": [{"type": "text", "text": "ok"}, {"type": "text", "text": "a\u0000"}]}]},
     "messages[1].content[1]"),
    ({"messages": [{"role": "user", "content": "x", "name": ""}]}, "messages[0].name"),
    ({"messages": [{"role": "user", "content": "x", "name": 7}]}, "messages[0].name"),
    ({"messages": [{"role": "user", "content": "x", "name": "A\nB"}]}, "messages[0].name"),
    ({"messages": [{"role": "user", "content": "x", "name": "A\u0000B"}]}, "messages[0].name"),
    ({"messages": QUESTION + [{"role": "user", "content": "x", "name": "\u0000B"}]}, "messages[1].name"),
    ({"messages": QUESTION, "assistant_name": "A\nB"}, "assistant_name"),
    ({"messages": QUESTION, "assistant_name": "A\u0000"}, "assistant_name"),
    ({"messages": QUESTION, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"messages": QUESTION, "tool_choice": "auto"}, "tool_choice"),
    ({"messages": QUESTION, "response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": QUESTION, "n": 2}, "n"),
    ({"messages": QUESTION, "logprobs": True}, "logprobs"),
    ({"messages": QUESTION, "top_logprobs": 3}, "top_logprobs"),
    ({"messages": QUESTION, "logit_bias": {"65": 5}}, "logit_bias"),
    ({"messages": QUESTION, "presence_penalty": 0.5}, "presence_penalty"),
    ({"messages": QUESTION, "max_tokens": -1}, "max_tokens"),
    ({"messages": QUESTION, "max_completion_tokens": 10 ** 6}, "max_completion_tokens"),
    ({"messages": QUESTION, "top_k": 1.5}, "top_k"),
    ({"messages": QUESTION, "stop": ""}, "stop"),
    ({"messages": QUESTION, "stream": "yes"}, "stream"),
    ({"messages": QUESTION, "session": "no spaces"}, "session"),
]


@pytest.mark.parametrize("body,param", BAD, ids=[f"{i}-{p}" for i, (_, p) in enumerate(BAD)])
def test_bad_fields_are_400_naming_the_field(servers, body, param):
    r = servers[TINY].post("/v1/chat/completions", data=json.dumps(body))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and param in err["message"]


def test_neutral_values_pass_and_the_client_sees_400s(servers):
    s = servers[TINY]
    got = chat(s, messages=QUESTION, max_tokens=1, tools=[], tool_choice="none", response_format={"type": "text"},
               n=1, logprobs=False, presence_penalty=0, logit_bias={}, model="anything")
    assert got["usage"]["completion_tokens"] == 1
    with pytest.raises(openai.BadRequestError) as e:
        client(s).chat.completions.create(model="m", messages=[{"role": "tool", "content": "x", "tool_call_id": "1"}])
    assert e.value.status_code == 400
    assert requests.get(s.url + "/v1/chat/completions", timeout=HTTP_TIMEOUT).status_code == 405
