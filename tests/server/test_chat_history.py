"""Chat history recognition (docs/server.md, "POST /v1/chat/completions",
Sessions): an OpenAI client resends the whole conversation every turn; a
session that holds the beginning of it (FNV-1a of the bytes its state
consumed) feeds only the rest, and tells how much in
usage.prompt_tokens_details.cached_tokens. The reference for every reply is
the same request without a session (the whole prompt fed), greedy."""
from __future__ import annotations

import struct

import openai
import pytest

from conftest import HTTP_TIMEOUT, SHAKESPEARE, Server

MAX = 80  # bytes of a reply: the lines below are chosen where the stop comes first
SETTING = [{"role": "system", "content": "A street in Verona."}]
LINES = ["What say you?", "Hear me.", "Speak, speak.", "Who goes there?", "Farewell, my lord.", "Good morrow.",
         "Away, I say!", "Peace, ho!"]


def render(messages) -> bytes:
    """The template of docs/server.md, written out independently of the server."""
    turns = "".join(f"{m.get('name') or m['role'].upper()}:\n{m['content']}\n\n" for m in messages)
    return (turns + "ASSISTANT:\n").encode()


def client(s: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=s.url + "/v1", api_key="unused", timeout=HTTP_TIMEOUT, max_retries=0)


def ask(s: Server, messages, session=None, stream=False, stops=True, **settings):
    """(reply, usage) of a greedy chat turn; session None: no session;
    stops: the reply must end at the default stop."""
    extra = {"session": session, **settings} if session else settings
    c = client(s).chat.completions.create(model="m", messages=messages, temperature=0, max_tokens=MAX,
                                          stream=stream, extra_body=extra)
    if not stream:
        assert not stops or c.choices[0].finish_reason == "stop"
        return c.choices[0].message.content, c.usage
    chunks = list(c)
    assert chunks[-1].choices[0].finish_reason == "stop"
    return "".join(ch.choices[0].delta.content or "" for ch in chunks), chunks[-1].usage


def position(s: Server, session: str) -> int:
    r = s.get(f"/v1/sessions/{session}")
    assert r.status_code == 200, r.text
    return r.json()["position"]


def next_turn(s: Server, history, **settings):
    """The history plus a user line whose reply (without a session: the
    reference) ends at the default stop, and that reply."""
    for line in LINES:
        messages = history + [{"role": "user", "content": line}]
        c = client(s).chat.completions.create(model="m", messages=messages, temperature=0, max_tokens=MAX,
                                              extra_body=settings)
        if c.choices[0].finish_reason == "stop":
            assert c.usage.prompt_tokens == len(render(messages))
            assert c.usage.prompt_tokens_details.cached_tokens == 0  # nothing to recognise
            return messages, c.choices[0].message.content
    pytest.fail("no line's greedy reply ends at a blank line within MAX bytes")


def resend(s: Server, session: str, history, cached: int, stream=False, **settings):
    """One turn of a client resending its whole history with a session:
    the reply equals the reference's, the session's previous position is
    recognised; the history with the reply."""
    messages, want = next_turn(s, history, **settings)
    got, usage = ask(s, messages, session, stream, **settings)
    assert got == want
    assert usage.prompt_tokens == len(render(messages))
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details.cached_tokens == cached
    assert position(s, session) == len(render(messages)) + usage.completion_tokens  # the reply and its stop
    return messages + [{"role": "assistant", "content": got}]


# the penalty's window (64 bytes) reaches back into the recognised part:
# the sampler must see the whole prompt, as without a session
@pytest.mark.parametrize("settings", [{}, {"repeat_penalty": 1.5}], ids=["greedy", "penalised"])
def test_resent_history_is_fed_from_where_the_session_is(serve, settings):
    s = serve(SHAKESPEARE)
    history, sent = SETTING, 0
    for turn in range(3):
        was = position(s, "resent") if turn else 0
        assert turn == 0 or was > 0
        history = resend(s, "resent", history, cached=was, stream=turn == 1, **settings)
        if settings:
            continue  # (the penalty's window differs for a client sending only new messages)
        # a client sending only the new messages gets the same reply, nothing recognised
        got, usage = ask(s, history[sent:-1], "only-new")
        assert got == history[-1]["content"] and usage.prompt_tokens_details.cached_tokens == 0
        sent = len(history)
    assert settings or position(s, "only-new") == position(s, "resent")


def test_an_edited_history_is_not_recognised(serve):
    s = serve(SHAKESPEARE)
    history = resend(s, "edited", SETTING, cached=0)
    history = resend(s, "edited", history, cached=len(render(history[:-1])) + len(history[-1]["content"]) + 2)
    before = position(s, "edited")
    edited = [dict(m) for m in history] + [{"role": "user", "content": "Hear me."}]
    edited[1]["content"] += " "  # the first user line, one byte longer
    _, usage = ask(s, edited, "edited", stops=False)
    assert usage.prompt_tokens_details.cached_tokens == 0
    # fed on top of the state, as any prompt that is not recognised
    assert position(s, "edited") == before + len(render(edited)) + usage.completion_tokens


def test_recognition_survives_a_restart_and_a_fork_and_a_v1_blob_is_read(serve, tmp_path):
    a = serve(SHAKESPEARE)
    history = resend(a, "kept", SETTING, cached=0)
    held = position(a, "kept")
    assert a.stop() == 0
    blob = (tmp_path / "sessions" / "kept.state").read_bytes()
    magic, last_used, pos, length, _, hash_position = struct.unpack_from("<8s5Q", blob)
    assert magic == b"BDHSESS2" and pos == hash_position == held and length == len(blob) - 48
    # the same session as version 1 wrote it: 32-byte header, no hash
    (tmp_path / "sessions" / "old.state").write_bytes(b"BDHSESS1" + blob[8:32] + blob[48:])

    b = serve(SHAKESPEARE)
    assert b.post("/v1/sessions/kept/fork", json={"id": "forked"}).status_code == 200
    assert position(b, "old") == held
    after = resend(b, "kept", history, cached=held)
    assert resend(b, "forked", history, cached=held) == after
    # the old blob loads and continues; it is simply not recognised
    _, usage = ask(b, after[:-1], "old", stops=False)
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert position(b, "old") == held + len(render(after[:-1])) + usage.completion_tokens


def test_a_completion_joins_the_history(serve):
    s = serve(SHAKESPEARE)
    messages, want = next_turn(s, SETTING)
    r = s.complete(prompt=render(messages).decode(), max_tokens=MAX, temperature=0, stop="\n\n", session="mixed")
    assert r["choices"][0]["text"] == want and r["choices"][0]["finish_reason"] == "stop"
    assert r["usage"].get("prompt_tokens_details", {"cached_tokens": 0})["cached_tokens"] == 0
    # the session holds the prompt, the reply and its stop: the chat's history
    held = position(s, "mixed")
    assert held == len(render(messages)) + r["usage"]["completion_tokens"]
    # a fork of the session in memory holds the same history
    assert s.post("/v1/sessions/mixed/fork", json={"id": "mixed-2"}).status_code == 200
    history = messages + [{"role": "assistant", "content": want}]
    assert resend(s, "mixed", history, cached=held) == resend(s, "mixed-2", history, cached=held)


def test_recognised_on_another_replica(serve, redis_url):
    a = serve(SHAKESPEARE, sessions=redis_url)
    b = serve(SHAKESPEARE, sessions=redis_url)
    history = resend(a, "shared", SETTING, cached=0)
    resend(b, "shared", history, cached=position(a, "shared"))  # the hash travels with the blob
