"""Streaming generation: reproducibility, parity with the C tool and the C
callback loop, stop sequences, pull-style streaming in the calling thread,
text mode, continuing states, early stop, errors."""
from __future__ import annotations

import ctypes
import gc
import subprocess
import threading
import time

import numpy as np
import pytest

import libbdh as bdh
from libbdh import _lib
from conftest import DATA, ODD, TINY, cli_path

PROMPT = b"ROMEO:"
LONG = DATA / "golden" / "long.model.safetensors"


def gen(model, prompt=PROMPT, **kw):
    return b"".join(model.generate(prompt, **kw))


def test_chunks_are_single_bytes(tiny):
    chunks = list(tiny.generate(PROMPT, max_new_tokens=30, seed=1))
    assert len(chunks) == 30
    assert all(isinstance(c, bytes) and len(c) == 1 for c in chunks)


def test_reproducible_by_seed(tiny):
    kw = dict(max_new_tokens=80, temperature=1.0, top_k=50, top_p=0.95, min_p=0.01, repeat_penalty=1.1)
    a = gen(tiny, seed=1234, **kw)
    assert a == gen(tiny, seed=1234, **kw)
    assert a != gen(tiny, seed=1235, **kw)
    g = tiny.generate(PROMPT, max_new_tokens=5)  # seed None: a random one, reported
    out = b"".join(g)
    assert out == gen(tiny, max_new_tokens=5, seed=g.seed)


def test_defaults():
    import inspect

    sig = inspect.signature(bdh.Model.generate)
    d = {k: v.default for k, v in sig.parameters.items()}
    assert d["max_new_tokens"] == 200 and d["temperature"] == 0.8
    assert d["top_k"] is None and d["top_p"] is None and d["seed"] is None
    assert d["state"] is None and d["stop"] is None
    assert list(sig.parameters)[:9] == ["self", "prompt", "max_new_tokens", "temperature", "top_k", "top_p",
                                        "seed", "state", "stop"]


def test_greedy_is_argmax(tiny):
    out = gen(tiny, max_new_tokens=40, temperature=0)
    s = tiny.new_state()
    logits = s.prefill(PROMPT)
    want = bytearray()
    for _ in range(40):
        t = int(np.argmax(logits))
        want.append(t)
        logits = s.step(t)
    assert out == bytes(want)


@pytest.mark.parametrize(
    "name, bad, words",
    [
        ("temperature", "hot", "temperature must be a number, not str"),
        ("top_k", 1.5, "top_k must be an int, not float"),
        ("top_p", b"x", "top_p must be a number, not bytes"),
        ("min_p", np.array([0.1]), "min_p must be a number, not ndarray"),
        ("repeat_penalty", [1.2], "repeat_penalty must be a number, not list"),
        ("repeat_window", 8.0, "repeat_window must be an int, not float"),
        ("repeat_window", 2**31, "repeat_window = 2147483648 does not fit in int32"),
    ],
)
def test_sampler_parameter_types(name, bad, words):
    """Each sampler field is checked as its C type (int32 or float)."""
    with pytest.raises((TypeError, ValueError)) as e:
        bdh.Sampler(256, **{name: bad})
    assert str(e.value) == words


def test_sampler_parameters_reach_c():
    p = bdh.Sampler(256, temperature=0.5, top_k=np.int64(7), top_p=0.75, min_p=0.125, repeat_penalty=1.5,
                    repeat_window=9, seed=3).params
    assert p == dict(temperature=0.5, top_k=7, top_p=0.75, min_p=0.125, repeat_penalty=1.5, repeat_window=9, seed=3)


def test_matches_python_loop_with_sampler(tiny):
    """bdh_generate == prefill + (sample, accept, step) with the C sampler."""
    kw = dict(temperature=0.9, top_k=40, top_p=0.9, repeat_penalty=1.3, repeat_window=16, seed=99)
    out = gen(tiny, max_new_tokens=60, **kw)
    sampler = bdh.Sampler(256, **kw)
    s = tiny.new_state()
    for t in PROMPT:
        sampler.accept(t)
    logits = s.prefill(PROMPT)
    want = bytearray()
    for _ in range(60):
        t = sampler.sample(logits)
        sampler.accept(t)
        want.append(t)
        logits = s.step(t)
    assert out == bytes(want)
    assert "seed=99" in repr(sampler)
    sampler.close()


