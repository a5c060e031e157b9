"""A loaded model (bdh_model): loading, its read-only facts, new states,
batched steps and streaming generation."""
from __future__ import annotations

import os
from contextlib import ExitStack
from ctypes import byref, c_void_p, pointer
from typing import Any, Dict, Literal, Mapping, Optional, Sequence, overload

import numpy as np

from . import _lib
from ._args import PathLike, Tokens, fptr, int32, iptr, out_array, token_array
from ._generation import Generation, StopArg
from ._handle import Handle, finalizer
from ._lib import lib
from ._state import State

__all__ = ["Model", "quantize"]


def _choices(names: Sequence[str]) -> str:
    """'a', 'b' or 'c'"""
    quoted = [repr(n) for n in names]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1] if len(quoted) > 1 else quoted[0]


def _weight_type(weights: Any) -> int:
    """The bdh_weight_type of a weights= name (any case, aliases included)."""
    if isinstance(weights, str) and weights.lower() in _lib.WEIGHTS:
        return _lib.WEIGHTS[weights.lower()]
    aliases = sorted(set(_lib.WEIGHTS) - set(_lib.WEIGHT_NAMES))
    raise ValueError(
        f"weights must be {_choices(_lib.WEIGHT_NAMES)} (or {_choices(aliases)}), not {weights!r}"
    )


def _c_path(path: PathLike, what: str) -> bytes:
    cpath = os.fsencode(os.fspath(path))
    if b"\0" in cpath:
        raise ValueError(f"{what} contains a NUL byte")
    return cpath


_CONFIG_KEYS = [f[0] for f in _lib.Config._fields_]


def _config(config: Any) -> _lib.Config:
    """bdh_config from a mapping of some of its fields; a missing key or 0 is
    "not given: from the file", as in C. Keys and types are checked here; the
    values are bdh_model_load's to refuse."""
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping (a dict of {', '.join(_CONFIG_KEYS)}), not {type(config).__name__}")
    for key in config:
        if key not in _CONFIG_KEYS:
            raise ValueError(f"config has an unknown key {key!r}; the keys are {', '.join(_CONFIG_KEYS)}")
    cfg = _lib.Config()
    for key in config:
        setattr(cfg, key, int32(config[key], f"config[{key!r}]", bools=False))
    return cfg


def _model_params(
    device: str, threads: Optional[int], weights: str, kernels: str, config: Optional[Mapping[str, int]]
) -> _lib.ModelParams:
    """bdh_model_params from the constructor's arguments (names checked
    here, values by bdh_model_load)."""
    if not isinstance(device, str):
        raise TypeError(f"device must be a str, not {type(device).__name__}")
    dev, _, ordinal = device.strip().lower().partition(":")
    if dev not in _lib.DEVICES or (ordinal and dev != "cuda") or (ordinal and not ordinal.isdigit()):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', not {device!r}")
    weight_type = _weight_type(weights)
    if not isinstance(kernels, str) or kernels.lower() not in _lib.KERNELS:
        raise ValueError(f"kernels must be 'fast' or 'reference', not {kernels!r}")
    params = lib.bdh_model_default_params()
    params.device = _lib.DEVICES[dev]
    params.cuda_device = int(ordinal) if ordinal else 0
    params.n_threads = 0 if threads is None else int32(threads, "threads")
    params.weight_type = weight_type
    params.kernels = _lib.KERNELS[kernels.lower()]
    if config is not None:
        params.config = pointer(_config(config))  # the struct keeps it alive
    return params


