"""Limits and bad input: OpenAI-style errors with the right status, and a
server that goes on working."""
from __future__ import annotations

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from conftest import HTTP_TIMEOUT, SHAKESPEARE, TINY, sse_events


def error_of(r, status):
    assert r.status_code == status, r.text
    e = r.json()["error"]
    assert set(e) == {"message", "type", "param", "code"} and e["message"]
    return e


BAD = [
    (b"{", None),
    (b"[1, 2]", None),
    (b"", None),
    (b'{"max_tokens": 5}', "prompt"),
    (b'{"prompt": ""}', "prompt"),
    (b'{"prompt": []}', "prompt"),
    (b'{"prompt": 7}', "prompt"),
    (b'{"prompt": [1, 256]}', "prompt"),
    (b'{"prompt": [1, -1]}', "prompt"),
    (b'{"prompt": [1.5]}', "prompt"),
    (b'{"prompt": [[1, 2]]}', "prompt"),
    (b'{"prompt": ["a", "b"]}', "prompt"),
    (b'{"prompt": "a", "max_tokens": "5"}', "max_tokens"),
    (b'{"prompt": "a", "max_tokens": -1}', "max_tokens"),
    (b'{"prompt": "a", "max_tokens": 2.5}', "max_tokens"),
    (b'{"prompt": "a", "max_tokens": 100001}', "max_tokens"),
    (b'{"prompt": "a", "temperature": "hot"}', "temperature"),
    (b'{"prompt": "a", "temperature": -1}', ""),
    (b'{"prompt": "a", "top_p": 0}', ""),
    (b'{"prompt": "a", "top_p": 1.5}', ""),
    (b'{"prompt": "a", "min_p": 2}', ""),
    (b'{"prompt": "a", "top_k": -3}', "top_k"),
    (b'{"prompt": "a", "repeat_penalty": 0}', ""),
    (b'{"prompt": "a", "seed": -1}', "seed"),
    (b'{"prompt": "a", "seed": "x"}', "seed"),
    (b'{"prompt": "a", "stop": 3}', "stop"),
    (b'{"prompt": "a", "stop": [""]}', "stop"),
    (b'{"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}', "stop"),
    (b'{"prompt": "a", "stream": "yes"}', "stream"),
    (b'{"prompt": "a", "session": "no spaces"}', "session"),
    (b'{"prompt": "a", "session": 5}', "session"),
    (b'{"prompt": "a", "n": 2}', "n"),
    (b'{"prompt": "a", "echo": true}', "echo"),
    (b'{"prompt": "a", "logprobs": 3}', "logprobs"),
    (b'{"prompt": "a", "suffix": "b"}', "suffix"),
    (b'{"prompt": "a", "presence_penalty": 0.5}', "presence_penalty"),
    (b'{"prompt": "a", "model": 3}', "model"),
    (b'{"prompt": "\\ud800"}', None),
    # a NUL would end the string unseen (cJSON), escaped or raw
    (b'{"prompt": "ab\\u0000cd"}', "prompt"),
    (b'{"prompt": ["ab\\u0000"]}', "prompt"),
    (b'{"prompt": "ab\x00cd"}', "prompt"),
    (b'{"prompt": "a", "stop": "x\\u0000y"}', "stop"),
    (b'{"prompt": "a", "stop": ["z", "x\\u0000y"]}', "stop"),
]


def test_bad_requests_are_400_with_the_field(serve):
    s = serve(TINY, "--max-tokens", "100000")
    for body, param in BAD:
        e = error_of(s.post("/v1/completions", data=body), 400)
        assert e["type"] == "invalid_request_error"
        if param is not None:
            assert (e["param"] or "") == param, (body, e)
    # neutral values of unsupported fields pass, unknown fields are ignored
    ok = s.complete(prompt="a", max_tokens=2, n=1, echo=False, logprobs=None, presence_penalty=0, user="me", extra=1)
    assert ok["usage"]["completion_tokens"] == 2
    # a backslash before "u0000" is text, not a NUL
    ok = s.complete(prompt="a\\u0000", max_tokens=2, stop="\\u0000")
    assert ok["usage"]["completion_tokens"] == 2
    assert s.get("/health").status_code == 200


def test_max_tokens_bound(serve):
    s = serve(TINY, "--max-tokens", "50")
    e = error_of(s.post("/v1/completions", json=dict(prompt="a", max_tokens=51)), 400)
    assert e["param"] == "max_tokens" and "50" in e["message"]
    assert s.complete(prompt="a", max_tokens=50)["usage"]["completion_tokens"] == 50


def test_body_size_413(serve):
    s = serve(TINY, "--max-body", "1K")
    error_of(s.post("/v1/completions", json=dict(prompt="a" * 2000)), 413)
    # no Content-Length (chunked): counted as it arrives
    chunks = (b'{"prompt": "' + b"a" * 500, b"a" * 600 + b'"}')
    error_of(s.post("/v1/completions", data=iter(chunks)), 413)
    assert s.complete(prompt="a" * 900, max_tokens=1)["usage"]["prompt_tokens"] == 900