CLI_CASES = [
    ([], dict(temperature=0)),
    (["--seed", "7"], dict(seed=7)),  # the CLI's default temperature is 0.8, as ours
    (["--seed", "42", "--temperature", "1.2", "--top-k", "30", "--top-p", "0.9", "--min-p", "0.02",
      "--repeat-penalty", "1.2", "--repeat-window", "8"],
     dict(seed=42, temperature=1.2, top_k=30, top_p=0.9, min_p=0.02, repeat_penalty=1.2, repeat_window=8)),
]


@pytest.mark.parametrize("args,kw", CLI_CASES, ids=["greedy", "seed", "all-options"])
def test_same_bytes_as_cli(tiny, args, kw):
    cli = cli_path()
    if cli is None:
        pytest.skip("no bdh command-line tool built (make builds $(BUILD)/bdh from tools/cli/)")
    n = 120
    if "temperature" in kw and kw["temperature"] == 0:
        args = args + ["--temperature", "0"]
    r = subprocess.run([str(cli), "generate", "-m", str(TINY), "-p", PROMPT.decode(), "-n", str(n), *args],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert gen(tiny, max_new_tokens=n, **kw) == r.stdout


def test_cli_stop_sequence(tiny):
    cli = cli_path()
    if cli is None:
        pytest.skip("no bdh command-line tool built")
    full = gen(tiny, max_new_tokens=100, temperature=0)
    stop = full[30:32]
    r = subprocess.run([str(cli), "generate", "-m", str(TINY), "-p", PROMPT.decode(), "-n", "100",
                        "--temperature", "0", "--stop", stop.decode("latin-1")], capture_output=True, timeout=60)
    if r.returncode != 0 or any(b >= 0x80 for b in stop):
        pytest.skip("stop bytes not expressible on this command line")
    assert gen(tiny, max_new_tokens=100, temperature=0, stop=stop) == r.stdout


def test_stop_sequences(tiny):
    full = gen(tiny, max_new_tokens=150, temperature=0)
    stop = full[40:43]
    end = full.find(stop) + len(stop)
    g = tiny.generate(PROMPT, max_new_tokens=150, temperature=0, stop=stop)
    out = b"".join(g)
    assert out == full[:end] and out.endswith(stop)
    assert g.stats["stop_reason"] == "stop" and g.stats["n_generated"] == end
    # several, first one to complete wins; str and bytes mix
    other = full[90:92]
    both = gen(tiny, max_new_tokens=150, temperature=0, stop=[other, stop.decode("latin-1").encode("latin-1")])
    first = min(full.find(stop) + len(stop), full.find(other) + len(other))
    assert both == full[:first]
    never = gen(tiny, max_new_tokens=150, temperature=0, stop=["\x00never\x00"])
    assert never == full
    ascii_stop = next((full[i:i + 2] for i in range(len(full) - 1) if full[i] < 128 and full[i + 1] < 128), None)
    if ascii_stop is not None:
        out = gen(tiny, max_new_tokens=150, temperature=0, stop=ascii_stop.decode())
        assert out.endswith(ascii_stop)


def test_streaming_is_pull(tiny):
    """Each next() generates one token and feeds it to the state before
    returning it: nothing is generated ahead of the consumer."""
    s = tiny.new_state()
    g = tiny.generate(PROMPT, max_new_tokens=100, seed=3, state=s)
    assert s.position == 0  # generate() feeds nothing
    first = next(g)
    assert isinstance(first, bytes)
    assert g.stats is None  # not finished
    time.sleep(0.05)
    assert s.position == len(PROMPT) + 1  # prompt and the token returned, no more
    next(g)
    next(g)
    assert s.position == len(PROMPT) + 3
    rest = b"".join(g)
    assert len(rest) == 97
    assert s.position == len(PROMPT) + 100
    assert g.stats["n_generated"] == 100 and g.stats["stop_reason"] == "length"
    assert g.stats["n_prompt"] == len(PROMPT)


def test_no_thread(tiny):
    """The C generator runs in the calling thread: no worker thread, and an
    observer sees the tokens on the consumer's thread."""
    before = threading.active_count()
    me = threading.get_ident()
    seen = set()
    s = tiny.new_state()
    s.set_observer(lambda a: seen.add(threading.get_ident()))
    counts = []
    for _ in tiny.generate(PROMPT, max_new_tokens=50, seed=8, state=s):
        counts.append(threading.active_count())
    assert counts == [before] * 50
    assert seen == {me}
    assert threading.active_count() == before


def _c_generate(model, prompt, n, seed, stop=None):
    """Tokens that the C loop bdh_generate hands to its callback."""
    got = []

    @_lib.TokenCallback
    def on_token(token, user):
        got.append(token)
        return 0

    params = _lib.lib.bdh_generate_default_params()
    params.sampler.seed = seed
    params.sampler.temperature = 0.8
    params.max_new_tokens = n
    stops = None
    if stop is not None:
        stops = ((ctypes.c_char_p * 1)(stop), (ctypes.c_size_t * 1)(len(stop)))
        params.stop = ctypes.cast(stops[0], ctypes.POINTER(ctypes.c_char_p))
        params.stop_len = ctypes.cast(stops[1], ctypes.POINTER(ctypes.c_size_t))
        params.n_stop = 1
    toks = np.frombuffer(prompt, np.uint8).astype(np.int32)
    stats = _lib.GenerateStats()
    s = model.new_state()
    with s._h.use() as ptr:
        _lib.lib.bdh_generate(ptr, toks.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)), toks.size,
                              ctypes.byref(params), on_token, None, ctypes.byref(stats))
    return got, s.save()


