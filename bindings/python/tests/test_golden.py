"""Parity with the reference's golden logits, through the binding."""
from __future__ import annotations

import numpy as np
import pytest

import libbdh as bdh
from conftest import TOL, expect_path, golden_cases, read_safetensors, rel_err

CASES = golden_cases()


def test_cases_found():
    names = {p.name.split(".")[0] for p in CASES}
    assert {"tiny", "oddheads", "long", "bf16", "f16", "compiled"} <= names


@pytest.fixture(scope="module", params=CASES, ids=lambda p: p.name.split(".")[0])
def case(request):
    exp = read_safetensors(expect_path(request.param))
    with bdh.Model(request.param, threads=2) as model:
        yield model, exp["tokens"].astype(np.int64), exp["logits"]


def test_config_matches(case):
    model, tokens, logits = case
    cfg = model.config
    assert cfg["vocab_size"] == logits.shape[1]
    assert set(cfg) >= {"n_layer", "n_embd", "n_head", "n_neurons", "vocab_size"}
    assert all(isinstance(v, int) and v > 0 for v in cfg.values())


def test_step_parity(case):
    model, tokens, want = case
    state = model.new_state()
    got = np.empty_like(want)
    for t, tok in enumerate(tokens):
        row = state.step(int(tok))
        assert row.dtype == np.float32 and row.shape == (model.config["vocab_size"],)
        got[t] = row
    assert state.position == len(tokens)
    assert rel_err(got, want) <= TOL


def test_prefill_parity(case):
    model, tokens, want = case
    T = len(tokens)
    for n in sorted({1, 2, T // 3, T - 1, T} - {0}):
        state = model.new_state()
        last = state.prefill(tokens[:n])
        assert state.position == n
        assert rel_err(last, want[n - 1]) <= TOL, n


def test_prefill_in_pieces_then_step(case):
    model, tokens, want = case
    T = len(tokens)
    a, b = T // 4, T // 2
    state = model.new_state()
    state.prefill(tokens[:a].tolist())  # list input
    mid = state.prefill(np.asarray(tokens[a:b], dtype=np.int32))  # array input
    assert rel_err(mid, want[b - 1]) <= TOL
    rest = [state.step(int(t)) for t in tokens[b:]]
    assert rel_err(np.stack(rest), want[b:]) <= TOL


def test_prefill_all_parity(case):
    model, tokens, want = case
    state = model.new_state()
    allrows = state.prefill_all(tokens)
    assert allrows.shape == want.shape and allrows.dtype == np.float32
    assert rel_err(allrows, want) <= TOL
    assert state.position == len(tokens)
