"""POST /v1/completions against `bdh generate`, the reference: the same
prompt and sampler settings give the same bytes (docs/server.md)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import SHAKESPEARE, TINY, generate, sse_events

PROMPT = b"ROMEO:\nWhat light through yonder window breaks?\n"
# longer than two prefill chunks (128 bytes each): fed in pieces between decode rounds
LONG_PROMPT = (b"First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
               b"First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n\n"
               b"First Citizen:\nFirst, you know Caius Marcius is chief enemy to the people.\n")
SAMPLED = dict(temperature=0.8, top_k=40, top_p=0.9, min_p=0.05, repeat_penalty=1.1, seed=7)
SAMPLED_ARGS = ["--temperature", "0.8", "--top-k", "40", "--top-p", "0.9", "--min-p", "0.05",
                "--repeat-penalty", "1.1", "--seed", "7"]


def test_openai_client_plain_and_streaming(serve):
    s = serve(SHAKESPEARE)
    client = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", timeout=60, max_retries=0)
    want = generate(SHAKESPEARE, PROMPT, 80, "--temperature", "0").decode("utf-8", "replace")

    c = client.completions.create(model="shakespeare", prompt=PROMPT.decode(), max_tokens=80, temperature=0)
    assert c.object == "text_completion" and c.model == "shakespeare" and c.id.startswith("cmpl-")
    assert c.choices[0].text == want
    assert c.choices[0].finish_reason == "length" and c.choices[0].index == 0
    assert (c.usage.prompt_tokens, c.usage.completion_tokens) == (len(PROMPT), 80)
    assert c.usage.total_tokens == len(PROMPT) + 80

    chunks = list(client.completions.create(model="shakespeare", prompt=PROMPT.decode(), max_tokens=80,
                                            temperature=0, stream=True))
    assert len(chunks) > 10  # streamed, not one block
    assert "".join(ch.choices[0].text for ch in chunks) == want
    assert [ch.choices[0].finish_reason for ch in chunks][-1] == "length"
    assert all(ch.choices[0].finish_reason is None for ch in chunks[:-1])

    models = client.models.list()
    assert [m.id for m in models.data] == ["shakespeare"]


@pytest.mark.parametrize("model", [SHAKESPEARE, TINY], ids=["shakespeare", "tiny"])
@pytest.mark.parametrize("prompt", [PROMPT, LONG_PROMPT], ids=["short", "long"])
def test_greedy_and_seeded_equal_generate_byte_for_byte(serve, model, prompt):
    s = serve(model)
    for settings, args in [(dict(temperature=0), ["--temperature", "0"]), (SAMPLED, SAMPLED_ARGS)]:
        want = generate(model, prompt, 120, *args)
        got = s.complete(prompt=list(prompt), max_tokens=120, return_tokens=True, **settings)
        assert bytes(got["choices"][0]["tokens"]) == want
        # the text: invalid UTF-8 (the tiny model's random bytes) as U+FFFD, the way Python decodes it
        assert got["choices"][0]["text"] == want.decode("utf-8", "replace")
        r = s.post("/v1/completions", json=dict(prompt=list(prompt), max_tokens=120, return_tokens=True,
                                                 stream=True, **settings), stream=True)
        events = sse_events(r)
        assert events[-1] == "[DONE]"
        chunks = [e["choices"][0] for e in events[:-1]]
        assert bytes(t for c in chunks for t in c["tokens"]) == want
        assert "".join(c["text"] for c in chunks) == want.decode("utf-8", "replace")


def test_string_prompt_is_its_utf8_bytes(serve):
    s = serve(SHAKESPEARE)
    text = "JULIET:\nO Romeo, Romeo! — café ☃\n"
    want = generate(SHAKESPEARE, text.encode(), 40, "--temperature", "0")
    got = s.complete(prompt=text, max_tokens=40, temperature=0, return_tokens=True)
    assert bytes(got["choices"][0]["tokens"]) == want
    assert got["usage"]["prompt_tokens"] == len(text.encode())


def test_stop_sequences_end_and_are_left_out(serve):
    s = serve(SHAKESPEARE)
    full = generate(SHAKESPEARE, PROMPT, 200, "--temperature", "0")
    stop = full[30:33].decode()  # certain to occur
    want = generate(SHAKESPEARE, PROMPT, 200, "--temperature", "0", "--stop", stop)
    assert want.endswith(stop.encode())  # bdh generate keeps it; the OpenAI API does not
    got = s.complete(prompt=PROMPT.decode(), max_tokens=200, temperature=0, stop=[stop, "never-here"])
    assert got["choices"][0]["text"] == want[:-len(stop)].decode()
    assert got["choices"][0]["finish_reason"] == "stop"
    assert got["usage"]["completion_tokens"] == len(want)
    r = s.post("/v1/completions", json=dict(prompt=PROMPT.decode(), max_tokens=200, temperature=0, stop=stop,
                                             stream=True), stream=True)
    events = sse_events(r)
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == want[:-len(stop)].decode()
    assert events[-2]["choices"][0]["finish_reason"] == "stop"

    # several at once: the byte completing the stop is published a scheduler
    # round before the job ends, the widest window for it to leak into a stream
    def streamed(_):
        r = s.post("/v1/completions", json=dict(prompt=PROMPT.decode(), max_tokens=200, temperature=0, stop=stop,
                                                 stream=True), stream=True)
        return "".join(e["choices"][0]["text"] for e in sse_events(r)[:-1])
    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(streamed, range(8))) == {want[:-len(stop)].decode()}


def test_max_tokens_zero_feeds_the_prompt_only(serve):
    s = serve(TINY)
    got = s.complete(prompt="abc", max_tokens=0, session="z")
    assert got["choices"][0]["text"] == "" and got["usage"]["completion_tokens"] == 0
    assert s.get("/v1/sessions/z").json()["position"] == 3


def test_health_models_metrics(serve):
    s = serve(TINY)
    assert s.get("/health").json() == {"status": "ok"}
    m = s.get("/v1/models").json()
    assert m["object"] == "list" and m["data"][0]["id"] == "tiny.model" and m["data"][0]["object"] == "model"
    s.complete(prompt="hello", max_tokens=10, session="m1")
    r = s.get("/metrics")
    assert r.headers["Content-Type"].startswith("text/plain")
    fams = {f.name: f for f in text_string_to_metric_families(r.text)}
    value = lambda name: fams[name].samples[0].value  # noqa: E731
    assert value("bdh_generated_tokens") == 10  # the parser drops counters' _total
    assert value("bdh_prompt_tokens") == 5
    assert value("bdh_active_streams") == 0 and value("bdh_queue_length") == 0
    assert value("bdh_sessions_in_memory") == 1 and value("bdh_sessions_stored") == 1
    assert value("bdh_session_memory_bytes") > 0
    assert value("bdh_tokens_per_second") >= 0
    codes = {s.labels["code"]: s.value for s in fams["bdh_requests"].samples}
    assert codes["200"] >= 3