def test_same_tokens_as_c_callback_path(tiny):
    """The binding's pull loop and bdh_generate's callback loop give the same
    tokens and leave the same state, for the same seed."""
    want, want_blob = _c_generate(tiny, PROMPT, 120, seed=77)
    s = tiny.new_state()
    got = list(tiny.generate(PROMPT, max_new_tokens=120, seed=77, state=s, tokens=True))
    assert got == want and len(got) == 120
    assert s.save() == want_blob
    # with a stop sequence: the same stopping point
    stop = bytes(want[50:52])
    want, _ = _c_generate(tiny, PROMPT, 120, seed=77, stop=stop)
    assert bytes(want).endswith(stop)
    assert gen(tiny, max_new_tokens=120, seed=77, stop=stop) == bytes(want)


def test_streaming_first_chunk_early():
    with bdh.Model(LONG, threads=1) as m:
        t0 = time.perf_counter()
        g = m.generate(PROMPT, max_new_tokens=400, seed=5)
        next(g)
        t_first = time.perf_counter() - t0
        for _ in g:
            pass
        t_total = time.perf_counter() - t0
    assert t_first < t_total / 4, (t_first, t_total)


def test_text_mode(tiny):
    raw = gen(tiny, max_new_tokens=200, seed=11, temperature=1.0)
    assert any(b >= 0x80 for b in raw)  # random weights: plenty of non-ASCII
    chunks = list(tiny.generate(PROMPT, max_new_tokens=200, seed=11, temperature=1.0, text=True))
    assert all(isinstance(c, str) and c for c in chunks)
    assert "".join(chunks) == raw.decode("utf-8", errors="replace")


def test_text_mode_buffers_partial_characters(tiny):
    """Multi-byte characters come out whole, in one chunk, never split."""
    kw = dict(max_new_tokens=3000, seed=21, temperature=1.0)
    raw = gen(tiny, **kw)
    text = raw.decode("utf-8", errors="replace")
    multi = [c for c in text if 0x80 <= ord(c) and c != "\ufffd"]
    assert multi, "expected some valid multi-byte characters in 3000 random bytes"
    chunks = list(tiny.generate(PROMPT, text=True, **kw))
    assert "".join(chunks) == text
    assert all(len(c) == 1 or all(ch == "\ufffd" for ch in c[:-1]) for c in chunks)
    whole = [c for c in chunks if any(0x80 <= ord(ch) and ch != "\ufffd" for ch in c)]
    assert len(whole) == len(multi)


