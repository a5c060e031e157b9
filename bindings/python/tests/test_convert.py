"""libbdh.convert(): every checkpoint layout (tests/data/checkpoints) to the
canonical file, from Python; the C tests check every type bit for bit, this
the binding's plumbing and errors."""
from __future__ import annotations

import numpy as np
import pytest

import libbdh as bdh
from conftest import DATA

CK = DATA / "checkpoints"


def greedy(path, weights="f32") -> np.ndarray:
    with bdh.Model(path, threads=1, weights=weights) as m:
        s = m.new_state()
        return s.prefill(b"To be, or not")


@pytest.mark.parametrize("layout", ["hf-tied", "hf-untied", "ref-no-metadata", "ref-model-prefix.safetensors"])
@pytest.mark.parametrize("type", ["stored", "bf16", "q8_0"])
def test_convert_keeps_the_logits(tmp_path, layout, type):
    out = tmp_path / "canon.safetensors"
    bdh.convert(CK / layout, out, type=type)
    held = {"stored": "f32", "bf16": "bf16", "q8_0": "q8_0"}[type]
    assert np.array_equal(greedy(CK / layout, held), greedy(out, "stored"))
    with bdh.Model(out, weights="stored") as m:
        assert m.file_dtype("encoder") == {"stored": "F32", "bf16": "BF16", "q8_0": "Q8_0"}[type]


def test_convert_errors(tmp_path):
    with pytest.raises(ValueError, match="type must be one of"):
        bdh.convert(CK / "hf-tied", tmp_path / "x", type="int4")
    with pytest.raises(bdh.BDHError) as e:
        bdh.convert(CK / "hf-tied" / "model.safetensors", CK / "hf-tied" / "model.safetensors")
    assert e.value.status == "BDH_ERR_INVALID_ARGUMENT" and "is the input" in str(e.value)
    with pytest.raises(bdh.BDHError) as e:
        bdh.convert(tmp_path / "missing", tmp_path / "x")
    assert e.value.status == "BDH_ERR_IO"


def test_merge_with_itself_keeps_the_logits(tmp_path):
    """libbdh.merge(): a model merged with itself (docs/merging.md: the state
    read and the decoder sum double, LayerNorm removes the factor but for its
    eps, so within test_merge.c's 1e-4 bound, not bit for bit)."""
    out = tmp_path / "self.safetensors"
    bdh.merge(CK / "hf-tied", CK / "hf-tied", out)
    with bdh.Model(out) as m:
        assert m.config["n_neurons"] == 64
    a, b = greedy(CK / "hf-tied"), greedy(out)
    assert np.max(np.abs(a - b)) / np.max(np.abs(a)) <= 1e-4
    bdh.merge(CK / "hf-tied", CK / "hf-untied", tmp_path / "a.safetensors", embed_from="a")
    with pytest.raises(ValueError, match="embed_from must be"):
        bdh.merge(CK / "hf-tied", CK / "hf-tied", out, embed_from="c")
    with pytest.raises(bdh.BDHError) as e:
        bdh.merge(CK / "hf-tied", DATA / "golden" / "long.model.safetensors", out)
    assert e.value.status == "BDH_ERR_CONFIG"
