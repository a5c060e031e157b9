"""Misuse and bad input raise bdh.BDHError (or TypeError/ValueError for
Python-side misuse), with the C library's message, and never crash."""
from __future__ import annotations

import json
import struct
import threading

import numpy as np
import pytest

import libbdh as bdh
from conftest import ODD, TINY


def _tiny_bytes():
    raw = TINY.read_bytes()
    (n,) = struct.unpack_from("<Q", raw, 0)
    return raw, json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _with_header(header) -> bytes:
    _, _, data = _tiny_bytes()
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def test_missing_file(tmp_path):
    p = tmp_path / "nope.safetensors"
    with pytest.raises(bdh.BDHError) as ei:
        bdh.Model(p)
    e = ei.value
    assert e.status == "BDH_ERR_IO" and e.code == 2
    assert "nope.safetensors" in e.message and "nope.safetensors" in str(e)


def test_directory(tmp_path):
    with pytest.raises(bdh.BDHError) as ei:
        bdh.Model(tmp_path)
    assert ei.value.status == "BDH_ERR_IO"


def _bad_files():
    raw, header, data = _tiny_bytes()
    no_meta = {k: v for k, v in header.items() if k != "__metadata__"}
    no_decoder = {k: v for k, v in header.items() if k != "decoder"}
    bad_dtype = json.loads(json.dumps(header))
    bad_dtype["decoder"]["dtype"] = "Q7"
    bad_shape = json.loads(json.dumps(header))
    bad_shape["decoder"]["shape"] = [3, 5]
    bad_meta = json.loads(json.dumps(header))
    bad_meta["__metadata__"]["n_layer"] = "two"
    past_end = json.loads(json.dumps(header))
    past_end["decoder"]["data_offsets"] = [0, len(data) + 4096]
    return {
        "empty": b"",
        "short": b"\x05\x00\x00",
        "zeros": bytes(64),
        "random": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "huge_header_len": struct.pack("<Q", 1 << 60) + b"{}",
        "not_json": struct.pack("<Q", 8) + b"not json" + data,
        "json_array": struct.pack("<Q", 2) + b"[]",
        "truncated": raw[: len(raw) // 2],
        "header_only": raw[: 8 + struct.unpack_from("<Q", raw, 0)[0]],
        "no_metadata": _with_header(no_meta),
        "no_decoder": _with_header(no_decoder),
        "bad_dtype": _with_header(bad_dtype),
        "bad_shape": _with_header(bad_shape),
        "bad_metadata": _with_header(bad_meta),
        "offsets_past_end": _with_header(past_end),
        "text_file": b"ROMEO: this is not a model\n" * 10,
    }


@pytest.mark.parametrize("name", sorted(_bad_files()))
def test_malformed_file(tmp_path, name):
    p = tmp_path / f"{name}.safetensors"
    p.write_bytes(_bad_files()[name])
    with pytest.raises(bdh.BDHError) as ei:
        bdh.Model(str(p))
    e = ei.value
    assert e.status in ("BDH_ERR_FORMAT", "BDH_ERR_CONFIG", "BDH_ERR_IO"), (name, e)
    assert e.message, name


def test_bad_model_arguments():
    with pytest.raises(TypeError):
        bdh.Model(123)
    with pytest.raises(TypeError):
        bdh.Model(None)
    with pytest.raises(ValueError):
        bdh.Model(TINY, device="tpu")
    with pytest.raises(ValueError):
        bdh.Model(TINY, device="cpu:1")
    with pytest.raises(TypeError):
        bdh.Model(TINY, threads=1.5)
    with pytest.raises(TypeError):
        bdh.Model(TINY, threads="4")
    with pytest.raises(bdh.BDHError) as ei:
        bdh.Model(TINY, threads=-1)
    assert ei.value.status == "BDH_ERR_INVALID_ARGUMENT"
    with pytest.raises(ValueError):
        bdh.Model(TINY, weights="int4")
    with pytest.raises(ValueError):
        bdh.Model(TINY, kernels="turbo")


def test_cuda_without_cuda_or_with():
    try:
        m = bdh.Model(TINY, device="cuda")
    except bdh.BDHError as e:
        assert e.status in ("BDH_ERR_UNSUPPORTED", "BDH_ERR_DEVICE")
    else:
        with m:
            assert m.device.startswith("cuda")
            assert m.new_state().step(1).shape == (256,)


def test_token_out_of_range(tiny):
    s = tiny.new_state()
    s.step(1)
    for bad in (-1, 256, 10**6, 2**31 - 1, -(2**31), 2**31, 2**63, -(2**70)):
        with pytest.raises(bdh.BDHError) as ei:
            s.step(bad)
        assert ei.value.status == "BDH_ERR_TOKEN"
        assert ei.value.message
    for bad in ([1, 2, 256], [-1], [0, 2**40], np.array([5, 300]), np.array([1, 2**40], dtype=np.int64)):
        for call in (s.prefill, s.prefill_all):
            with pytest.raises(bdh.BDHError) as ei:
                call(bad)
            assert ei.value.status == "BDH_ERR_TOKEN"
    assert s.position == 1  # nothing was fed


def test_token_range_other_vocab():
    with bdh.Model(ODD) as m:
        s = m.new_state()
        s.step(96)
        with pytest.raises(bdh.BDHError):
            s.step(97)
        with pytest.raises(TypeError):
            s.prefill("text")  # str needs a byte-level model


def test_wrong_types(tiny):
    s = tiny.new_state()
    for bad in ("a", b"a", 1.0, 2.5, None, [1], object(), True, np.float32(1)):
        with pytest.raises(TypeError):
            s.step(bad)
    assert s.step(np.int64(5)).shape == (256,)  # numpy ints are ints
    for bad in (["a", "b"], [1.0, 2.0], [1, None], [[1, 2]], 5, None, 3.0, [b"a"], np.array([1.5]),
                np.array([True, False])):
        with pytest.raises((TypeError, ValueError)):
            s.prefill(bad)
        with pytest.raises((TypeError, ValueError)):
            s.prefill_all(bad)
    with pytest.raises(ValueError):
        s.prefill([])
    with pytest.raises(ValueError):
        s.prefill(b"")
    assert s.position == 1


def test_prefill_accepts_many_forms(tiny):
    want = tiny.new_state().prefill([72, 105])
    for form in (b"Hi", bytearray(b"Hi"), memoryview(b"Hi"), "Hi", (72, 105), np.array([72, 105], np.uint8),
                 np.array([72, 105], np.int64), range(72, 106, 33), iter([72, 105])):
        assert np.array_equal(tiny.new_state().prefill(form), want), form


def test_error_message_is_per_thread(tiny):
    """The message is read right after the failing call, on its thread."""
    errors = []

    def bad():
        s = tiny.new_state()
        for _ in range(200):
            try:
                s.step(1000)
            except bdh.BDHError as e:
                errors.append(e)

    def good():
        s = tiny.new_state()
        for _ in range(200):
            s.step(1)

    ts = [threading.Thread(target=bad), threading.Thread(target=good)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(errors) == 200
    assert all(e.status == "BDH_ERR_TOKEN" and "1000" in e.message for e in errors)


def test_bdherror_is_an_exception():
    e = bdh.BDHError("BDH_ERR_IO", "cannot open x")
    assert isinstance(e, Exception) and e.status == "BDH_ERR_IO" and e.code == 2
    assert "cannot open x" in str(e) and "BDH_ERR_IO" in str(e)
    import pickle

    e2 = pickle.loads(pickle.dumps(e))
    assert e2.status == e.status and e2.message == e.message
