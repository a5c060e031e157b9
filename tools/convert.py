#!/usr/bin/env python3
"""Convert a PyTorch BDH checkpoint to the libbdh file format.

    python3 tools/convert.py IN.pt OUT.safetensors [--dtype f32|f16|bf16]
        [--n-layer L] [--n-embd D] [--n-head H] [--mlp-internal-dim-multiplier M] [--vocab-size V]

IN.pt may be (anything torch.save wrote):
  * a state_dict of the reference model (keys embed.weight, encoder, encoder_v,
    decoder, lm_head, optionally attn.freqs; `_orig_mod.` prefixes from
    torch.compile are stripped), or a BDH nn.Module;
  * a dict holding one under "model", "model_state_dict", "state_dict" or
    "module", with the configuration (a dict, a dataclass such as BDHConfig, or
    any object with those attributes) under "config", "model_config" or
    "bdh_config" when present.
IN may also be a .safetensors file (e.g. one without __metadata__), with a
config.json beside it when there is one, or a directory holding model.safetensors
and config.json (save_pretrained, e.g. jploski/bdh-transformers). As in the
loader (docs/format.md, "Accepted checkpoints"): any run of the prefixes
model., backbone., module., _orig_mod. is stripped; lm_head.weight [V, D]
(nn.Linear) is lm_head transposed; without a head, embed.weight is tied when
config.json says tie_word_embeddings (the default there); lm_gate is dropped;
config.json may use Hugging Face's names (num_hidden_layers, hidden_size,
num_attention_heads).

The output is a safetensors file with the reference's state_dict names and the
config in __metadata__ as strings (n_layer, n_embd, dropout, n_head,
mlp_internal_dim_multiplier, vocab_size). Weights are written in --dtype;
attn.freqs is always F32 (taken from the checkpoint when present, since merged
models carry non-standard values; otherwise the standard values are written).

Config resolution: command-line flags override the checkpoint's config; what
is still missing is filled from the tensor shapes (V, D from embed.weight; H, N
from encoder, then multiplier = N*H/D). n_layer cannot be inferred from the
shapes (all layers share weights): it must come from the config or --n-layer.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pickle
import sys
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bdh_torch import FREQS_NAME, PARAM_NAMES, BDHConfig, canonicalize_safetensors_header, get_freqs  # noqa: E402

CONFIG_FIELDS = ("n_layer", "n_embd", "dropout", "n_head", "mlp_internal_dim_multiplier", "vocab_size")
SD_KEYS = ("model", "model_state_dict", "state_dict", "module")
CFG_KEYS = ("config", "model_config", "bdh_config")
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
PREFIXES = ("model.", "backbone.", "module.", "_orig_mod.")
HF_NAMES = {"num_hidden_layers": "n_layer", "hidden_size": "n_embd", "num_attention_heads": "n_head"}
HARMLESS = ("lm_gate",)  # tensors no forward pass reads


class ConvertError(Exception):
    pass


# ----------------------------------------------------------------- loading
class _Stub:
    """Stands in for classes that cannot be imported (e.g. bdh.BDHConfig from another repo)."""

    def __init__(self, *a, **k):
        self.__dict__.update(k)

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.__dict__.update(state)
        elif isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            self.__dict__.update(state[0] or {})
            self.__dict__.update(state[1])


class _StubUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_Stub,), {"__module__": "stub." + module})


_stub_pickle = types.ModuleType("stub_pickle")
_stub_pickle.Unpickler = _StubUnpickler
_stub_pickle.load = lambda f, **kw: _StubUnpickler(f, **kw).load()
_stub_pickle.__name__ = "pickle"


def read_config_json(path: str) -> dict:
    """config.json's fields under our names (Hugging Face's mapped), and tie_word_embeddings."""
    import json

    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        raise ConvertError(f"{path}: {e}") from e
    if not isinstance(d, dict):
        raise ConvertError(f"{path} is not a JSON object")
    out = {}
    for k, v in d.items():
        k2 = HF_NAMES.get(k, k)
        if k2 in CONFIG_FIELDS and v is not None:
            if k2 in out and out[k2] != v:
                raise ConvertError(f"{path}: {k2} = {out[k2]} but {k} = {v}")
            out[k2] = v
    out["tie_word_embeddings"] = d.get("tie_word_embeddings", True) is not False
    return out


def load_safetensors(path: str, config_json):
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
        sd = {k: f.get_tensor(k) for k in f.keys()}
    cfg = {k: v for k, v in meta.items() if k in CONFIG_FIELDS}
    if config_json and os.path.exists(config_json):
        js = read_config_json(config_json)
        for k, v in js.items():
            if k in cfg and str(cfg[k]) != str(v):
                raise ConvertError(f"the metadata of {path} says {k} = {cfg[k]} but {config_json} says {v}")
            cfg[k] = v
    return {"model": sd, "config": cfg or None}


def load_checkpoint(path: str):
    if not os.path.exists(path):
        raise ConvertError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        inner = os.path.join(path, "model.safetensors")
        if not os.path.exists(inner):
            sharded = os.path.exists(os.path.join(path, "model.safetensors.index.json"))
            raise ConvertError(f"{path}: " + ("a sharded checkpoint (model.safetensors.index.json) is not supported"
                                              if sharded else "a directory without model.safetensors"))
        return load_safetensors(inner, os.path.join(path, "config.json"))
    if path.endswith(".safetensors"):
        return load_safetensors(path, os.path.join(os.path.dirname(path), "config.json"))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e_safe:  # custom classes (config dataclass, nn.Module) need full unpickling
        if "Unsupported global" not in str(e_safe):  # not a pickle of custom classes: unpickling will not help
            raise ConvertError(f"{path}: cannot be read by torch.load: {e_safe}") from e_safe
        print(f"note: weights_only load failed; unpickling {path} fully "
              f"(only do this with checkpoints you trust)", file=sys.stderr)
    except Exception as e:
        raise ConvertError(f"{path}: cannot be read by torch.load: {type(e).__name__}: {e}") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_stub_pickle)
    except Exception as e:
        raise ConvertError(f"{path}: cannot be read by torch.load: {type(e).__name__}: {e}") from e


def split_checkpoint(obj):
    """Returns (state_dict, config_or_None)."""
    if isinstance(obj, torch.nn.Module):
        return obj.state_dict(), getattr(obj, "config", None)
    if not isinstance(obj, dict):
        raise ConvertError(f"checkpoint is a {type(obj).__name__}, expected a state_dict or a dict holding one")
    config = next((obj[k] for k in CFG_KEYS if k in obj), None)
    for k in SD_KEYS:
        if k in obj:
            sd = obj[k]
            if isinstance(sd, torch.nn.Module):
                config = config if config is not None else getattr(sd, "config", None)
                sd = sd.state_dict()
            if not isinstance(sd, dict):
                raise ConvertError(f"checkpoint[{k!r}] is a {type(sd).__name__}, expected a state_dict")
            return sd, config
    if any(isinstance(v, torch.Tensor) for v in obj.values()):
        return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}, config
    raise ConvertError(f"no state_dict found: top-level keys are {sorted(map(str, obj))}; "
                       f"expected tensors or one of {SD_KEYS}")


def config_to_dict(config) -> dict:
    if config is None:
        return {}
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        d = dataclasses.asdict(config)
    elif isinstance(config, dict):
        d = dict(config)
    elif hasattr(config, "__dict__"):
        d = dict(vars(config))
    else:
        raise ConvertError(f"config of type {type(config).__name__} is not understood")
    d = {HF_NAMES.get(k, k): v for k, v in d.items()}
    out = {k: d[k] for k in CONFIG_FIELDS if k in d and d[k] is not None}
    if "tie_word_embeddings" in d:
        out["tie_word_embeddings"] = d["tie_word_embeddings"] is not False
    return out


# -------------------------------------------------------------- resolving
def strip_prefixes(name: str) -> str:
    again = True
    while again:
        again = False
        for p in PREFIXES:
            if name.startswith(p):
                name, again = name[len(p):], True
    return name


def clean_state_dict(sd: dict, tie: bool = False) -> dict:
    out, origin = {}, {}
    for k, v in sd.items():
        k2 = strip_prefixes(k)
        if k2 in HARMLESS:
            continue
        if k2 == "lm_head.weight" and isinstance(v, torch.Tensor):  # nn.Linear: [V, D]
            k2, v = "lm_head", v.t()
        if not isinstance(v, torch.Tensor):
            raise ConvertError(f"state_dict entry {k!r} is a {type(v).__name__}, not a tensor")
        if k2 in out:
            raise ConvertError(f"tensors {origin[k2]!r} and {k!r} are both {k2}")
        out[k2], origin[k2] = v, k
    unknown = sorted(origin[k] for k in set(out) - set(PARAM_NAMES) - {FREQS_NAME})
    if unknown:
        raise ConvertError(f"unexpected tensors {unknown}; a BDH-GPU state_dict has {list(PARAM_NAMES)} "
                           f"(or lm_head.weight) and optionally {FREQS_NAME!r}, behind the prefixes "
                           f"{', '.join(PREFIXES)}; {', '.join(HARMLESS)} is dropped (the broken 'stateful' "
                           f"bdh.py variant with per-layer attns is not supported)")
    if "lm_head" not in out and tie and "embed.weight" in out:
        out["lm_head"] = out["embed.weight"].t()
    missing = [k for k in PARAM_NAMES if k not in out]
    if missing:
        raise ConvertError(f"missing tensors {missing} (found {sorted(out)})")
    for k in PARAM_NAMES:
        if not out[k].is_floating_point():
            raise ConvertError(f"{k} has dtype {out[k].dtype}, expected a floating-point tensor")
    return out


def resolve_config(sd: dict, cfg: dict, flags: dict) -> BDHConfig:
    cfg = dict(cfg)
    for k, v in flags.items():
        if v is not None:
            if k in cfg and str(cfg[k]) != str(v):
                print(f"note: --{k.replace('_', '-')} {v} overrides the checkpoint's {k}={cfg[k]}", file=sys.stderr)
            cfg[k] = v
    e, enc = sd["embed.weight"], sd["encoder"]
    if e.dim() != 2 or enc.dim() != 3:
        raise ConvertError(f"embed.weight must be 2-D and encoder 3-D, got {tuple(e.shape)} and {tuple(enc.shape)}")
    V, D = e.shape
    H, D2, N = enc.shape
    if D2 != D:
        raise ConvertError(f"encoder is {tuple(enc.shape)} but embed.weight says n_embd={D}")
    shape_cfg = {"vocab_size": V, "n_embd": D, "n_head": H}
    if (N * H) % D != 0:
        raise ConvertError(f"N*H = {N}*{H} is not a multiple of n_embd={D}: no integer multiplier")
    shape_cfg["mlp_internal_dim_multiplier"] = N * H // D
    for k, v in shape_cfg.items():
        if k in cfg and int(cfg[k]) != v and k != "mlp_internal_dim_multiplier":
            raise ConvertError(f"config says {k}={cfg[k]} but the tensor shapes say {v}")
        cfg.setdefault(k, v)
    if "n_layer" not in cfg:
        raise ConvertError("n_layer is not in the checkpoint's config and cannot be inferred from the "
                           "shapes (all layers share weights): pass --n-layer")
    cfg.setdefault("dropout", 0.0)
    try:
        config = BDHConfig(n_layer=int(cfg["n_layer"]), n_embd=int(cfg["n_embd"]), dropout=float(cfg["dropout"]),
                           n_head=int(cfg["n_head"]),
                           mlp_internal_dim_multiplier=int(cfg["mlp_internal_dim_multiplier"]),
                           vocab_size=int(cfg["vocab_size"]))
    except (TypeError, ValueError) as ex:
        raise ConvertError(f"bad config value: {ex}") from ex
    if config.n_layer < 1:
        raise ConvertError(f"n_layer must be >= 1, got {config.n_layer}")
    if config.n_neurons != N:
        raise ConvertError(f"multiplier*n_embd//n_head = {config.mlp_internal_dim_multiplier}*{D}//{H} = "
                           f"{config.n_neurons}, but encoder has N={N}")
    if N % 2:
        raise ConvertError(f"N={N} is odd: RoPE needs pairs")
    # check every shape against the model the config describes
    expect = {"embed.weight": (V, D), "encoder": (H, D, N), "encoder_v": (H, D, N),
              "decoder": (H * N, D), "lm_head": (D, V), FREQS_NAME: (1, 1, 1, N)}
    for k, shp in expect.items():
        if k in sd and tuple(sd[k].shape) != shp:
            raise ConvertError(f"{k} has shape {tuple(sd[k].shape)}, expected {shp} for {config}")
    return config


def convert(inp: str, out: str, dtype: str = "f32", **flags) -> BDHConfig:
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise ConvertError(f"--dtype must be one of {list(DTYPES)}")
    sd, cfg = split_checkpoint(load_checkpoint(inp))
    cfg = config_to_dict(cfg)
    sd = clean_state_dict(sd, tie=bool(cfg.pop("tie_word_embeddings", False)))
    config = resolve_config(sd, cfg, flags)
    N = config.n_neurons
    out_sd = {k: sd[k].detach().to(DTYPES[dtype]).contiguous() for k in PARAM_NAMES}
    if FREQS_NAME in sd:
        fr = sd[FREQS_NAME]
        if fr.dtype != torch.float32:
            print(f"warning: {FREQS_NAME} is {fr.dtype} in the checkpoint; widened to float32 "
                  f"(the reference keeps it float32)", file=sys.stderr)
        out_sd[FREQS_NAME] = fr.detach().to(torch.float32).contiguous()
    else:
        out_sd[FREQS_NAME] = get_freqs(N).view(1, 1, 1, N)
    meta = {k: str(v) for k, v in dataclasses.asdict(config).items()}
    save_file(out_sd, out, metadata=meta)
    canonicalize_safetensors_header(out)
    return config


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", help="torch.save'd checkpoint (.pt/.pth/.bin), .safetensors, or a save_pretrained directory")
    ap.add_argument("output", help="output .safetensors")
    ap.add_argument("--dtype", default="f32", choices=list(DTYPES))
    ap.add_argument("--n-layer", type=int)
    ap.add_argument("--n-embd", type=int)
    ap.add_argument("--n-head", type=int)
    ap.add_argument("--mlp-internal-dim-multiplier", type=int)
    ap.add_argument("--vocab-size", type=int)
    ap.add_argument("--dropout", type=float)
    args = ap.parse_args()
    flags = {k: getattr(args, k) for k in ("n_layer", "n_embd", "n_head", "mlp_internal_dim_multiplier",
                                          "vocab_size", "dropout")}
    try:
        config = convert(args.input, args.output, args.dtype, **flags)
    except ConvertError as e:
        print(f"convert.py: error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"wrote {args.output} ({args.dtype}, attn.freqs F32): {config}")


if __name__ == "__main__":
    main()
