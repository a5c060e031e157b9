"""Model(..., config=): the configuration given at load (bdh_model_params.config)
for a checkpoint that carries none; C's refusals come back as BDHError, bad
keys and types are refused in Python before C is called.

The checkpoint is tests/data/checkpoints/ref-no-metadata/model.safetensors
(the reference's state_dict saved without metadata) copied alone into a tmp
dir, away from its config.json. Against the same file loaded with its
config.json the logits must be bit-identical (the same weights and
configuration reach the same code), and against the reference's own logits
(PyTorch, reference.logits.f32) within 1e-4 absolute, the C test's bound
(tests/test_checkpoints.c explains it)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import libbdh as bdh
from conftest import DATA, TINY

CK = DATA / "checkpoints"
FIXTURES = json.loads((CK / "fixtures.json").read_text())
TOKENS = FIXTURES["tokens"]
CONFIG = {k: FIXTURES[k] for k in ("n_layer", "n_embd", "n_head", "vocab_size", "mlp_internal_dim_multiplier")}
CONFIG["n_neurons"] = CONFIG["mlp_internal_dim_multiplier"] * CONFIG["n_embd"] // CONFIG["n_head"]
ABS_TOL = 1e-4


@pytest.fixture
def bare(tmp_path):
    """The weights without any configuration: no metadata, no config.json."""
    path = tmp_path / "model.safetensors"
    shutil.copyfile(CK / "ref-no-metadata" / "model.safetensors", path)
    return path


def logits_all(path, **kw) -> np.ndarray:
    with bdh.Model(path, threads=1, **kw) as m:
        return m.new_state().prefill_all(TOKENS)


def test_bare_file_needs_a_config(bare):
    with pytest.raises(bdh.BDHError) as e:
        bdh.Model(bare)
    assert e.value.status == "BDH_ERR_CONFIG"
    assert "no n_layer in the metadata, in a config.json" in e.value.message
    assert "load parameters" in e.value.message


def test_config_gives_the_files_logits(bare):
    want = logits_all(CK / "ref-no-metadata")  # the same file, read with its config.json
    got = logits_all(bare, config=CONFIG)
    assert np.array_equal(got, want)
    ref = np.fromfile(CK / "reference.logits.f32", dtype="<f4").reshape(len(TOKENS), CONFIG["vocab_size"])
    assert float(np.abs(got - ref).max()) <= ABS_TOL
    with bdh.Model(bare, config=CONFIG) as m:
        assert m.config == CONFIG


def test_config_zero_or_left_out_means_from_the_file(bare):
    """As in C, 0 = not given: n_layer alone is enough (the shapes give the
    rest), whether the other keys are 0 or left out."""
    only_layers = dict.fromkeys(CONFIG, 0)
    only_layers["n_layer"] = CONFIG["n_layer"]
    expected = logits_all(CK / "ref-no-metadata")
    assert np.array_equal(logits_all(bare, config=only_layers), expected)
    assert np.array_equal(logits_all(bare, config={"n_layer": CONFIG["n_layer"]}), expected)


def test_empty_config_is_no_config(bare):
    with pytest.raises(bdh.BDHError) as e:
        bdh.Model(bare, config={})
    assert e.value.status == "BDH_ERR_CONFIG"
    assert "no n_layer" in e.value.message


def test_config_round_trips_from_model_config(bare):
    with bdh.Model(CK / "ref-no-metadata") as m:
        cfg = m.config
    with bdh.Model(bare, config=cfg) as m:
        assert m.config == cfg


def test_config_that_contradicts_the_file(bare):
    wrong_heads = dict(CONFIG, n_head=4)
    with pytest.raises(bdh.BDHError) as e:
        bdh.Model(bare, config=wrong_heads)
    assert e.value.status == "BDH_ERR_CONFIG"
    assert e.value.message == f"'{bare}': the load parameters says n_head = 4 but the tensor shapes give 2"
    with bdh.Model(TINY) as m:  # a file with metadata: the config must agree with it too
        layers = m.config["n_layer"]
        meta_wrong = dict(m.config, n_layer=layers + 1)
    with pytest.raises(bdh.BDHError) as e:
        bdh.Model(TINY, config=meta_wrong)
    assert e.value.status == "BDH_ERR_CONFIG"
    assert f"the metadata says n_layer = {layers} but the load parameters says {layers + 1}" in e.value.message


def test_config_value_c_refuses(bare):
    with pytest.raises(bdh.BDHError) as e:
        bdh.Model(bare, config=dict(CONFIG, n_layer=-1))
    assert e.value.status == "BDH_ERR_INVALID_ARGUMENT"
    assert e.value.message.startswith(f"'{bare}': params.config->n_layer = -1 is not in 0..")


@pytest.mark.parametrize(
    "config, error, words",
    [
        ([2, 32, 2, 32, 256, 2], TypeError, "config must be a mapping"),
        ("n_layer=2", TypeError, "config must be a mapping"),
        (dict(CONFIG, n_layers=2), ValueError, "unknown key 'n_layers'"),
        (dict(CONFIG, **{"0": 1}), ValueError, "unknown key '0'"),
        (dict(CONFIG, n_layer=2.0), TypeError, "config['n_layer'] must be an int, not float"),
        (dict(CONFIG, n_embd="32"), TypeError, "config['n_embd'] must be an int, not str"),
        (dict(CONFIG, n_head=None), TypeError, "config['n_head'] must be an int, not NoneType"),
        (dict(CONFIG, vocab_size=True), TypeError, "config['vocab_size'] must be an int, not bool"),
        (dict(CONFIG, n_neurons=2**31), ValueError, "config['n_neurons'] = 2147483648 does not fit in int32"),
    ],
)
def test_bad_config_refused_before_c(tmp_path, config, error, words):
    """Python's error, not C's: the path does not exist, so had C been
    called the error would be BDHError BDH_ERR_IO."""
    with pytest.raises(error) as e:
        bdh.Model(tmp_path / "missing.safetensors", config=config)
    assert words in str(e.value)


def test_config_accepts_numpy_ints_and_any_mapping(bare):
    from types import MappingProxyType

    cfg = MappingProxyType({k: np.int64(v) for k, v in CONFIG.items()})
    with bdh.Model(bare, config=cfg) as m:
        assert m.config == CONFIG
