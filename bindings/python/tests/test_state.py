"""States: save/load, copy, reset, and lifetimes (closing, outliving the model)."""
from __future__ import annotations

import copy
import gc
import pickle
import weakref

import numpy as np
import pytest

import libbdh as bdh
from conftest import BF16, ODD, TINY

PROMPT = b"First Citizen:\nBefore we proceed any further, hear me speak."


def test_position_reset(tiny):
    s = tiny.new_state()
    assert s.position == 0
    first = s.step(ord("A"))
    s.prefill(PROMPT)
    assert s.position == 1 + len(PROMPT)
    s.reset()
    assert s.position == 0
    assert np.array_equal(s.step(ord("A")), first)


def test_save_load_round_trip(tiny):
    s = tiny.new_state()
    s.prefill(PROMPT)
    blob = s.save()
    assert isinstance(blob, bytes) and len(blob) > tiny.state_bytes
    want = s.step(ord("x"))
    # into the same state, after it moved on
    s.prefill(b"something else")
    s.load(blob)
    assert s.position == len(PROMPT)
    assert np.array_equal(s.step(ord("x")), want)
    # into a fresh state, from bytearray and memoryview too
    for kind in (bytes, bytearray, memoryview):
        t = tiny.new_state()
        t.load(kind(blob))
        assert t.position == len(PROMPT)
        assert np.array_equal(t.step(ord("x")), want)


def test_copy_is_independent(tiny):
    s = tiny.new_state()
    s.prefill(PROMPT)
    c = s.copy()
    assert c.position == s.position and c is not s
    want = s.step(ord("q"))
    s.step(ord("z"))
    assert np.array_equal(c.step(ord("q")), want)
    assert c.position == len(PROMPT) + 1
    d = copy.copy(c)
    e = copy.deepcopy(c)
    assert d.position == e.position == c.position
    assert np.array_equal(d.step(1), e.step(1))