class Model:
    """A BDH-GPU model loaded from a safetensors file (read-only, shareable).

    ``Model(path, device="cpu", threads=None, *, weights="f32", kernels="fast", config=None)``

    Args:
        path: the ``.safetensors`` file (tools/convert.py writes them).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (CUDA needs a library
            built with ``make CUDA=1``; otherwise BDHError BDH_ERR_UNSUPPORTED).
        threads: CPU worker threads; ``None`` or 0 = all cores.
        weights: how weights are held in memory: ``"f32"`` (default),
            ``"bf16"``, ``"f16"`` (rounded at load), ``"q8_0"`` (encoder,
            encoder_v and decoder as int8 blocks of 32 with a float16 scale
            each, quantized at load or read from a file :func:`quantize`
            wrote; embed and lm_head float32), or ``"stored"`` (also
            ``"as_stored"``: the file's F32/F16/BF16/Q8_0 as they are). A
            Q8_0 file loaded as ``"f32"`` is dequantized. Computation is
            float32 either way.
        kernels: CPU step code: ``"fast"`` (sparse-aware, threaded; default)
            or ``"reference"`` (plain dense loops, for checking).
        config: the configuration, for a checkpoint that does not carry it
            (no metadata, no config.json): a mapping with some or all keys
            of :attr:`config` (``n_layer``, ``n_embd``, ``n_head``,
            ``n_neurons``, ``vocab_size``, ``mlp_internal_dim_multiplier``),
            ints; a key left out or 0 = not given (from the file or the
            shapes). What is given
            must agree with the file (``bdh_model_params.config``). ``None``
            (the default): all from the file.

    Raises:
        TypeError/ValueError: arguments of the wrong type or name (a
            `config` key unknown, a value not an int).
        BDHError: the file is missing or malformed, or the parameters are
            refused (the C library's message and status name), e.g. a
            `config` that contradicts the file (BDH_ERR_CONFIG).

    A model is read-only after loading; many :class:`State` objects (one per
    token stream) may share it, each used by one thread at a time. Use it as
    a context manager or call :meth:`close` to drop it deterministically:
    states made from it hold their own reference to the C model and keep
    working; its memory goes with the last of them.
    """

    def __init__(
        self,
        path: PathLike,
        device: str = "cpu",
        threads: Optional[int] = None,
        *,
        weights: str = "f32",
        kernels: str = "fast",
        config: Optional[Mapping[str, int]] = None,
    ) -> None:
        self._h: Optional[Handle] = None
        fspath = os.fspath(path)
        cpath = _c_path(fspath, "path")
        self.path: str = os.fsdecode(fspath)
        params = _model_params(device, threads, weights, kernels, config)
        out = c_void_p()
        lib.bdh_model_load(cpath, byref(params), byref(out))
        h = Handle(out.value, lib.bdh_model_free, "model")  # type: ignore[arg-type]
        try:
            with h.peek() as ptr:
                self._read_facts(ptr, params)
        except BaseException:
            h.close()
            raise
        self._h = h
        self._finalizer = finalizer(self, h.close)

    def _read_facts(self, ptr: int, params: _lib.ModelParams) -> None:
        cfg = _lib.Config()
        lib.bdh_model_config(ptr, byref(cfg))
        self._config: Dict[str, int] = {f[0]: int(getattr(cfg, f[0])) for f in _lib.Config._fields_}
        self.vocab_size: int = self._config["vocab_size"]
        self.n_params: int = int(lib.bdh_model_n_params(ptr))
        self.weight_bytes: int = int(lib.bdh_model_weight_bytes(ptr))
        self.state_bytes: int = int(lib.bdh_model_state_bytes(ptr))
        self.fingerprint: int = int(lib.bdh_model_fingerprint(ptr))
        self.device: str = _lib.DEVICE_NAMES.get(int(lib.bdh_model_device(ptr)), "unknown")
        if self.device == "cuda":
            self.device = f"cuda:{params.cuda_device}"

    # -- properties

    @property
    def config(self) -> Dict[str, int]:
        """The configuration (a new dict each time): ``n_layer``, ``n_embd``
        (D), ``n_head`` (H), ``n_neurons`` (N, per head), ``vocab_size`` (V),
        ``mlp_internal_dim_multiplier``."""
        return dict(self._config)

    @property
    def closed(self) -> bool:
        """True after :meth:`close` (states made before keep working)."""
        return self._h is None or self._h.closed

    def _handle(self) -> Handle:
        if self._h is None:
            raise ValueError("the model is not loaded")
        return self._h

    def file_dtype(self, tensor: str) -> Optional[str]:
        """dtype of `tensor` as stored in the file (``"F32"``, ``"F16"``,
        ``"BF16"``, or ``"Q8_0"`` for the int8 tensors of a quantized file),
        or None if there is no such tensor."""
        with self._handle().peek() as ptr:
            r = lib.bdh_model_file_dtype(ptr, tensor.encode())
        return r.decode() if r is not None else None

    # -- lifetime

    def close(self) -> None:
        """Drop this object's reference to the C model. States created from
        it stay valid (each holds its own reference; the memory is freed
        with the last of them); creating new states or generating on a
        fresh state afterwards raises ValueError. Idempotent."""
        if self._h is not None:
            self._finalizer.detach()
            self._h.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        c = getattr(self, "_config", None)
        if c is None:
            return "<bdh.Model (not loaded)>"
        tail = " closed" if self.closed else ""
        return (
            f"<bdh.Model {os.path.basename(self.path)!r} L={c['n_layer']} D={c['n_embd']} "
            f"H={c['n_head']} N={c['n_neurons']} V={c['vocab_size']} "
            f"params={self.n_params} device={self.device}{tail}>"
        )

    def __reduce__(self) -> Any:
        raise TypeError("a bdh.Model cannot be pickled; load the file again in the other process")

    def __copy__(self) -> "Model":
        return self  # read-only: sharing is copying

    def __deepcopy__(self, memo: Any) -> "Model":
        return self

    # -- states

    def new_state(self) -> State:
        """A fresh token stream at position 0 (all-zero state)."""
        out = c_void_p()
        with self._handle().peek() as ptr:  # C allows concurrent bdh_state_new
            lib.bdh_state_new(ptr, byref(out))
        return State._wrap(self, out.value)  # type: ignore[arg-type]

    def step_batch(
        self, states: Sequence[State], tokens: Sequence[int], out: Optional[np.ndarray] = None
    ) -> np.ndarray:
        """Advance several distinct states of this model by one token each
        (``bdh_step_batch``); returns logits of shape (len(states), vocab_size)."""
        states = list(states)
        toks = token_array(tokens, self.vocab_size)
        if len(toks) != len(states):
            raise ValueError(f"{len(states)} states but {len(toks)} tokens")
        if len({id(s) for s in states}) != len(states):
            raise ValueError("the states must be distinct")
        for s in states:
            if not isinstance(s, State):
                raise TypeError(f"states must be bdh.State objects, not {type(s).__name__}")
            if s.model is not self:
                raise ValueError("every state must belong to this model")
        logits = out_array(out, (len(states), self.vocab_size))
        if not states:
            return logits
        with ExitStack() as held:
            ptrs = (c_void_p * len(states))(*[held.enter_context(s._h.use()) for s in states])
            lib.bdh_step_batch(ptrs, iptr(toks), len(states), fptr(logits))
        for s in states:
            s._raise_observer_error()
        return logits

    # -- generation

    @overload
    def generate(
        self,
        prompt: Tokens,
        max_new_tokens: int = 200,
        temperature: float = 0.8,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        seed: Optional[int] = None,
        state: Optional["State"] = None,
        stop: StopArg = None,
        *,
        min_p: Optional[float] = None,
        repeat_penalty: Optional[float] = None,
        repeat_window: Optional[int] = None,
        text: Literal[False] = False,
        tokens: Literal[False] = False,
    ) -> "Generation[bytes]": ...

    @overload
    def generate(
        self,
        prompt: Tokens,
        max_new_tokens: int = 200,
        temperature: float = 0.8,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        seed: Optional[int] = None,
        state: Optional["State"] = None,
        stop: StopArg = None,
        *,
        min_p: Optional[float] = None,
        repeat_penalty: Optional[float] = None,
        repeat_window: Optional[int] = None,
        text: Literal[True],
        tokens: Literal[False] = False,
    ) -> "Generation[str]": ...

    @overload
    def generate(
        self,
        prompt: Tokens,
        max_new_tokens: int = 200,
        temperature: float = 0.8,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        seed: Optional[int] = None,
        state: Optional["State"] = None,
        stop: StopArg = None,
        *,
        min_p: Optional[float] = None,
        repeat_penalty: Optional[float] = None,
        repeat_window: Optional[int] = None,
        text: Literal[False] = False,
        tokens: Literal[True],
    ) -> "Generation[int]": ...

    @overload
    def generate(
        self,
        prompt: Tokens,
        max_new_tokens: int = 200,
        temperature: float = 0.8,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        seed: Optional[int] = None,
        state: Optional["State"] = None,
        stop: StopArg = None,
        *,
        min_p: Optional[float] = None,
        repeat_penalty: Optional[float] = None,
        repeat_window: Optional[int] = None,
        text: bool = False,
        tokens: bool = False,
    ) -> "Generation[Any]": ...

    def generate(
        self,
        prompt: Tokens,
        max_new_tokens: int = 200,
        temperature: float = 0.8,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        seed: Optional[int] = None,
        state: Optional["State"] = None,
        stop: StopArg = None,
        *,
        min_p: Optional[float] = None,
        repeat_penalty: Optional[float] = None,
        repeat_window: Optional[int] = None,
        text: bool = False,
        tokens: bool = False,
    ) -> "Generation[Any]":
        """Stream a continuation of `prompt`, one chunk per token as it is
        produced: each ``next()`` runs one step of the C generator
        (``bdh_generator_next``) in the calling thread; nothing is generated
        ahead of the consumer.

        Args:
            prompt: bytes, a str (UTF-8) or token ids; at least one token.
            max_new_tokens: upper bound on the tokens generated.
            temperature: 0 = greedy (argmax); default 0.8.
            top_k: keep the k most likely tokens (None = off).
            top_p: nucleus sampling mass (None = off).
            seed: PRNG seed (0 <= seed < 2**64); None = a random one. Same
                seed and parameters, same bytes as the C ``bdh_generate`` and
                the ``bdh generate --seed`` command line.
            state: continue this :class:`State` (it is advanced by the prompt
                and every token generated, and is held by the generation
                until it ends or is closed); None = a fresh state.
            stop: bytes/str or a list of them; generation ends right after
                the token that completes one (that chunk is still yielded).
            min_p: drop tokens with p < min_p * p_max (None = off).
            repeat_penalty: >1 discourages recently seen tokens (None = off).
            repeat_window: how many recent tokens the penalty sees (default 64).
            text: yield str chunks of complete UTF-8 characters instead of bytes.
            tokens: yield token ids (int) instead of bytes; any vocabulary.

        Returns:
            A :class:`Generation`: iterate it for the chunks; ``.stats`` holds
            the counts and timings once it has finished. Breaking out of the
            loop (or closing or dropping it) ends it and frees the C
            generator; the state then holds the prompt and exactly the tokens
            generated so far (with ``text=True``, the bytes of a character
            still incomplete too).

        Raises:
            ValueError/TypeError: bad arguments (checked here, before anything runs).
            BDHError: the C library refused the parameters or a prompt token
                (``bdh_generator_new`` checks them here).
            RuntimeError: `state` is in use by another call or generation.
        """
        return Generation(
            self,
            prompt,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            state=state,
            stop=stop,
            min_p=min_p,
            repeat_penalty=repeat_penalty,
            repeat_window=repeat_window,
            text=text,
            tokens=tokens,
        )



