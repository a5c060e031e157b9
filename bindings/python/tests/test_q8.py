"""Q8_0 weights from Python: weights="q8_0" and bdh.quantize()."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

import libbdh as bdh
from conftest import BF16, ODD, TINY, expect_path, golden_cases, read_safetensors, rel_err


def logits(model: "bdh.Model", tokens: np.ndarray) -> np.ndarray:
    s = model.new_state()
    return np.stack([s.step(int(t)) for t in tokens])


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("q8") / "tiny.q8.safetensors"
    bdh.quantize(TINY, out)
    return out


def test_stored_is_q8_at_load(quantized):
    tokens = read_safetensors(expect_path(TINY))["tokens"]
    with bdh.Model(TINY, weights="q8_0") as at_load, bdh.Model(quantized, weights="stored") as stored:
        a, b = logits(at_load, tokens), logits(stored, tokens)
        assert np.array_equal(a, b)
        assert np.array_equal(at_load.new_state().prefill_all(tokens), stored.new_state().prefill_all(tokens))
        assert stored.weight_bytes == at_load.weight_bytes
    with bdh.Model(quantized, weights="q8_0") as q, bdh.Model(quantized, weights="as_stored") as alias:
        assert np.array_equal(logits(q, tokens), a)
        assert np.array_equal(logits(alias, tokens), a)


@pytest.mark.parametrize("path", golden_cases(), ids=lambda p: p.name.split(".")[0])
def test_q8_close_to_f32_not_equal(path):
    want = read_safetensors(expect_path(path))
    tokens = want["tokens"]
    with bdh.Model(path) as f32, bdh.Model(path, weights="q8_0") as q8:
        a, b = logits(f32, tokens), logits(q8, tokens)
        assert rel_err(a, want["logits"]) <= 1e-4
        # random weights: the int8 rounding shows (far above float32's
        # 1e-4), yet stays small, per position and over the whole run
        assert 1e-3 < rel_err(b, a) <= 0.1
        assert np.linalg.norm(b - a) <= 0.03 * np.linalg.norm(a)
        assert q8.weight_bytes < f32.weight_bytes


def test_file_dtype_and_sizes(quantized):
    with bdh.Model(quantized) as f32, bdh.Model(quantized, weights="stored") as stored, bdh.Model(TINY) as orig:
        for m in (f32, stored):
            for name in ("encoder", "encoder_v", "decoder"):
                assert m.file_dtype(name) == "Q8_0"
            assert m.file_dtype("embed.weight") == "F32" and m.file_dtype("lm_head") == "F32"
            assert m.file_dtype("encoder.scale") is None
        # the default dequantizes to float32: the float file's bytes, not its values
        assert f32.weight_bytes == orig.weight_bytes > stored.weight_bytes
        c = stored.config
        D, HN, V = c["n_embd"], c["n_head"] * c["n_neurons"], c["vocab_size"]
        assert stored.weight_bytes == 3 * HN * (D + 2 * -(-D // 32)) + 2 * V * D * 4 + c["n_neurons"] * 4
    assert quantized.stat().st_size < TINY.stat().st_size


def test_dequantized_load_scores_like_q8(quantized):
    tokens = read_safetensors(expect_path(TINY))["tokens"]
    with bdh.Model(quantized, kernels="reference") as deq, bdh.Model(TINY, weights="q8_0", kernels="reference") as q8:
        assert np.array_equal(logits(deq, tokens), logits(q8, tokens))


def test_the_file_itself(quantized):
    """The tensors and metadata docs/format.md gives for a Q8_0 file."""
    q, f = read_safetensors(quantized), read_safetensors(TINY)
    with bdh.Model(TINY) as m:
        c = m.config
    H, N, D = c["n_head"], c["n_neurons"], c["n_embd"]
    nb = -(-D // 32)
    for name in ("encoder", "encoder_v", "decoder"):
        assert q[name].dtype == np.int8 and q[name].shape == f[name].shape
    assert q["encoder.scale"].shape == (H, nb, N) and q["encoder.scale"].dtype == np.float16
    assert q["encoder_v.scale"].shape == (H, nb, N) and q["encoder_v.scale"].dtype == np.float16
    assert q["decoder.scale"].shape == (H * N, nb) and q["decoder.scale"].dtype == np.float16
    assert np.array_equal(q["embed.weight"], f["embed.weight"]) and np.array_equal(q["lm_head"], f["lm_head"])
    # dequantized, each block is within half a step of the original
    w = f["decoder"].astype(np.float64).reshape(H * N, nb, 32)
    deq = q["decoder"].astype(np.float64).reshape(H * N, nb, 32) * q["decoder.scale"].astype(np.float64)[..., None]
    step = q["decoder.scale"].astype(np.float64)[..., None]
    assert np.all(np.abs(deq - w) <= 0.5 * step + 1e-3 * np.abs(w).max())
    raw = quantized.read_bytes()
    (n,) = struct.unpack_from("<Q", raw)
    meta = json.loads(raw[8 : 8 + n])["__metadata__"]
    assert meta["quantization"] == "q8_0" and meta["q8_0_block"] == "32"
    assert meta["n_layer"] == str(c["n_layer"])


def test_bad_weights_name_lists_the_choices():
    with pytest.raises(ValueError) as ei:
        bdh.Model(TINY, weights="int4")
    msg = str(ei.value)
    for name in ("'f32'", "'bf16'", "'f16'", "'q8_0'", "'stored'", "'int4'"):
        assert name in msg
    with pytest.raises(ValueError, match="weights must be"):
        bdh.Model(TINY, weights=4)  # type: ignore[arg-type]
    with bdh.Model(TINY, weights="Q8_0") as m:  # any case, as before
        assert m.file_dtype("encoder") == "F32"


def test_quantize_refusals(tmp_path, quantized):
    out = tmp_path / "out.safetensors"
    with pytest.raises(ValueError) as ei:
        bdh.quantize(TINY, out, type="q4_0")
    assert "'q8_0'" in str(ei.value) and "'q4_0'" in str(ei.value)
    with pytest.raises(ValueError):
        bdh.quantize(TINY, out, type=4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NUL"):
        bdh.quantize("a\0b", out)
    with pytest.raises(bdh.BDHError) as ei:
        bdh.quantize(tmp_path / "missing.safetensors", out)
    assert ei.value.status == "BDH_ERR_IO"
    with pytest.raises(bdh.BDHError) as ei:
        bdh.quantize(TINY, TINY)
    assert ei.value.status == "BDH_ERR_INVALID_ARGUMENT" and "is the input" in ei.value.message
    with pytest.raises(bdh.BDHError) as ei:
        bdh.quantize(quantized, out)
    assert ei.value.status == "BDH_ERR_INVALID_ARGUMENT" and "already Q8_0" in ei.value.message
    with pytest.raises(bdh.BDHError) as ei:
        bdh.quantize(TINY, tmp_path / "no" / "such" / "dir.safetensors")
    assert ei.value.status == "BDH_ERR_IO"
    assert not out.exists()
    out.write_bytes(b"keep")
    with pytest.raises(bdh.BDHError):
        bdh.quantize(tmp_path / "missing.safetensors", out)
    assert out.read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors"]  # no temporary left


def test_quantize_other_files(tmp_path):
    """A BF16 file and one with odd heads and vocabulary quantize too, and the
    result runs as the original quantized at load."""
    for src in (BF16, ODD):
        out = tmp_path / (src.name + ".q8")
        bdh.quantize(str(src), str(out), "Q8_0")
        tokens = read_safetensors(expect_path(src))["tokens"]
        with bdh.Model(src, weights="q8_0") as a, bdh.Model(out, weights="stored") as b:
            assert b.file_dtype("decoder") == "Q8_0"
            assert np.array_equal(logits(a, tokens), logits(b, tokens))


def test_state_blobs_follow_the_weights(quantized):
    """A state of Q8_0 weights quantized at load is not a float32 state (the
    weights differ); the float holdings of one file share states, and so do
    all holdings of a quantized file."""
    with bdh.Model(TINY) as f32, bdh.Model(TINY, weights="bf16") as bf16, bdh.Model(TINY, weights="q8_0") as q8:
        s = f32.new_state()
        s.step(5)
        blob = s.save()
        bf16.new_state().load(blob)
        with pytest.raises(bdh.BDHError) as ei:
            q8.new_state().load(blob)
        assert ei.value.status == "BDH_ERR_MODEL_MISMATCH"
    with bdh.Model(quantized) as deq, bdh.Model(quantized, weights="stored") as stored:
        s = stored.new_state()
        s.step(5)
        deq.new_state().load(s.save())
        with bdh.Model(TINY, weights="q8_0") as q8:  # the same int8 blocks: states move both ways
            q8.new_state().load(s.save())
            t = q8.new_state()
            t.step(5)
            stored.new_state().load(t.save())