def test_damaged_blobs_refused(tiny):
    s = tiny.new_state()
    s.prefill(PROMPT)
    blob = s.save()
    want = s.copy().step(7)
    damaged = []
    for at in (0, 9, len(blob) // 2, len(blob) - 1):
        b = bytearray(blob)
        b[at] ^= 0x40
        damaged.append(bytes(b))
    damaged += [blob[:-1], blob[: len(blob) // 2], blob[:10], b"", blob + b"\0"]
    for bad in damaged:
        with pytest.raises(bdh.BDHError) as ei:
            s.load(bad)
        assert ei.value.status in ("BDH_ERR_FORMAT", "BDH_ERR_MODEL_MISMATCH")
        assert ei.value.message
        # the state is unchanged by a refused load
        assert s.position == len(PROMPT)
        assert np.array_equal(s.copy().step(7), want)


def test_foreign_blobs_refused(tiny):
    for other in (BF16, ODD):  # same shapes / different shapes
        with bdh.Model(other) as m:
            o = m.new_state()
            o.prefill([1, 2, 3])
            blob = o.save()
            with pytest.raises(bdh.BDHError) as ei:
                tiny.new_state().load(blob)
            assert ei.value.status == "BDH_ERR_MODEL_MISMATCH" or ei.value.status == "BDH_ERR_FORMAT"
            assert "model" in str(ei.value) or "truncated" in str(ei.value)
    with bdh.Model(BF16) as m:
        with pytest.raises(bdh.BDHError) as ei:
            tiny.new_state().load(m.new_state().save())
        assert ei.value.status == "BDH_ERR_MODEL_MISMATCH"


def test_load_wrong_types(tiny):
    s = tiny.new_state()
    for bad in ("text", 5, None, [1, 2]):
        with pytest.raises(TypeError):
            s.load(bad)


def test_state_outlives_model_object():
    m = bdh.Model(TINY)
    s = m.new_state()
    want = m.new_state().step(3)
    mref = weakref.ref(m)
    del m
    gc.collect()
    assert mref() is not None  # s.model still names it
    assert np.array_equal(s.step(3), want)
    s.model.close()  # the C state holds its own reference to the C model
    assert s.model.closed
    assert s.step(4).shape == (256,)
    c = s.copy()  # copying a state of a closed model still works
    with pytest.raises(ValueError):
        s.model.new_state()
    s.close()
    assert c.step(5).shape == (256,)  # the copy holds the C model too
    del s, c
    gc.collect()
    assert mref() is None


def test_state_works_after_model_close():
    """Close the model, then step, copy, save/load and generate on
    its states: the same results as before the close."""
    m = bdh.Model(TINY)
    s = m.new_state()
    s.prefill(PROMPT)
    ref = s.copy()
    want = [ref.step(t) for t in (5, 6, 7)]
    blob = ref.save()
    want_gen = b"".join(m.generate(b"x", max_new_tokens=8, seed=1, state=ref.copy()))
    m.close()
    m.close()  # idempotent
    assert m.closed
    with pytest.raises(ValueError):
        m.new_state()
    assert np.array_equal(s.step(5), want[0])
    c = s.copy()
    assert np.array_equal(c.step(6), want[1])
    assert np.array_equal(s.step(6), want[1])
    assert np.array_equal(c.step(7), want[2])
    s.load(blob)
    assert s.save() == blob
    del m, ref
    gc.collect()
    assert b"".join(s.model.generate(b"x", max_new_tokens=8, seed=1, state=s)) == want_gen


def test_close_and_use_after_close(tiny):
    s = tiny.new_state()
    s.close()
    s.close()
    assert s.closed
    assert "closed" in repr(s)
    for call in (lambda: s.step(1), lambda: s.prefill(b"ab"), lambda: s.save(), lambda: s.reset(),
                 lambda: s.copy(), lambda: s.position, lambda: s.load(b"x")):
        with pytest.raises(ValueError):
            call()


def test_context_managers():
    with bdh.Model(TINY) as m:
        with m.new_state() as s:
            s.step(1)
        assert s.closed
    assert m.closed
    with pytest.raises(ValueError):
        m.new_state()
    assert "closed" in repr(m)


def test_many_states_collected(tiny):
    finalizers = []
    for _ in range(200):
        s = tiny.new_state()
        s.step(1)
        finalizers.append(s._finalizer)
    del s
    gc.collect()
    assert not any(f.alive for f in finalizers)  # every C state was freed


def test_not_picklable(tiny):
    s = tiny.new_state()
    with pytest.raises(TypeError):
        pickle.dumps(s)
    with pytest.raises(TypeError):
        pickle.dumps(tiny)
    with pytest.raises(TypeError):
        bdh.State()


def test_step_out_buffer(tiny):
    s = tiny.new_state()
    out = np.zeros(256, np.float32)
    r = s.step(1, out=out)
    assert r is out and np.any(out != 0)
    for bad in (np.zeros(255, np.float32), np.zeros(256, np.float64), [0.0] * 256):
        with pytest.raises((TypeError, ValueError)):
            s.step(2, out=bad)
    assert s.position == 1


def test_step_batch(tiny):
    a, b = tiny.new_state(), tiny.new_state()
    a.prefill(b"abc")
    ra, rb = a.copy(), b.copy()
    got = tiny.step_batch([a, b], [10, 20])
    assert got.shape == (2, 256)
    assert np.allclose(got[0], ra.step(10), rtol=0, atol=1e-5)
    assert np.allclose(got[1], rb.step(20), rtol=0, atol=1e-5)
    with pytest.raises(ValueError):
        tiny.step_batch([a, a], [1, 2])
    with pytest.raises(ValueError):
        tiny.step_batch([a, b], [1])


def test_repr_and_config(tiny):
    assert "tiny.model.safetensors" in repr(tiny) and "V=256" in repr(tiny)
    cfg = tiny.config
    cfg["n_layer"] = 99  # a copy
    assert tiny.config == {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_neurons": 128,
                           "vocab_size": 256, "mlp_internal_dim_multiplier": 8}
    assert tiny.n_params > 0 and tiny.weight_bytes > 0 and tiny.state_bytes == 2 * 2 * 128 * 32 * 4
    assert tiny.device == "cpu"
    assert tiny.file_dtype("encoder") == "F32" and tiny.file_dtype("nope") is None
    s = tiny.new_state()
    s.step(1)
    assert "position=1" in repr(s)


def test_weight_types_and_kernels(tiny_expect):
    from conftest import rel_err

    tokens = tiny_expect["tokens"]
    want = tiny_expect["logits"]
    with bdh.Model(TINY, kernels="reference", threads=1) as ref:
        assert rel_err(ref.new_state().prefill_all(tokens), want) <= 1e-4
        s = ref.new_state()
        assert rel_err(np.stack([s.step(int(t)) for t in tokens]), want) <= 1e-4
    with bdh.Model(TINY) as f32:
        for w in ("bf16", "f16", "as_stored"):
            with bdh.Model(TINY, weights=w) as m:
                assert m.weight_bytes <= f32.weight_bytes
                s = m.new_state()
                assert rel_err(np.stack([s.step(int(t)) for t in tokens]), want) <= 5e-2


def test_activity(tiny):
    s = tiny.new_state()
    for t in b"hello":
        s.step(t)
    try:
        a = s.activity()
    except bdh.BDHError as e:
        assert e.status == "BDH_ERR_UNSUPPORTED"
        return
    assert set(a) == {"xs", "pairs", "xy"}
    for v in a.values():
        assert v.shape == (2,) and v.dtype == np.float32 and np.all((v >= 0) & (v <= 1))
    assert np.all(a["xs"] > 0)