def quantize(in_path: PathLike, out_path: PathLike, type: str = "q8_0") -> None:
    """Write a quantized copy of the model file `in_path` to `out_path`
    (``bdh_model_quantize``): the same tensors and metadata, with encoder,
    encoder_v and decoder as int8 blocks of 32 values along n_embd, each with
    a float16 scale (docs/format.md). ``Model(out_path, weights="stored")``
    (or ``"q8_0"``) gives exactly the logits of ``Model(in_path,
    weights="q8_0")``, in less memory and file.

    Args:
        in_path: an F32, F16 or BF16 model file (not an already quantized one).
        out_path: where to write; not `in_path`. The file is written beside
            it and renamed into place, so on failure an existing file there is
            left as it was.
        type: ``"q8_0"``, the one quantization there is.

    Raises:
        ValueError: an unknown `type`, or a path with a NUL byte.
        BDHError: the library's refusal: a missing or malformed input
            (BDH_ERR_IO, BDH_ERR_FORMAT, BDH_ERR_CONFIG), `out_path` the same
            file as `in_path` or an input already quantized
            (BDH_ERR_INVALID_ARGUMENT), an unwritable `out_path` (BDH_ERR_IO).
    """
    if not isinstance(type, str) or type.lower() != "q8_0":
        raise ValueError(f"type must be 'q8_0' (the one quantization written), not {type!r}")
    lib.bdh_model_quantize(_c_path(in_path, "in_path"), _c_path(out_path, "out_path"), _lib.WEIGHTS["q8_0"])


