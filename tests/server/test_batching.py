"""Continuous batching: requests running together get the bytes each gets
alone (bdh_step_batch is bit-identical to single steps; prompts are fed in
the chunks one bdh_prefill takes)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from prometheus_client.parser import text_string_to_metric_families

from conftest import SHAKESPEARE, sse_events

N = 16


def request(i):
    prompt = (f"CITIZEN {i}:\n" + "Speak, speak. " * (i * 3)).encode()  # 11 to 600 bytes: some prompts take chunks
    settings = dict(temperature=0) if i % 2 else dict(temperature=0.9, top_p=0.95, seed=100 + i)
    return dict(prompt=list(prompt), max_tokens=40 + 5 * i, return_tokens=True, stream=i % 4 == 0, **settings)


def run(server, body):
    r = server.post("/v1/completions", json=body, stream=body["stream"])
    assert r.status_code == 200, r.text
    if not body["stream"]:
        c = r.json()["choices"][0]
        return bytes(c["tokens"]), c["text"]
    chunks = [e["choices"][0] for e in sse_events(r)[:-1]]
    return bytes(t for c in chunks for t in c["tokens"]), "".join(c["text"] for c in chunks)


def test_16_concurrent_clients_each_equal_their_serial_run(serve):
    s = serve(SHAKESPEARE, "--max-streams", str(N))
    bodies = [request(i) for i in range(N)]
    serial = [run(s, b) for b in bodies]
    with ThreadPoolExecutor(N) as pool:
        together = list(pool.map(lambda b: run(s, b), bodies))
    assert together == serial
    for (tokens, text), b in zip(serial, bodies):
        assert len(tokens) == b["max_tokens"] and text == tokens.decode("utf-8", "replace")
    fams = {f.name: f for f in text_string_to_metric_families(s.get("/metrics").text)}
    # they did run together: some bdh_step_batch call advanced several streams
    assert fams["bdh_batch_size_max"].samples[0].value > 1


def test_queue_beyond_streams_still_equal(serve):
    s = serve(SHAKESPEARE, "--max-streams", "2", "--max-queue", "16")
    bodies = [request(i) for i in range(6)]
    serial = [run(s, b) for b in bodies]
    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(lambda b: run(s, b), bodies)) == serial
    fams = {f.name: f for f in text_string_to_metric_families(s.get("/metrics").text)}
    assert fams["bdh_batch_size_max"].samples[0].value == 2
