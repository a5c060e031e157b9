"""Sessions: continued across restarts and replicas, forked, deleted; the
state they hold checked against the library itself (the Python binding
running the same turns on one state)."""
from __future__ import annotations

import json
import random
import signal
import threading
import time

import libbdh as bdh
import requests

from conftest import HTTP_TIMEOUT, SHAKESPEARE, TINY, sse_events

P1 = b"KING HENRY:\nOnce more unto the breach, dear friends,"
P2 = b"\n\nQUEEN MARGARET:\n"
P3 = b"\nFirst Lord:\n"


def reference(model_path, turns, **sampling):
    """The bytes each turn generates when all run on one library state."""
    with bdh.Model(str(model_path), threads=2) as m:
        st = m.new_state()
        return [b"".join(m.generate(p, max_new_tokens=n, state=st, **sampling)) for p, n in turns]


def turn(server, session, prompt, n, **kw):
    got = server.complete(prompt=list(prompt), max_tokens=n, temperature=0, session=session, return_tokens=True, **kw)
    return bytes(got["choices"][0]["tokens"])


def test_session_across_restart_equals_one_run(serve, tmp_path):
    want = reference(SHAKESPEARE, [(P1, 40), (P2, 60)], temperature=0)
    a = serve(SHAKESPEARE)
    assert turn(a, "play", P1, 40) == want[0]
    assert a.get("/v1/sessions/play").json()["position"] == len(P1) + 40
    assert a.stop() == 0
    b = serve(SHAKESPEARE)
    info = b.get("/v1/sessions/play").json()
    assert info["position"] == len(P1) + 40 and info["in_memory"] is False and info["bytes"] > 0
    assert turn(b, "play", P2, 60) == want[1]
    # one request over the whole text continues the same way (greedy, this model and text)
    whole = b.complete(prompt=list(P1 + want[0] + P2), max_tokens=60, temperature=0, return_tokens=True)
    assert bytes(whole["choices"][0]["tokens"]) == want[1]


def test_seeded_turns_equal_the_library(serve):
    sampling = dict(temperature=0.9, top_k=30, seed=11)
    want = reference(SHAKESPEARE, [(P1, 30), (P2, 30)], **sampling)
    s = serve(SHAKESPEARE)
    got = [bytes(s.complete(prompt=list(p), max_tokens=n, session="seeded", return_tokens=True,
                            **sampling)["choices"][0]["tokens"]) for p, n in [(P1, 30), (P2, 30)]]
    assert got == want


def test_redis_sessions_shared_by_two_servers(serve, redis_url):
    want = reference(SHAKESPEARE, [(P1, 30), (P2, 30), (P3, 30)], temperature=0)
    a = serve(SHAKESPEARE, sessions=redis_url)
    b = serve(SHAKESPEARE, sessions=redis_url)
    assert turn(a, "shared", P1, 30) == want[0]
    assert b.get("/v1/sessions/shared").json()["position"] == len(P1) + 30
    assert turn(b, "shared", P2, 30) == want[1]
    assert turn(a, "shared", P3, 30) == want[2]  # a holds no stale copy
    assert a.post("/v1/sessions/shared/fork", json={"id": "shared2"}).status_code == 200
    assert b.get("/v1/sessions/shared2").json()["position"] == len(P1 + P2 + P3) + 90
    assert requests.delete(b.url + "/v1/sessions/shared", timeout=HTTP_TIMEOUT).status_code == 200
    assert a.get("/v1/sessions/shared").status_code == 404


def test_fork_get_delete(serve):
    s = serve(TINY)
    turn(s, "src", b"hello", 10)
    r = s.post("/v1/sessions/src/fork", json={"id": "dst"})
    assert r.status_code == 200 and r.json()["id"] == "dst" and r.json()["position"] == 15
    assert turn(s, "src", b" more", 20) == turn(s, "dst", b" more", 20)
    assert s.post("/v1/sessions/src/fork", json={"id": "dst"}).status_code == 409  # exists
    assert s.post("/v1/sessions/nope/fork", json={"id": "x"}).status_code == 404
    assert s.post("/v1/sessions/src/fork", json={"id": "bad id!"}).status_code == 400
    assert s.post("/v1/sessions/src/fork", data=b"{").status_code == 400
    info = s.get("/v1/sessions/src").json()
    assert info["object"] == "session" and info["position"] == 40 and info["busy"] is False
    assert abs(info["last_used"] - time.time()) < 60
    url = s.url + "/v1/sessions/src"
    assert requests.delete(url, timeout=HTTP_TIMEOUT).json() == {"id": "src", "object": "session.deleted", "deleted": True}
    assert s.get("/v1/sessions/src").status_code == 404
    assert requests.delete(url, timeout=HTTP_TIMEOUT).status_code == 404
    assert s.get("/v1/sessions/" + "x" * 65).status_code == 400
    assert s.get("/v1/sessions/nothing").json()["error"]["code"] == "session_not_found"


