"""bdh.merge(): the library's merge from Python (tests/test_merge.c tests the merge itself)."""
from __future__ import annotations

import numpy as np
import pytest

import libbdh as bdh
from conftest import ODD, TINY, read_safetensors


def test_merge_per_head_and_embed(tmp_path):
    out = tmp_path / "self.safetensors"
    bdh.merge(TINY, TINY, out)
    a, m = read_safetensors(TINY), read_safetensors(out)
    H, D, N = a["encoder"].shape
    assert m["encoder"].shape == (H, D, 2 * N)
    assert np.array_equal(m["encoder"][:, :, :N], a["encoder"]) and np.array_equal(m["encoder"][:, :, N:], a["encoder"])
    dec = m["decoder"].reshape(H, 2 * N, D)
    assert np.array_equal(dec[:, :N], a["decoder"].reshape(H, N, D))
    assert np.array_equal(dec[:, N:], a["decoder"].reshape(H, N, D))
    assert np.array_equal(m["embed.weight"], a["embed.weight"])
    with bdh.Model(out) as model:
        assert model.config["n_neurons"] == 2 * N


def test_merge_embed_from_and_refusals(tmp_path):
    self_merge = tmp_path / "self.safetensors"
    bdh.merge(TINY, TINY, self_merge)
    out = tmp_path / "three.safetensors"
    bdh.merge(self_merge, TINY, out, embed_from="b")
    assert np.array_equal(read_safetensors(out)["lm_head"], read_safetensors(TINY)["lm_head"])
    with pytest.raises(ValueError, match="embed_from must be"):
        bdh.merge(TINY, TINY, out, embed_from="c")
    with pytest.raises(bdh.BDHError, match="a merge needs the same") as e:
        bdh.merge(TINY, ODD, tmp_path / "x.safetensors")
    assert e.value.status == "BDH_ERR_CONFIG"
    with pytest.raises(bdh.BDHError, match="is an input"):
        bdh.merge(out, TINY, out)