def test_streams_and_queue_full_503_retry_after(serve):
    s = serve(SHAKESPEARE, "--max-streams", "1", "--max-queue", "0")
    r = requests.post(s.url + "/v1/completions", stream=True, timeout=HTTP_TIMEOUT,
                      json=dict(prompt="ROMEO:", max_tokens=8000, stream=True))
    lines = r.iter_lines()  # kept: a dropped generator closes the connection
    next(lines)
    busy = s.post("/v1/completions", json=dict(prompt="a", max_tokens=1))
    e = error_of(busy, 503)
    assert busy.headers["Retry-After"] == "1" and e["code"] == "overloaded"
    r.close()
    deadline = time.monotonic() + 30
    while s.post("/v1/completions", json=dict(prompt="a", max_tokens=1)).status_code == 503:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_queue_timeout_is_503_and_the_server_goes_on(serve):
    """--timeout passed in the queue: a plain request gets 503, a stream an
    error event then [DONE]; the stream they waited for ends as a length
    limit, and the server serves on."""
    # The queue is first in, first out and every request has the same
    # --timeout, so the streams a queued request waits for reach their own
    # deadline (and free their place) before its deadline comes: it times out
    # in the queue only when one scheduler round outlasts the gap, as a long
    # prefill chunk of a large model can. SIGSTOP makes such a round on any
    # machine: the whole server held still past every deadline.
    T = 5  # seconds: room for the setup below, which must end before the first deadline
    s = serve(SHAKESPEARE, "--max-streams", "1", "--max-queue", "2", "--timeout", str(T), "--max-tokens", "100000")
    started = time.monotonic()
    r = requests.post(s.url + "/v1/completions", stream=True, timeout=HTTP_TIMEOUT,
                      json=dict(prompt="ROMEO:", max_tokens=100000, stream=True))
    lines = r.iter_lines()  # kept: a dropped generator closes the connection
    next(lines)  # generating: it holds the one stream

    def timed(stream):
        t0 = time.monotonic()
        got = s.post("/v1/completions", stream=stream, json=dict(prompt="a", max_tokens=5, stream=stream))
        got = (got.status_code, sse_events(got)) if stream else got
        return got, time.monotonic() - t0

    with ThreadPoolExecutor(2) as pool:
        plain = pool.submit(timed, False)
        streamed = pool.submit(timed, True)
        deadline = time.monotonic() + 20
        while "bdh_queue_length 2" not in s.get("/metrics").text:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        s.proc.send_signal(signal.SIGSTOP)
        try:
            # else the first stream's own --timeout freed its place first: the
            # queued requests would have run, and this test tested nothing
            assert time.monotonic() - started < T, "the setup took longer than --timeout"
            time.sleep(T + 0.5)  # every deadline passes while the server is stopped
        finally:
            s.proc.send_signal(signal.SIGCONT)
        (refused, waited), ((status, events), waited_stream) = plain.result(timeout=60), streamed.result(timeout=60)

    e = error_of(refused, 503)
    assert e["code"] == "unavailable" and "timed out waiting in the queue" in e["message"]
    assert status == 200 and events[-1] == "[DONE]" and len(events) == 2
    assert events[0]["error"]["code"] == "unavailable" and "timed out" in events[0]["error"]["message"]
    # A request's deadline is its arrival plus --timeout, so a refusal for
    # time cannot come sooner on any machine (an overloaded 503 comes at once).
    assert waited >= T and waited_stream >= T
    rest = [line for line in lines if line]
    assert rest[-1] == b"data: [DONE]"
    assert json.loads(rest[-2][len(b"data: "):])["choices"][0]["finish_reason"] == "length"
    # the server goes on: nothing left running or queued, and it serves
    metrics = s.get("/metrics").text
    assert "bdh_queue_length 0" in metrics and "bdh_active_streams 0" in metrics
    assert s.complete(prompt="a", max_tokens=5)["usage"]["completion_tokens"] == 5
    events = sse_events(s.post("/v1/completions", stream=True, json=dict(prompt="a", max_tokens=5, stream=True)))
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length"


def test_timeout_ends_generation_as_length(serve):
    s = serve(SHAKESPEARE, "--timeout", "1")
    t0 = time.monotonic()
    got = s.complete(prompt="ROMEO:", max_tokens=8000, session="late")
    assert time.monotonic() - t0 < 10
    n = got["usage"]["completion_tokens"]
    assert got["choices"][0]["finish_reason"] == "length" and 0 < n < 8000
    assert s.get("/v1/sessions/late").json()["position"] == 6 + n


@pytest.mark.parametrize("method,path,status", [
    ("GET", "/nope", 404), ("GET", "/v1/completions", 405), ("POST", "/v1/models", 405), ("POST", "/health", 405),
    ("PUT", "/v1/sessions/a", 405), ("GET", "/v1/sessions/a/other", 404), ("GET", "/v1/sessions/a/fork", 405),
])
def test_routes(serve, method, path, status):
    s = serve(TINY)
    error_of(requests.request(method, s.url + path, timeout=HTTP_TIMEOUT), status)