def long_stream(server, session, prompt=b"ROMEO:", n=8000):
    return requests.post(server.url + "/v1/completions", stream=True, timeout=HTTP_TIMEOUT,
                         json=dict(prompt=list(prompt), max_tokens=n, temperature=0, session=session, stream=True,
                                   return_tokens=True))


def wait_idle(server, session, limit=30):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        info = server.get(f"/v1/sessions/{session}").json()
        if not info.get("busy"):
            return info
        time.sleep(0.05)
    raise AssertionError(f"session {session} still busy after {limit} s")


def test_busy_session_is_409(serve):
    s = serve(SHAKESPEARE)
    r = long_stream(s, "busy")
    lines = r.iter_lines()
    next(lines)  # it runs
    second = s.post("/v1/completions", json=dict(prompt="x", max_tokens=1, session="busy"))
    assert second.status_code == 409 and second.json()["error"]["code"] == "session_busy"
    assert s.get("/v1/sessions/busy").json()["busy"] is True
    assert requests.delete(s.url + "/v1/sessions/busy", timeout=HTTP_TIMEOUT).status_code == 409
    assert s.post("/v1/sessions/busy/fork", json={"id": "b2"}).status_code == 409
    r.close()
    wait_idle(s, "busy")


def test_disconnect_mid_stream_keeps_exactly_the_generated_tokens(serve):
    s = serve(SHAKESPEARE)
    prompt = b"ROMEO:"
    r = long_stream(s, "gone", prompt)
    lines = r.iter_lines()
    got = 0
    for line in lines:
        if line:
            got += 1
        if got == 20:
            break
    r.close()  # the client goes away
    n = wait_idle(s, "gone")["position"] - len(prompt)
    assert 20 <= n < 8000
    # the session holds prompt + those n tokens, bit for bit: it continues as the library does
    want = reference(SHAKESPEARE, [(prompt, n), (b"\nJULIET:", 30)], temperature=0)
    assert turn(s, "gone", b"\nJULIET:", 30) == want[1]
    metrics = s.get("/metrics").text
    assert "bdh_client_disconnects_total 1" in metrics


def test_sigterm_finishes_or_cuts_persists_and_exits_0(serve):
    s = serve(SHAKESPEARE)
    turn(s, "idle", b"idle session", 5)
    r = long_stream(s, "cut")
    events = []
    lines = r.iter_lines()
    for line in lines:
        if line:
            events.append(line)
        if len(events) == 5:
            break
    s.proc.send_signal(signal.SIGTERM)
    for line in lines:  # the stream is cut after the grace period and ends properly
        if line:
            events.append(line)
    assert events[-1] == b"data: [DONE]"
    last = json.loads(events[-2][6:])
    assert last["choices"][0]["finish_reason"] == "length"
    n = last["usage"]["completion_tokens"]
    tokens = [t for e in events[:-1] for t in json.loads(e[6:])["choices"][0]["tokens"]]
    assert len(tokens) == n and 5 <= n <= 8000  # cut by the grace, or finished within it on a fast machine
    assert s.stop(timeout=30) == 0
    b = serve(SHAKESPEARE)
    assert b.get("/v1/sessions/cut").json()["position"] == len(b"ROMEO:") + n
    assert b.get("/v1/sessions/idle").json()["position"] == len(b"idle session") + 5


def test_kill_9_during_writes_leaves_a_readable_session(serve):
    """Turns run back to back (each one stores the 4 MiB state); a SIGKILL at
    a random moment lands during a write often. The session must then read
    back at a position some turn reached: the one before, or the one in
    flight if its write had completed."""
    rng = random.Random(5)
    s = serve(SHAKESPEARE)
    turn(s, "k", b"start", 1)
    positions = [len(b"start") + 1]
    for attempt in range(4):
        stop = threading.Event()

        def loop():
            while not stop.is_set():
                try:
                    s.complete(prompt="ab", max_tokens=1, temperature=0, session="k")
                except Exception:
                    return
                positions.append(positions[-1] + 3)

        t = threading.Thread(target=loop)
        t.start()
        time.sleep(rng.uniform(0.05, 0.5))
        s.proc.send_signal(signal.SIGKILL)
        s.proc.wait(timeout=30)
        stop.set()
        t.join(timeout=30)
        s = serve(SHAKESPEARE)
        p = s.get("/v1/sessions/k").json()["position"]
        assert p in (positions[-1], positions[-1] + 3)
        if p != positions[-1]:
            positions.append(p)
        assert s.complete(prompt="ab", max_tokens=1, temperature=0, session="k")["usage"]["completion_tokens"] == 1
        positions.append(positions[-1] + 3)
    assert s.stop() == 0


