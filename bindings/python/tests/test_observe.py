"""Observability from Python: step(observe=True) against a dense numpy
forward and the C reference kernels, monitors against a brute-force sum,
monitors carried by copy/save/load, state readout, observers, traces (round
trip through files, agreement with the bdh tool byte for byte), the
safetensors reader/writer, and the plotting helpers (skipped without
matplotlib)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import libbdh as bdh
from libbdh import _safetensors
from conftest import DATA, ODD, REPO, TINY, cli_path, expect_path, read_safetensors, rel_err

LONG = DATA / "golden" / "long.model.safetensors"


# ------------------------------------------------------------ numpy forward

def _ln(v: np.ndarray) -> np.ndarray:
    mu = v.mean(-1, keepdims=True)
    var = ((v - mu) ** 2).mean(-1, keepdims=True)
    return (v - mu) / np.sqrt(var + 1e-5)


def numpy_forward(path: Path, tokens: np.ndarray):
    """The BDH-GPU recurrence of docs/bdh-gpu-reference.md in float64:
    per token, per layer, dense xs [H*N] and xy [H*N]; and the logits."""
    w = read_safetensors(path)
    w = {k.replace("_orig_mod.", ""): v for k, v in w.items()}
    E = w["embed.weight"].astype(np.float64)
    enc = w["encoder"].astype(np.float64)  # H, D, N
    encv = w["encoder_v"].astype(np.float64)
    dec = w["decoder"].astype(np.float64)  # H*N, D
    lm = w["lm_head"].astype(np.float64)  # D, V
    H, D, N = enc.shape
    m = bdh.Model(path)
    L = m.config["n_layer"]
    m.close()
    freqs = w["attn.freqs"].reshape(-1).astype(np.float32)
    S = np.zeros((L, H, N, D))
    xs_all = np.zeros((len(tokens), L, H * N))
    xy_all = np.zeros((len(tokens), L, H * N))
    logits = np.zeros((len(tokens), lm.shape[1]))
    two_pi = np.float32(2 * np.pi)
    for t, tok in enumerate(tokens):
        phase = np.float32(t) * freqs
        phase = (np.fmod(phase, np.float32(1.0)) * two_pi).astype(np.float64)
        cos, sin = np.cos(phase), np.sin(phase)
        x = _ln(E[tok])
        for layer in range(L):
            xs = np.maximum(np.einsum("d,hdn->hn", x, enc), 0)
            q = np.empty_like(xs)
            q[:, 0::2] = xs[:, 0::2] * cos[0::2] - xs[:, 1::2] * sin[0::2]
            q[:, 1::2] = xs[:, 1::2] * cos[1::2] + xs[:, 0::2] * sin[1::2]
            a = np.einsum("hnd,hn->hd", S[layer], q)
            S[layer] += q[:, :, None] * x[None, None, :]
            ys = np.maximum(np.einsum("hd,hdn->hn", _ln(a), encv), 0)
            xy = xs * ys
            x = _ln(x + _ln(xy.reshape(-1) @ dec))
            xs_all[t, layer] = xs.reshape(-1)
            xy_all[t, layer] = xy.reshape(-1)
        logits[t] = x @ lm
    return xs_all, xy_all, logits


def observed(model: "bdh.Model", tokens: np.ndarray):
    """Dense xs, xy [T, L, H*N] and logits from step(observe=True)."""
    c = model.config
    HN = c["n_head"] * c["n_neurons"]
    xs = np.zeros((len(tokens), c["n_layer"], HN), np.float32)
    xy = np.zeros_like(xs)
    logits = []
    with model.new_state() as s:
        for t, tok in enumerate(tokens):
            lg, acts = s.step(int(tok), observe=True)
            logits.append(lg)
            assert [a.layer for a in acts] == list(range(c["n_layer"]))
            for a in acts:
                assert a.position == t and a.token == tok
                assert np.all(np.diff(a.x_index) > 0) and np.all(np.diff(a.y_index) > 0)
                assert np.all(a.x_value > 0) and np.all(a.y_value > 0)
                assert set(a.y_index) <= set(a.x_index)  # xy > 0 needs xs > 0
                assert a.x_density == pytest.approx(a.x_index.size / HN, abs=1e-6)
                assert a.y_density == pytest.approx(a.y_index.size / HN, abs=1e-6)
                xs[t, a.layer] = a.dense("x")
                xy[t, a.layer] = a.dense("y")
    return xs, xy, np.array(logits)


@pytest.mark.parametrize("path", [TINY, ODD], ids=["tiny", "oddheads"])
def test_taps_equal_dense_numpy_forward(path):
    tokens = read_safetensors(expect_path(path))["tokens"][:40]
    with bdh.Model(path) as m:
        xs, xy, logits = observed(m, tokens)
    rxs, rxy, rlogits = numpy_forward(path, tokens)
    assert rel_err(logits, rlogits) < 1e-4
    for got, want in ((xs, rxs), (xy, rxy)):
        scale = np.abs(want).max() + 1.0
        assert np.abs(got - want).max() <= 1e-4 * scale
        differ = (got > 0) != (want > 0)  # only where the float64 value is ~0
        assert np.all(np.abs(want[differ]) <= 1e-5 * scale), np.abs(want[differ]).max()
        assert (want > 0).sum() > 0.1 * want.size  # the test compares something


def test_taps_fast_equal_reference_kernels():
    tokens = read_safetensors(expect_path(LONG))["tokens"][:24]
    with bdh.Model(LONG, threads=2) as fast, bdh.Model(LONG, kernels="reference") as ref:
        a, b = observed(fast, tokens), observed(ref, tokens)
    for got, want in zip(a[:2], b[:2]):
        assert np.array_equal(got > 0, want > 0)  # the same neurons, exactly
        assert np.abs(got - want).max() <= 1e-5 * (np.abs(want).max() + 1)


def test_observing_changes_no_logit(tiny):
    with tiny.new_state() as plain, tiny.new_state() as watched:
        for tok in b"Observing changes nothing.":
            a = plain.step(tok)
            b, acts = watched.step(tok, observe=True)
            assert np.array_equal(a, b)
            assert len(acts) == tiny.config["n_layer"]
        out = np.empty(tiny.vocab_size, np.float32)
        logits, _ = watched.step(1, observe=True, out=out)
        assert logits is out
        # observe=True leaves no observer behind
        assert watched.observer is None and watched._obs is not None and not watched._obs.registered


def test_activation_helpers(tiny):
    with tiny.new_state() as s:
        s.step(10)
        _, acts = s.step(65, observe=True)
    a = acts[1]
    N = a.n_neurons
    for h in range(a.n_head):
        idx, val = a.head(h)
        assert np.all((idx >= 0) & (idx < N))
        assert np.array_equal(a.dense("x")[h * N + idx], val)
    with pytest.raises(IndexError):
        a.head(a.n_head)
    with pytest.raises(ValueError):
        a.dense("z")
    assert "layer=1" in repr(a)


# ----------------------------------------------------------------- monitors

SYN = [(1, 0, 0), (1, 5, 700), (3, 1023, 2), (5, 300, 301), (2, 17, 17)]


def test_monitors_equal_brute_force():
    tokens = [(t * 37 + 11) % 256 for t in range(40)]
    with bdh.Model(LONG) as m:
        xs, xy, _ = observed(m, np.array(tokens))
        with m.new_state() as s:
            assert [s.add_monitor(*syn) for syn in SYN] == list(range(len(SYN)))
            assert s.n_monitors == len(SYN)
            for tok in tokens:
                s.step(tok)
            got = s.monitors()
    nonzero = 0
    for (layer, i, j), (gl, gi, gj, sigma) in zip(SYN, got):
        assert (gl, gi, gj) == (layer, i, j)
        want = 0.0
        for t in range(len(tokens)):  # the C order, in double
            want += float(xy[t, layer - 1, i]) * float(xs[t, layer, j])
        assert sigma == pytest.approx(want, rel=1e-12, abs=1e-12)
        nonzero += want != 0
    assert nonzero >= 3


def test_monitor_refusals(tiny):
    HN = tiny.config["n_head"] * tiny.config["n_neurons"]
    with tiny.new_state() as s:
        with pytest.raises(bdh.BDHError) as e:
            s.add_monitor(0, 1, 2)
        assert e.value.status == "BDH_ERR_INVALID_ARGUMENT" and "layer 0" in e.value.message
        for bad in [(tiny.config["n_layer"], 1, 2), (1, HN, 0), (1, 0, -1)]:
            with pytest.raises(bdh.BDHError):
                s.add_monitor(*bad)
        with pytest.raises(TypeError):
            s.add_monitor(1, "2", 3)
        assert s.monitors() == [] and s.n_monitors == 0


def test_monitors_travel_with_the_state():
    with bdh.Model(LONG) as m:
        s = m.new_state()
        s.add_monitor(1, 3, 4)
        s.add_monitor(4, 100, 900)
        s.prefill(bytes(range(40, 70)))
        fork = s.copy()
        loaded = m.new_state()
        loaded.load(s.save())
        assert fork.monitors() == s.monitors() == loaded.monitors()
        assert any(sig != 0 for *_, sig in s.monitors())
        for tok in b"and on":
            for st in (s, fork, loaded):
                st.step(tok)
        assert fork.monitors() == s.monitors() == loaded.monitors()
        np.testing.assert_array_equal(s.sigma(), [mm[3] for mm in s.monitors()])
        s.reset()  # keeps them, zeroed
        assert [mm[:3] for mm in s.monitors()] == [(1, 3, 4), (4, 100, 900)]
        assert all(mm[3] == 0.0 for mm in s.monitors())
        s.clear_monitors()
        assert s.monitors() == [] and fork.n_monitors == 2
        for st in (s, fork, loaded):
            st.close()


def test_monitors_from_prefill_equal_stepping():
    text = b"Prefill with monitors steps the same."
    with bdh.Model(LONG) as m, m.new_state() as a, m.new_state() as b:
        for st in (a, b):
            st.add_monitor(2, 40, 41)
        a.prefill(text)
        for tok in text:
            b.step(tok)
        assert a.monitors() == b.monitors()


# ------------------------------------------------------------------ readout

def test_row_norms_and_rows(tiny):
    c = tiny.config
    L, H, N, D = c["n_layer"], c["n_head"], c["n_neurons"], c["n_embd"]
    with tiny.new_state() as s:
        s.prefill(b"ABCDEFGHIJKL")
        S = np.frombuffer(s.save()[64:64 + L * H * N * D * 4], np.float32).reshape(L, H, N, D)
        for layer, head in [(0, 0), (1, 1)]:
            norms = s.row_norms(layer, head)
            assert norms.shape == (N,) and norms.dtype == np.float32
            np.testing.assert_allclose(norms, np.linalg.norm(S[layer, head].astype(np.float64), axis=1),
                                       rtol=1e-5, atol=1e-6)
            assert (norms > 0).any()
            for n in (0, N // 2, N - 1):
                np.testing.assert_array_equal(s.row(layer, head, n), S[layer, head, n])
        with pytest.raises(bdh.BDHError):
            s.row_norms(L, 0)
        with pytest.raises(bdh.BDHError):
            s.row(0, H, 0)
        with pytest.raises(bdh.BDHError):
            s.row(0, 0, N)


# ---------------------------------------------------------------- observers

def test_set_observer_sees_every_layer_of_every_token(tiny):
    seen = []
    text = b"every token, every layer"
    with tiny.new_state() as s:
        s.set_observer(seen.append)
        assert s.observer is not None
        s.prefill(text[:10])  # token by token while observed
        s.prefill_all(text[10:15])
        for tok in text[15:]:
            _, acts = s.step(tok, observe=True)  # both get it
            assert [(a.position, a.layer) for a in acts] == [(a.position, a.layer) for a in seen[-len(acts):]]
        s.set_observer(None)
        s.step(1)
    L = tiny.config["n_layer"]
    assert [(a.position, a.layer) for a in seen] == [(t, layer) for t in range(len(text)) for layer in range(L)]
    with tiny.new_state() as ref:  # the same activations as stepping with observe=True
        for t, tok in enumerate(text):
            _, acts = ref.step(tok, observe=True)
            for a in acts:
                b = seen[t * L + a.layer]
                assert np.array_equal(a.x_index, b.x_index) and np.array_equal(a.x_value, b.x_value)
                assert np.array_equal(a.y_index, b.y_index) and np.array_equal(a.y_value, b.y_value)


def test_observer_exception_reaches_the_caller(tiny):
    def boom(a):
        if a.position == 2:
            raise KeyError("from the observer")

    with tiny.new_state() as s:
        s.set_observer(boom)
        with pytest.raises(KeyError, match="from the observer"):
            s.prefill(b"abcdef")
        assert s.position == 6  # the tokens were consumed all the same
        s.step(1)  # and the error is not raised twice
        with pytest.raises(TypeError):
            s.set_observer(42)


def test_observer_during_generate(tiny):
    seen = []
    with tiny.new_state() as s:
        s.set_observer(seen.append)
        out = b"".join(tiny.generate(b"hi", max_new_tokens=5, seed=1, state=s))
    assert len(out) == 5
    # the prompt (2) and every generated token (5): the state consumed all
    assert sorted({a.position for a in seen}) == list(range(7))


def test_observer_callback_survives_gc(tiny):
    import gc

    seen = []
    s = tiny.new_state()
    s.set_observer(lambda a: seen.append(a.layer))
    gc.collect()
    s.prefill(b"still alive")
    assert len(seen) == 11 * tiny.config["n_layer"]
    s.close()


# ------------------------------------------------------------------- traces

TEXT = b"First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"


@pytest.fixture(scope="module")
def long_trace():
    return bdh.trace(str(LONG), TEXT, synapses=[(1, 5, 700), (3, 1023, 2), (5, 4, 4)], threads=2)


def test_trace_equals_stepping(long_trace):
    tr = long_trace
    assert tr.n_tokens == len(TEXT) and tr.text == TEXT and tr.n_layer == 6 and tr.width == 1024
    assert tr.meta["model"] == str(LONG)
    with bdh.Model(LONG, threads=2) as m, m.new_state() as s:
        for (l, i, j) in tr.synapses:
            s.add_monitor(int(l), int(i), int(j))
        for t, tok in enumerate(TEXT):
            _, acts = s.step(tok, observe=True)
            for a in acts:
                b = tr.activation(t, a.layer)
                assert np.array_equal(a.x_index, b.x_index) and np.array_equal(a.x_value, b.x_value)
                assert np.array_equal(a.y_index, b.y_index) and np.array_equal(a.y_value, b.y_value)
                assert tr.density[t, a.layer, 0] == np.float32(a.x_density)
            np.testing.assert_array_equal(tr.sigma[t], s.sigma())
    dense = tr.dense(2)
    assert dense.shape == (tr.n_tokens, tr.width)
    idx, val = tr.active(7, 2)
    assert np.array_equal(np.flatnonzero(dense[7]), idx) and np.array_equal(dense[7, idx], val)
    assert np.array_equal(tr.counts(2), (dense > 0).sum(axis=0))
    assert np.array_equal(tr.dense(2, "y", [3, 9]), tr.dense(2, "y")[:, [3, 9]])


def test_trace_round_trip(tmp_path, long_trace):
    p = tmp_path / "t.safetensors"
    long_trace.save(p)
    back = bdh.load_trace(p)
    assert back == long_trace
    for k, v in long_trace.tensors().items():
        assert np.array_equal(getattr(back, k), v) and getattr(back, k).dtype == v.dtype
    # the conftest reader (independent code) reads the same file
    raw = read_safetensors(p)
    assert set(raw) == {"tokens", "x_offsets", "x_index", "x_value", "y_offsets", "y_index", "y_value", "density",
                        "synapses", "sigma"}
    assert raw["density"].shape == (len(TEXT), 6, 2) and raw["sigma"].shape == (len(TEXT), 3)
    assert raw["x_offsets"].dtype == np.int64 and raw["x_offsets"][-1] == raw["x_index"].size
    # without synapses there are no synapse tensors
    plain = bdh.trace(bdh.Model(TINY), b"abc")
    plain.save(tmp_path / "plain.safetensors")
    assert "sigma" not in read_safetensors(tmp_path / "plain.safetensors")
    assert bdh.load_trace(tmp_path / "plain.safetensors") == plain and plain.sigma.shape == (3, 0)


def test_trace_selective_neurons(long_trace):
    tr = long_trace
    picks = tr.selective_neurons(lambda b: b == 10, layer=3, k=5)
    assert 0 < len(picks) <= 5
    fire = tr.dense(3) > 0
    nl = tr.tokens == 10
    for n, p_on, p_off in picks:
        assert p_on == pytest.approx(fire[nl, n].mean()) and p_off == pytest.approx(fire[~nl, n].mean())
    scores = [p - q for _, p, q in picks]
    assert scores == sorted(scores, reverse=True)
    top = tr.top_neurons_per_token(3, k=3)
    assert set(top) == set(np.unique(tr.tokens).tolist())
    for tok, lst in top.items():
        for n, p in lst:
            assert p == pytest.approx(fire[tr.tokens == tok, n].mean())
    with pytest.raises(ValueError):
        tr.selective_neurons(np.zeros(tr.n_tokens, bool), 0)


def test_trace_of_token_ids(tmp_path):
    """A model with another vocabulary: token ids in, no text."""
    tr = bdh.trace(bdh.Model(ODD), list(range(0, 97, 3)), synapses=[(2, 3, 4)])
    assert tr.text is None and tr.meta["vocab_size"] == 97 and tr.width == 3 * 128
    tr.save(tmp_path / "odd.safetensors")
    assert bdh.load_trace(tmp_path / "odd.safetensors") == tr
    with pytest.raises(bdh.BDHError):
        bdh.trace(bdh.Model(ODD), [97])


def test_trace_refusals(tmp_path, tiny):
    with pytest.raises(ValueError):
        bdh.trace(tiny, b"")
    with pytest.raises(bdh.BDHError):
        bdh.trace(tiny, b"abc", synapses=[(0, 1, 2)])
    with pytest.raises(ValueError):
        bdh.trace(tiny, b"abc", synapses=[(1, 2)])
    _safetensors.write(tmp_path / "x.safetensors", {"a": np.zeros(3, np.float32)}, {"format": "other"})
    with pytest.raises(ValueError, match="not a trace"):
        bdh.load_trace(tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="not a trace"):
        bdh.load_trace(TINY)


def test_cli_trace_equals_python_trace(tmp_path):
    """bdh trace writes the very bytes bdh.trace(...).save() writes."""
    cli = cli_path()
    if cli is None:
        pytest.skip("the bdh tool is not built")
    text = tmp_path / "text.txt"
    text.write_bytes(TEXT)
    out = tmp_path / "cli.safetensors"
    syn = [(1, 5, 700), (3, 1023, 2), (5, 4, 4)]
    r = subprocess.run([str(cli), "trace", "-m", str(LONG), "-f", str(text), "-o", str(out), "--threads", "2"]
                       + [a for s in syn for a in ("--synapse", ",".join(map(str, s)))],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"wrote {out}: {len(TEXT)} tokens")
    tr = bdh.trace(str(LONG), TEXT, synapses=syn, threads=2)
    cli_trace = bdh.load_trace(out)
    assert cli_trace == tr
    tr.save(tmp_path / "py.safetensors")
    assert (tmp_path / "py.safetensors").read_bytes() == out.read_bytes()
    # offset/length cut the same bytes
    r = subprocess.run([str(cli), "trace", "-m", str(LONG), "-f", str(text), "-o", str(tmp_path / "cut.safetensors"),
                        "--offset", "15", "--length", "20", "--threads", "2"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert bdh.load_trace(tmp_path / "cut.safetensors") == bdh.trace(str(LONG), TEXT[15:35], threads=2)


# -------------------------------------------------------------- safetensors

def test_safetensors_round_trip(tmp_path):
    tensors = {
        "f64": np.linspace(-1, 1, 6).reshape(2, 3),
        "f32": np.arange(5, dtype=np.float32),
        "f16": np.array([1.5, -2], np.float16),
        "i64": np.array([2**40, -1], np.int64),
        "i32": np.zeros((0, 3), np.int32),
        "u8": np.frombuffer(b"bytes", np.uint8),
        "scalar": np.array(7, np.int32),
        "big_endian": np.array([1, 2], ">i4"),
    }
    meta = {"model": "caf\u00e9 \"quoted\"\n", "n": "3"}
    p = tmp_path / "x.safetensors"
    _safetensors.write(p, tensors, meta)
    raw = p.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert n % 8 == 0 and raw[8:8 + n].startswith('{"__metadata__":{"model":"café \\"quoted\\"\\n"'.encode())
    got, md = _safetensors.read(p)
    assert md == meta and list(got) == list(tensors)
    for k, v in tensors.items():
        assert got[k].shape == v.shape and np.array_equal(got[k], v), k
    other = read_safetensors(p)  # the independent reader agrees
    assert np.array_equal(other["f32"], tensors["f32"]) and np.array_equal(other["big_endian"], [1, 2])
    assert _safetensors.dumps(tensors, meta) == raw  # canonical
    with pytest.raises(TypeError):
        _safetensors.dumps({"c": np.zeros(2, np.complex64)})
    with pytest.raises(TypeError):
        _safetensors.dumps({"a": np.zeros(1)}, {"n": 3})  # type: ignore[dict-item]
    for bad in (raw[:5], raw[:8] + b"{nope" + raw[13:], raw[: len(raw) - 4]):
        (tmp_path / "bad.safetensors").write_bytes(bad)
        with pytest.raises(ValueError):
            _safetensors.read(tmp_path / "bad.safetensors")


# ----------------------------------------------------------------- plotting

def need_matplotlib() -> None:
    """Skip without matplotlib (an optional dependency CI does not install)."""
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError as e:
        pytest.skip(f"matplotlib is not available ({e})")


def test_plot_without_matplotlib_says_so(monkeypatch, long_trace, tmp_path):
    import libbdh.plot as bplot

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        bplot.raster(long_trace)
    p = tmp_path / "t.safetensors"
    long_trace.save(p)
    assert bplot.main([str(p), "--out", str(tmp_path / "png")]) == 3


def test_plot_pictures(tmp_path, long_trace):
    need_matplotlib()
    import libbdh.plot as bplot
    from matplotlib.figure import Figure

    tr = long_trace
    for fig in (bplot.raster(tr), bplot.raster(tr, "y", layers=[0, 5], max_rows=50, order="peak"),
                bplot.raster(tr, max_rows=40, select="rare"), bplot.raster(tr, layers=[1], select="variance"),
                bplot.density(tr), bplot.top_bytes(tr, 2), bplot.top_classes(tr), bplot.synapses(tr),
                bplot.neurons(tr, 3, [1, 2, 3], highlight=lambda b: b == 10, title="t")):
        assert isinstance(fig, Figure)
    paths = bplot.save_all(tr, tmp_path / "all")
    names = sorted(os.path.basename(p) for p in paths)
    assert names == ["density.png", "raster_x.png", "raster_y.png", "synapses.png", "top_bytes.png",
                     "top_classes.png"]
    for p in paths:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        bplot.raster(tr, select="best")
    with pytest.raises(ValueError):
        bplot.raster(tr, order="random")
    assert bplot.byte_label(10) == "↵" and bplot.byte_label(65) == "A" and bplot.byte_label(0) == "\\x00"
    with pytest.raises(ValueError):
        bplot.synapses(bdh.trace(bdh.Model(TINY), b"ab"))
    odd = bdh.trace(bdh.Model(ODD), [5, 6, 7, 8])  # token ids: no per-byte pictures
    assert sorted(os.path.basename(p) for p in bplot.save_all(odd, tmp_path / "odd")) == [
        "density.png", "raster_x.png", "raster_y.png"]
    with pytest.raises(ValueError):
        bplot.top_bytes(odd)


def test_plot_module_entry_point(tmp_path, long_trace):
    need_matplotlib()
    p = tmp_path / "t.safetensors"
    long_trace.save(p)
    env = dict(os.environ, BDH_LIBRARY=bdh.library_path, PYTHONPATH=str(REPO / "bindings" / "python"))
    r = subprocess.run([sys.executable, "-m", "libbdh.plot", str(p), "--out", str(tmp_path / "png"), "--layer", "1"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.split()) == 6 and (tmp_path / "png" / "raster_x.png").exists()
    r = subprocess.run([sys.executable, "-m", "libbdh.plot", str(p), "--out", str(tmp_path / "png"), "--layer", "9"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--layer 9" in r.stderr
