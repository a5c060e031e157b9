"""Allocation failures seen from Python: with tests/fault_shim.c preloaded
(built as libfaultshim.so; `make test-python` names it in BDH_FAULT_SHIM),
the n-th allocation libbdh makes fails, swept over n until the call succeeds.
Each failure must raise BDHError("BDH_ERR_OUT_OF_MEMORY") with a message,
leave the state as it was (its saved bytes) and leak nothing in the library;
the interpreter must go on working. The sweep runs in a child process because
the shim has to be preloaded before Python starts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import DATA, PY_ROOT

SHIM = os.environ.get("BDH_FAULT_SHIM")

CHILD = textwrap.dedent(
    r"""
    import ctypes, json, sys
    sys.path.insert(0, sys.argv[1])
    import libbdh as bdh
    shim = ctypes.CDLL(sys.argv[2])
    shim.fault_live.restype = ctypes.c_long
    TINY = sys.argv[3]
    results = {}

    def sweep(name, op, state=None):
        for n in range(100000):
            before_live = shim.fault_live()
            before = state.save() if state is not None else None
            shim.fault_arm(ctypes.c_long(n))
            try:
                out = op()
            except bdh.BDHError as e:
                shim.fault_disarm()
                assert e.status == "BDH_ERR_OUT_OF_MEMORY", (name, n, e.status, str(e))
                assert str(e), (name, n)
                if state is not None:
                    assert state.save() == before, (name, n, "state changed")
                assert shim.fault_live() == before_live, (name, n, "leaked", shim.fault_live() - before_live)
                continue
            shim.fault_disarm()
            if hasattr(out, "close"):
                out.close()
            results[name] = n
            return
        raise AssertionError(name + ": never succeeded")

    sweep("Model", lambda: bdh.Model(TINY, threads=2))
    model = bdh.Model(TINY, threads=2)
    sweep("new_state", model.new_state)
    s = model.new_state()
    s.prefill([84, 111, 32])
    sweep("copy", s.copy, state=s)
    sweep("load", lambda: s.load(s.save()), state=s)
    sweep("add_monitor", lambda: s.add_monitor(1, 2, 3), state=s)
    sweep("prefill", lambda: s.prefill([98, 101, 44]))
    sweep("step_batch", lambda: model.step_batch([s, s.copy()], [97, 98]))
    sweep("generate", lambda: list(model.generate([65, 66], max_new_tokens=3, seed=1)))
    sweep("quantize", lambda: bdh.quantize(TINY, sys.argv[4]))
    print(json.dumps(results))
    """
)


@pytest.mark.skipif(not SHIM, reason="BDH_FAULT_SHIM unset: run through `make test-python`")
def test_every_allocation_failure_raises_and_loses_nothing(tmp_path):
    tiny = DATA / "golden" / "tiny.model.safetensors"
    env = dict(os.environ, LD_PRELOAD=SHIM, OPENBLAS_NUM_THREADS="1")
    run = subprocess.run(
        [sys.executable, "-c", CHILD, str(PY_ROOT), SHIM, str(tiny), str(tmp_path / "q8.safetensors")],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    counts = json.loads(run.stdout.strip().splitlines()[-1])
    # each of these allocates (the C sweep shows how much), so the sweep
    # really failed something in each
    for name in ("Model", "new_state", "copy", "quantize"):
        assert counts[name] > 0, counts
