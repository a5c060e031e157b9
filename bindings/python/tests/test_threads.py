"""Different states of one model decode in parallel threads (the GIL is
released during C calls) with the same results as one after another."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import libbdh as bdh
from conftest import DATA, TINY

LONG = DATA / "golden" / "long.model.safetensors"


def _decode(model, prompt, n):
    s = model.new_state()
    rows = [s.prefill(prompt)]
    tok = 0
    for i in range(n):
        tok = (int(np.argmax(rows[-1])) + i) % 256
        rows.append(s.step(tok))
    return np.stack(rows), s.save()


def _in_threads(fns):
    results = [None] * len(fns)
    errors = []
    barrier = threading.Barrier(len(fns))

    def run(i):
        try:
            barrier.wait()
            results[i] = fns[i]()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors
    return results


@pytest.mark.parametrize("path", [TINY, LONG], ids=["tiny", "long"])
def test_two_states_in_parallel_equal_sequential(path):
    with bdh.Model(path, threads=2) as m:
        jobs = [lambda: _decode(m, b"First Citizen:", 150), lambda: _decode(m, b"ROMEO: O, she doth", 150)]
        seq = [j() for j in jobs]
        for _ in range(3):
            par = _in_threads(jobs)
            for (a_rows, a_blob), (b_rows, b_blob) in zip(seq, par):
                assert np.array_equal(a_rows, b_rows)
                assert a_blob == b_blob


def test_parallel_generation_equals_sequential():
    with bdh.Model(TINY) as m:
        jobs = [
            lambda: b"".join(m.generate(b"ROMEO:", max_new_tokens=300, seed=1)),
            lambda: b"".join(m.generate(b"JULIET:", max_new_tokens=300, seed=2, top_k=20)),
            lambda: "".join(m.generate("Nurse:", max_new_tokens=300, seed=3, text=True)),
            lambda: b"".join(m.generate(b"x", max_new_tokens=300, temperature=0)),
        ]
        seq = [j() for j in jobs]
        assert _in_threads(jobs) == seq


def test_gil_released_during_c_calls():
    """Python code in another thread runs while a long C call is in flight."""
    with bdh.Model(LONG, threads=1) as m:
        s = m.new_state()
        tokens = np.arange(600) % 256
        s.prefill(tokens[:10])  # warm up
        in_call = threading.Event()
        done = threading.Event()

        def work():
            in_call.set()
            s.prefill(tokens)
            done.set()

        t = threading.Thread(target=work)
        t.start()
        in_call.wait()
        spins = 0
        while not done.is_set():
            spins += 1
        t.join()
    assert spins > 1000, spins


def test_one_state_two_threads_never_corrupts():
    """Using one state from two threads at once is refused (RuntimeError),
    never silently interleaved."""
    with bdh.Model(TINY) as m:
        s = m.new_state()
        ok = [0, 0]
        refused = [0, 0]

        def hammer(i):
            for _ in range(2000):
                try:
                    s.step(1 + i)
                    ok[i] += 1
                except RuntimeError:
                    refused[i] += 1

        ts = [threading.Thread(target=hammer, args=(i,)) for i in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert s.position == sum(ok)
        assert sum(ok) + sum(refused) == 4000


def test_close_model_while_other_thread_decodes():
    m = bdh.Model(TINY)
    s = m.new_state()
    started = threading.Event()
    out = []

    def work():
        started.set()
        for i in range(3000):
            s.step(i % 256)
        out.append(s.position)

    t = threading.Thread(target=work)
    t.start()
    started.wait()
    m.close()  # the running state holds its own reference to the C model
    assert m.closed
    t.join()
    assert out == [3000]
    s.close()