def test_str_prompt(tiny):
    assert gen(tiny, "ROMEO:", max_new_tokens=20, seed=2) == gen(tiny, b"ROMEO:", max_new_tokens=20, seed=2)
    assert gen(tiny, "é", max_new_tokens=10, seed=2) == gen(tiny, "é".encode(), max_new_tokens=10, seed=2)
    assert gen(tiny, [82, 79], max_new_tokens=10, seed=2) == gen(tiny, b"RO", max_new_tokens=10, seed=2)


def test_continue_a_state(tiny):
    s = tiny.new_state()
    a = gen(tiny, b"Hello", max_new_tokens=25, seed=1, state=s)
    assert s.position == 5 + 25
    b = gen(tiny, b" again", max_new_tokens=25, seed=2, state=s)
    assert s.position == 5 + 25 + 6 + 25
    # the same as a state that saw everything, then generated
    t = tiny.new_state()
    t.prefill(b"Hello" + a)
    assert gen(tiny, b" again", max_new_tokens=25, seed=2, state=t) == b


def test_break_stops_early(tiny):
    s = tiny.new_state()
    before = threading.active_count()
    for i, _ in enumerate(tiny.generate(PROMPT, max_new_tokens=1000, seed=4, state=s)):
        if i == 9:
            break
    gc.collect()
    # exactly the yielded tokens were fed; the generation let go of the state
    assert s.position == len(PROMPT) + 10
    assert threading.active_count() == before
    s.step(1)  # the state is free again


def test_close_and_stats(tiny):
    s = tiny.new_state()
    with tiny.generate(PROMPT, max_new_tokens=1000, seed=4, state=s) as g:
        got = [next(g) for _ in range(5)]
        with pytest.raises(RuntimeError):
            s.step(1)  # busy: the generation holds it
        assert s.position == len(PROMPT) + 5
    assert g.stats["stop_reason"] == "callback" and g.stats["n_generated"] == 5
    assert s.position == len(PROMPT) + 5
    assert list(g) == []
    g.close()
    assert "finished" in repr(g)
    want = gen(tiny, max_new_tokens=5, seed=4)
    assert b"".join(got) == want
    s.step(1)  # free again


def test_dropped_generation_is_collected(tiny):
    before = threading.active_count()
    g = tiny.generate(PROMPT, max_new_tokens=1000, seed=4)
    next(g)
    own = g.state
    assert threading.active_count() == before
    assert not own.closed and own.position == len(PROMPT) + 1
    del g
    gc.collect()
    assert own.closed  # its own state was freed with it


def test_break_then_close_frees_the_generator(tiny):
    s = tiny.new_state()
    g = tiny.generate(PROMPT, max_new_tokens=1000, seed=4, state=s)
    for i, _ in enumerate(g):
        if i == 2:
            break
    with pytest.raises(RuntimeError):
        s.step(1)  # g is still alive and holds the state
    g.close()
    assert g.stats["n_generated"] == 3 and g._gen.closed
    s.step(1)


def test_unstarted_generation_does_nothing(tiny):
    s = tiny.new_state()
    s.step(1)
    g = tiny.generate(PROMPT, max_new_tokens=10, state=s)
    assert "not started" in repr(g)
    assert s.position == 1  # generate() feeds nothing
    with pytest.raises(RuntimeError):
        s.step(2)  # but holds the state from the start (the C generator borrows it)
    del g
    assert s.position == 1
    s.step(2)
    assert s.position == 2
    g = tiny.generate(PROMPT, max_new_tokens=10, state=s)
    g.close()
    assert g.stats["n_prompt"] == 0 and g.stats["n_generated"] == 0
    assert s.position == 2


