"""The same through a CUDA build (make CUDA=1) on a machine with a GPU;
skipped elsewhere."""
from __future__ import annotations

import numpy as np
import pytest

import libbdh as bdh
from conftest import TINY, TOL, expect_path, golden_cases, read_safetensors, rel_err


def _cuda_or_skip(path=TINY, **kw):
    try:
        return bdh.Model(path, device="cuda", **kw)
    except bdh.BDHError as e:
        if e.status in ("BDH_ERR_UNSUPPORTED", "BDH_ERR_DEVICE"):
            pytest.skip(f"no CUDA here: {e}")
        raise


@pytest.mark.parametrize("path", golden_cases(), ids=lambda p: p.name.split(".")[0])
def test_cuda_parity(path):
    exp = read_safetensors(expect_path(path))
    tokens, want = exp["tokens"], exp["logits"]
    with _cuda_or_skip(path) as m:
        assert m.device.startswith("cuda")
        s = m.new_state()
        got = np.stack([s.step(int(t)) for t in tokens])
        assert rel_err(got, want) <= TOL
        assert rel_err(m.new_state().prefill_all(tokens), want) <= TOL
        assert rel_err(m.new_state().prefill(tokens), want[-1]) <= TOL


def test_cuda_state_blobs_move_between_devices():
    with _cuda_or_skip() as g, bdh.Model(TINY) as c:
        gs = g.new_state()
        gs.prefill(b"ROMEO: hello there")
        cs = c.new_state()
        cs.load(gs.save())
        assert cs.position == gs.position
        assert rel_err(cs.step(7), gs.step(7)) <= TOL
        gs2 = g.new_state()
        gs2.load(cs.save())
        assert rel_err(gs2.step(9), cs.step(9)) <= TOL


def test_cuda_generate_streams():
    with _cuda_or_skip() as g:
        gen = g.generate(b"ROMEO:", max_new_tokens=50, seed=3)
        first = next(gen)
        assert isinstance(first, bytes) and gen.stats is None
        rest = b"".join(gen)
        assert len(rest) == 49 and gen.stats["n_generated"] == 50
        a = b"".join(g.generate(b"ROMEO:", max_new_tokens=50, seed=3))
        assert a == first + rest
