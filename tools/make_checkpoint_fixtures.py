#!/usr/bin/env python3
"""Write tests/data/checkpoints/: tiny BDH checkpoints in every layout the
loader accepts, made by the projects that write them, and their logits.

    python tools/make_checkpoint_fixtures.py --reference DIR --bdh-transformers DIR [--out tests/data/checkpoints]

--reference: a checkout of github:pathwaycom/bdh (its bdh.py is imported);
--bdh-transformers: a checkout of github:jploski/bdh-transformers (its src/
is imported; needs `transformers`). Nothing here reimplements either model:
each model's logits are its own forward pass, in float32, on CPU.

Layouts written (docs/format.md, "Accepted checkpoints"):
  ref-model-prefix.safetensors     reference state_dict under a wrapper's "model."
  ref-module-compiled.safetensors  DataParallel(torch.compile(model)): "module._orig_mod."
  ref-backbone-lm-gate.safetensors "backbone." prefix and an old lm_gate tensor
  ref-no-metadata/                 no metadata; config.json (our names) beside the file
  hf-untied/, hf-tied/             bdh-transformers save_pretrained directories
  *.logits.f32                     the logits [T][V] float32 little-endian of TOKENS
  fixtures.json                    which checkpoint has which logits, the tokens
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from safetensors.torch import save_file
from torch import nn

# Tiny: L=2, D=32, H=2, N=32, V=256 (about 90 KB of float32 weights).
L, D, H, MULT, V = 2, 32, 2, 2, 256
TOKENS = [ord(c) for c in "First Citizen: Before we"]  # 24 bytes
SEED = 1234
# Weights larger than the reference's init (std 0.02) so that the logits
# are of order 1-10 and a 1e-4 comparison measures something.
STD = {"embed": 1.0, "encoder": 0.25, "encoder_v": 0.25, "decoder": 0.25, "lm_head": 0.4}


def rescale(named_params, prefix=""):
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in named_params:
            key = name[len(prefix):].split(".")[0]
            if key in STD:
                p.copy_(torch.randn(p.shape, generator=g) * STD[key])


def metadata():
    return {"n_layer": str(L), "n_embd": str(D), "n_head": str(H), "mlp_internal_dim_multiplier": str(MULT),
            "vocab_size": str(V)}


def write_logits(out, name, logits):
    logits = logits.detach().to(torch.float32).reshape(len(TOKENS), V).contiguous()
    with open(os.path.join(out, name), "wb") as f:
        f.write(logits.numpy().astype("<f4").tobytes())
    return name


def reference_fixtures(out, ref_dir):
    sys.path.insert(0, ref_dir)
    import bdh  # the reference's bdh.py

    torch.manual_seed(SEED)
    model = bdh.BDH(bdh.BDHConfig(n_layer=L, n_embd=D, n_head=H, mlp_internal_dim_multiplier=MULT, vocab_size=V,
                                  dropout=0.0))
    rescale(model.named_parameters())
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([TOKENS]))[0]
    lg = write_logits(out, "reference.logits.f32", logits)

    class Wrap(nn.Module):
        def __init__(self, attr, inner):
            super().__init__()
            setattr(self, attr, inner)

    entries = []
    sd = {k: v.contiguous() for k, v in Wrap("model", model).state_dict().items()}
    save_file(sd, os.path.join(out, "ref-model-prefix.safetensors"), metadata=metadata())
    entries.append({"path": "ref-model-prefix.safetensors", "logits": lg, "made_by": "pathwaycom/bdh, under a wrapper"})

    compiled = nn.DataParallel(torch.compile(model))  # on CPU DataParallel only wraps
    sd = {k: v.contiguous() for k, v in compiled.state_dict().items()}
    assert all(k.startswith("module._orig_mod.") for k in sd), list(sd)
    save_file(sd, os.path.join(out, "ref-module-compiled.safetensors"), metadata=metadata())
    entries.append({"path": "ref-module-compiled.safetensors", "logits": lg,
                    "made_by": "pathwaycom/bdh, DataParallel(torch.compile(model))"})

    sd = {k: v.contiguous() for k, v in Wrap("backbone", model).state_dict().items()}
    sd["backbone.lm_gate"] = torch.zeros(1, D)  # older reference versions had one; unused
    save_file(sd, os.path.join(out, "ref-backbone-lm-gate.safetensors"), metadata=metadata())
    entries.append({"path": "ref-backbone-lm-gate.safetensors", "logits": lg,
                    "made_by": "pathwaycom/bdh, backbone. prefix, lm_gate"})

    d = os.path.join(out, "ref-no-metadata")
    os.makedirs(d, exist_ok=True)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(d, "model.safetensors"))
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({"n_layer": L, "n_embd": D, "n_head": H, "mlp_internal_dim_multiplier": MULT, "vocab_size": V,
                   "dropout": 0.0}, f, indent=2)
    entries.append({"path": "ref-no-metadata", "logits": lg, "made_by": "pathwaycom/bdh, no metadata, config.json"})
    entries.append({"path": "ref-no-metadata/model.safetensors", "logits": lg,
                    "made_by": "the same file by its path (config.json beside it)"})
    return entries


def hf_fixtures(out, hf_dir):
    sys.path.insert(0, os.path.join(hf_dir, "src"))
    from bdh_transformers.models.bdh.configuration_bdh import BDHConfig
    from bdh_transformers.models.bdh.modeling_bdh import BDHForCausalLM

    entries = []
    for tied in (False, True):
        torch.manual_seed(SEED + tied)
        cfg = BDHConfig(num_hidden_layers=L, hidden_size=D, num_attention_heads=H, mlp_internal_dim_multiplier=MULT,
                        vocab_size=V, dropout=0.0, tie_word_embeddings=tied)
        model = BDHForCausalLM(cfg)
        rescale(model.backbone.named_parameters())
        if not tied:
            rescale([("lm_head", model.lm_head.weight)])
        if tied:
            assert model.lm_head.weight.data_ptr() == model.backbone.embed.weight.data_ptr()
        model.eval()
        with torch.no_grad():
            logits = model(torch.tensor([TOKENS]), use_cache=False).logits[0]
        name = "hf-tied" if tied else "hf-untied"
        model.save_pretrained(os.path.join(out, name))
        lg = write_logits(out, name + ".logits.f32", logits)
        entries.append({"path": name, "logits": lg,
                        "made_by": f"jploski/bdh-transformers save_pretrained, tie_word_embeddings={tied}"})
    return entries


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", required=True, help="checkout of github:pathwaycom/bdh")
    ap.add_argument("--bdh-transformers", required=True, help="checkout of github:jploski/bdh-transformers")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data", "checkpoints"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(a.out, exist_ok=True)
    entries = reference_fixtures(a.out, a.reference) + hf_fixtures(a.out, a.bdh_transformers)
    with open(os.path.join(a.out, "fixtures.json"), "w") as f:
        json.dump({"tokens": TOKENS, "vocab_size": V, "n_layer": L, "n_embd": D, "n_head": H,
                   "mlp_internal_dim_multiplier": MULT, "checkpoints": entries}, f, indent=2)
        f.write("\n")
    for e in entries:
        print(e["path"], "->", e["logits"])


if __name__ == "__main__":
    main()