def test_observer_error_ends_the_generation(tiny):
    def boom(a):
        if a.position == len(PROMPT) + 3:
            raise KeyError("from the observer")

    s = tiny.new_state()
    s.set_observer(boom)
    g = tiny.generate(PROMPT, max_new_tokens=50, seed=1, state=s)
    with pytest.raises(KeyError, match="from the observer"):
        for _ in g:
            pass
    assert g.stats is not None and g.stats["n_generated"] == 4
    assert s.position == len(PROMPT) + 4
    assert list(g) == []
    s.set_observer(None)
    s.step(1)  # released


def test_zero_tokens(tiny):
    s = tiny.new_state()
    g = tiny.generate(PROMPT, max_new_tokens=0, state=s)
    assert list(g) == []
    assert g.stats["n_generated"] == 0 and s.position == len(PROMPT)


def test_tokens_mode_any_vocab():
    with bdh.Model(ODD) as m:
        with pytest.raises(ValueError, match="vocab_size"):
            m.generate([1, 2, 3])
        ids = list(m.generate([1, 2, 3], max_new_tokens=20, temperature=0, tokens=True))
        assert len(ids) == 20 and all(isinstance(t, int) and 0 <= t < 97 for t in ids)
        s = m.new_state()
        logits = s.prefill([1, 2, 3])
        assert ids[0] == int(np.argmax(logits))
        with pytest.raises(ValueError):
            m.generate([1], tokens=True, stop=b"x")


def test_generate_errors(tiny):
    with pytest.raises(ValueError):
        tiny.generate(b"")
    with pytest.raises(ValueError):
        tiny.generate([])
    with pytest.raises(TypeError):
        tiny.generate(5)
    with pytest.raises(TypeError):
        tiny.generate(["a"])
    s = tiny.new_state()
    with pytest.raises(bdh.BDHError) as ei:
        tiny.generate([1, 300], state=s)
    assert ei.value.status == "BDH_ERR_TOKEN" and "300" in ei.value.message
    for kw in (dict(temperature=-1), dict(top_p=1.5), dict(top_k=-3), dict(min_p=2.0), dict(repeat_penalty=0)):
        with pytest.raises(bdh.BDHError) as ei:
            tiny.generate(PROMPT, state=s, **kw)
        assert ei.value.status == "BDH_ERR_INVALID_ARGUMENT", kw
        assert ei.value.message, kw
    s.step(1)  # a refused generate() leaves the state untouched and free
    assert s.position == 1
    with tiny.generate(PROMPT, state=s):
        with pytest.raises(RuntimeError):
            tiny.generate(PROMPT, state=s)  # held by the first
    s.close()
    with pytest.raises(ValueError):
        tiny.generate(PROMPT, state=s)
    with pytest.raises(ValueError):
        tiny.generate(PROMPT, max_new_tokens=-1)
    with pytest.raises(TypeError):
        tiny.generate(PROMPT, max_new_tokens=1.5)
    with pytest.raises(TypeError):
        tiny.generate(PROMPT, temperature="hot")
    with pytest.raises(ValueError):
        tiny.generate(PROMPT, seed=-1)
    with pytest.raises(ValueError):
        tiny.generate(PROMPT, seed=2**64)
    with pytest.raises(TypeError):
        tiny.generate(PROMPT, seed=1.0)
    with pytest.raises(ValueError):
        tiny.generate(PROMPT, stop=[""])
    with pytest.raises(TypeError):
        tiny.generate(PROMPT, stop=[1])
    with pytest.raises(ValueError):
        tiny.generate(PROMPT, text=True, tokens=True)
    with pytest.raises(TypeError):
        tiny.generate(PROMPT, state="s")
    with bdh.Model(TINY) as other:
        with pytest.raises(ValueError):
            tiny.generate(PROMPT, state=other.new_state())
    m = bdh.Model(TINY)
    m.close()
    with pytest.raises(ValueError):
        m.generate(PROMPT)


def test_generation_on_closed_model_state(tiny):
    m = bdh.Model(TINY)
    s = m.new_state()
    m.close()
    # a state of a closed model can still generate
    assert len(gen(m, max_new_tokens=5, seed=1, state=s)) == 5