def test_stream_and_plain_store_before_answering(serve):
    s = serve(TINY)
    r = s.post("/v1/completions", stream=True, json=dict(prompt="abc", max_tokens=7, session="st", stream=True))
    assert sse_events(r)[-1] == "[DONE]"
    assert s.get("/v1/sessions/st").json()["position"] == 10


def test_memory_budget_drops_the_least_recently_used(serve):
    # tiny's state is 64 KiB: a 128 KiB budget holds two idle sessions
    want = reference(TINY, [(b"one", 8), (b" again", 8)], temperature=0)
    s = serve(TINY, "--memory", "128K")
    assert turn(s, "m1", b"one", 8) == want[0]
    turn(s, "m2", b"two", 8)
    turn(s, "m3", b"three", 8)
    in_memory = {i: s.get(f"/v1/sessions/m{i}").json()["in_memory"] for i in (1, 2, 3)}
    assert in_memory == {1: False, 2: True, 3: True}
    assert "bdh_sessions_in_memory 2" in s.get("/metrics").text
    assert turn(s, "m1", b" again", 8) == want[1]  # read back from the store
    assert s.get("/v1/sessions/m2").json()["in_memory"] is False  # now the least recent


def test_session_of_another_model_is_409(serve, tmp_path):
    a = serve(TINY)
    turn(a, "other", b"abc", 3)
    assert a.stop() == 0
    b = serve(TINY.parent / "f16.model.safetensors")  # same shapes, other weights
    r = b.post("/v1/completions", json=dict(prompt="x", max_tokens=1, session="other"))
    assert r.status_code == 409 and r.json()["error"]["code"] == "session_model_mismatch"


def test_session_through_the_openai_client(serve):
    import openai
    want = reference(SHAKESPEARE, [(P1, 20), (P2, 20)], temperature=0)
    s = serve(SHAKESPEARE)
    client = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", timeout=60, max_retries=0)
    texts = [client.completions.create(model="shakespeare", prompt=p.decode(), max_tokens=20, temperature=0,
                                       extra_body={"session": "client"}).choices[0].text for p in (P1, P2)]
    assert texts == [w.decode() for w in want]


def test_disconnect_during_a_plain_request_stops_it(serve):
    import socket
    s = serve(SHAKESPEARE)
    body = json.dumps(dict(prompt="ROMEO:", max_tokens=8000, temperature=0, session="plain-gone")).encode()
    c = socket.create_connection(("127.0.0.1", s.port), timeout=10)
    c.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    time.sleep(0.5)
    c.close()
    n = wait_idle(s, "plain-gone")["position"] - len(b"ROMEO:")
    assert 0 < n < 8000
    want = reference(SHAKESPEARE, [(b"ROMEO:", n), (b"\nJULIET:", 20)], temperature=0)
    assert turn(s, "plain-gone", b"\nJULIET:", 20) == want[1]
    assert "bdh_client_disconnects_total 1" in s.get("/metrics").text


def test_sigterm_refuses_the_queue_with_503(serve):
    from concurrent.futures import ThreadPoolExecutor
    s = serve(SHAKESPEARE, "--max-streams", "1", "--max-queue", "4")
    r = long_stream(s, "first")
    lines = r.iter_lines()  # kept: a dropped generator closes the connection
    next(lines)
    with ThreadPoolExecutor(1) as pool:
        queued = pool.submit(s.post, "/v1/completions", json=dict(prompt="a", max_tokens=5))
        deadline = time.monotonic() + 20
        while "bdh_queue_length 1" not in s.get("/metrics").text:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        s.proc.send_signal(signal.SIGTERM)
        refused = queued.result(timeout=60)
    assert refused.status_code == 503 and "shutting down" in refused.json()["error"]["message"]
    assert [line for line in lines if line][-1] == b"data: [DONE]"
    assert s.stop() == 0