def convert(in_path: PathLike, out_path: PathLike, type: str = "stored") -> None:
    """Write the checkpoint `in_path` (any layout ``Model`` loads: a file, a
    ``save_pretrained`` directory, prefixed names, bdh-transformers'
    tensors) as the canonical libbdh file `out_path` (``bdh_model_convert``):
    the reference's names, the configuration in the metadata, attn.freqs in
    float32, the weights as `type`.

    Args:
        type: ``"f32"``, ``"bf16"``, ``"f16"`` (a Q8_0 input is dequantized
            exactly), ``"q8_0"`` (as :func:`quantize`), or ``"stored"`` (the
            default: each tensor's own type).

    Raises:
        ValueError: an unknown `type`, or a path with a NUL byte.
        BDHError: the library's refusal (as :func:`quantize`'s).
    """
    if not isinstance(type, str) or type.lower() not in _lib.WEIGHTS:
        raise ValueError(f"type must be one of f32, bf16, f16, q8_0, stored, not {type!r}")
    lib.bdh_model_convert(_c_path(in_path, "in_path"), _c_path(out_path, "out_path"), _lib.WEIGHTS[type.lower()])


def merge(a: PathLike, b: PathLike, out_path: PathLike, embed_from: str = "mean") -> None:
    """Write the BDH paper's merge of models `a` and `b` (same n_layer,
    n_embd, n_head, vocab_size) to `out_path` (``bdh_model_merge``,
    docs/merging.md): every head holds a's neurons, then b's.

    Args:
        embed_from: where embed.weight and lm_head come from: ``"mean"``
            (the default), ``"a"`` or ``"b"`` (``bdh merge --embed-from``).

    Raises:
        ValueError: an unknown `embed_from`, or a path with a NUL byte.
        BDHError: the library's refusal (different configurations:
            BDH_ERR_CONFIG; an output that is an input: BDH_ERR_INVALID_ARGUMENT).
    """
    if embed_from not in _lib.MERGE_EMBED:
        raise ValueError(f"embed_from must be 'mean', 'a' or 'b', not {embed_from!r}")
    params = lib.bdh_merge_default_params()
    params.embed = _lib.MERGE_EMBED[embed_from]
    lib.bdh_model_merge(_c_path(a, "a"), _c_path(b, "b"), _c_path(out_path, "out_path"), byref(params))
