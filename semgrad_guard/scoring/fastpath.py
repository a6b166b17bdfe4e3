"""The SemGrad fast path: prefix without gradients, suffix with gradients from the lowest scored layer up.

See ``docs/method.md`` ("Computing it fast"). Given prompt ids ``x``, answer ids ``y`` and the anchor
``a = len(x) + anchor_offset``:

1. the prefix ``x[:a]`` runs under ``no_grad`` (or comes from generation's KV cache, cropped to ``a``);
2. the suffix ``x[a:] + y[:-1]`` runs with that cache; gradients are switched on only at the input of
   hidden-state index ``min(S)`` (a forward pre-hook detaches the residual stream there and makes it a
   leaf), so the lower layers build no graph and the parameters are never touched;
3. ``torch.autograd.grad`` gives dL/dh_l for l in S and dL/dlogits in one backward pass;
4. exgrad = mean |G^T H| is reduced in vocabulary chunks, never materialising dL/dW_out.

``exgrad_mode="weight"`` (the research code's definition, :func:`exgrad_weight`) adds, for models whose
lm_head is tied to the input embeddings, the gradient that reaches the shared matrix through the input
embeddings of every prompt and answer token; it needs a full forward and backward pass.

Batches align every example's anchor: prefixes are left-padded to a common length, suffixes
right-padded; explicit position ids keep each row's positions as if it ran alone.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ConfigurationError, ModelError, NonFiniteGradientError


@dataclass
class ScoringInput:
    """One example in ids: prompt ``x``, answer ``y`` (ending with the end-of-turn id when there is one)."""

    prompt_ids: list[int]
    answer_ids: list[int]


@dataclass
class RawSpan:
    """The scores of the loss of answer tokens ``token_start .. token_end - 1`` alone."""

    token_start: int
    token_end: int
    semgrad: float
    exgrad: float
    hybridgrad: float
    nll: float
    mean_nll: float
    mean_entropy: float


@dataclass
class RawScores:
    semgrad: float
    exgrad: float
    hybridgrad: float
    nll: float
    mean_nll: float
    mean_entropy: float
    answer_tokens: int
    prompt_tokens: int
    layer_semgrad: list[float] = field(default_factory=list)  # per layer of the profile, in its order
    # window_semgrad[j][i]: semgrad at offset anchor_offset + j, layer i of the profile (score_ids(window=True))
    window_semgrad: list[list[float]] = field(default_factory=list)
    spans: list[RawSpan] | None = None  # when score_ids was given token spans for this example


@dataclass
class _Capture:
    """Per-thread state read by the layer pre-hooks while a scoring pass runs."""

    grad_start: int
    layers: frozenset[int]
    captured: dict[int, torch.Tensor] = field(default_factory=dict)
    # Step 4: the residual stream entering layer ``grad_start`` at the suffix positions, captured during
    # generation. When set, the layers below ``grad_start`` do not run; the hook substitutes these states.
    residuals: torch.Tensor | None = None
    substituted: bool = False
    # Long answers: each layer from ``grad_start`` up keeps only its input and is recomputed in the
    # backward (activation checkpointing), so the graph holds one layer's activations at a time.
    checkpoint: bool = False


@dataclass
class ResidualRecorder:
    """Records, during ``generate``, the residual stream entering layer ``layer`` from position ``keep_from`` on,
    and the raw logits (the output projection's output) of every step, up to ``logit_rows`` steps.

    The prompt's positions come from the prefill step, each answer token's from its decode step. Any
    other feeding pattern (beams, assisted decoding re-running positions) marks the record unusable,
    and the scorer falls back to running the suffix through every layer (and the output projection).
    """

    layer: int
    keep_from: int
    logit_rows: int = 0
    steps: list[torch.Tensor] = field(default_factory=list)
    seen: int = 0
    usable: bool = True
    logit_calls: int = 0
    logits_usable: bool = True
    _logits: torch.Tensor | None = None

    def add(self, hidden: torch.Tensor) -> None:
        if hidden.shape[0] != 1:
            self.usable = False
            return
        start, n = self.seen, hidden.shape[1]
        self.seen += n
        if start + n <= self.keep_from:
            return
        cut = max(0, self.keep_from - start)
        # Only the anchor's tail of a long prefill is kept (a copy, so the prefill's tensor can be freed).
        self.steps.append(hidden[:, cut:].detach().clone() if cut or n > 1 else hidden.detach())

    def add_logits(self, raw: torch.Tensor) -> None:
        """One generation step's raw logits ``(1, n, V)``: the prefill's last position, then one per step."""
        step, self.logit_calls = self.logit_calls, self.logit_calls + 1
        if raw.shape[0] != 1 or (step and raw.shape[1] != 1):
            self.logits_usable = False
        if not self.logits_usable or step >= self.logit_rows:
            return
        if self._logits is None:  # one buffer for every step: no per-step allocation, no final concat
            self._logits = raw.new_empty(1, self.logit_rows, raw.shape[-1])
        self._logits[:, step] = raw[:, -1].detach()

    def residuals(self, fed: int, length: int) -> torch.Tensor | None:
        """The first ``length`` recorded suffix positions, if exactly ``fed`` positions went through."""
        if not self.usable or self.seen != fed or not self.steps:
            return None
        states = torch.cat(self.steps, dim=1)
        return states[:, :length] if states.shape[1] >= length else None

    def logits(self, steps: int, length: int) -> torch.Tensor | None:
        """Raw logits of the first ``min(length, logit_rows)`` answer steps, ``(1, rows, V)``, if exactly
        ``steps`` generation steps ran one position each (else None: the scorer recomputes them)."""
        if not self.logits_usable or self.logit_calls != steps or self._logits is None:
            return None
        return self._logits[:, : min(length, self.logit_rows, steps)]


class ModelAdapter:
    """Finds the pieces of a Hugging Face causal LM the fast path needs, for any decoder-only architecture.

    Hooks are installed only while some thread is inside a scoring pass or a recorded generation
    (and are inert for every other thread), so a model that is not being scored runs exactly as a
    plain Hugging Face model: no hook is called per layer and step.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        config = model.config
        self.text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.base = _find_base_model(model)
        self.layers = _find_layers(self.base)
        self.num_layers = len(self.layers)
        out = model.get_output_embeddings()
        if out is None or not hasattr(out, "weight"):
            raise ModelError(f"{type(model).__name__} has no output projection (lm_head); is it a causal LM?")
        self.output_weight: torch.Tensor = out.weight
        self.softcap = getattr(self.text_config, "final_logit_softcapping", None)
        # Models that rescale logits after the projection (Cohere multiplies, Granite divides).
        self.logit_multiplier = float(getattr(self.text_config, "logit_scale", 1.0) or 1.0)
        granite = getattr(self.text_config, "logits_scaling", None)
        if granite:
            self.logit_multiplier /= float(granite)
        params = inspect.signature(self.base.forward).parameters
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._tls = threading.local()
        self._handles: list[Any] = []
        self._wrapped: list[tuple[nn.Module, Any, Any]] = []
        self._users = 0  # threads inside a pass that needs the hooks
        self._users_lock = threading.Lock()
        # Whether a batched backward (is_grads_batched) works through this model: None until tried.
        self.batched_grads: bool | None = None
        # Recording hooks, shared by the threads recording the same layer: key -> (handle, holders).
        self._recording: dict[object, tuple[Any, int]] = {}

    def _install(self) -> None:
        self._handles = [
            layer.register_forward_pre_hook(self._make_hook(i), with_kwargs=True)
            for i, layer in enumerate(self.layers)
        ]
        # Step 4 skips the layers below min(S): each layer's forward is wrapped (on the instance, so
        # the state dict and the class are untouched); the wrapper is inert outside a step-4 pass.
        self._wrapped = []
        for i, layer in enumerate(self.layers):
            had_own = "forward" in vars(layer)
            original = layer.forward
            wrapper = self._make_skipper(i, original)
            layer.forward = wrapper
            self._wrapped.append((layer, wrapper, original if had_own else None))

    @contextlib.contextmanager
    def hooked(self) -> Iterator[None]:
        """The layer hooks installed for the block (shared by concurrent blocks, removed by the last)."""
        with self._users_lock:
            if self._users == 0:
                self._install()
            self._users += 1
        try:
            yield
        finally:
            with self._users_lock:
                self._users -= 1
                if self._users == 0:
                    self._uninstall()

    # -- hooks -------------------------------------------------------------------------------------
    def _make_skipper(self, index: int, original: Any) -> Any:
        def forward(*args: Any, **kwargs: Any) -> Any:
            cap: _Capture | None = getattr(self._tls, "capture", None)
            if cap is not None and cap.residuals is not None and index < cap.grad_start:
                # Below min(S) with captured residuals: this layer's output is replaced anyway.
                return args[0] if args else kwargs["hidden_states"]
            if cap is not None and cap.checkpoint and index >= cap.grad_start:
                return _checkpointed(original, index, args, kwargs)
            return original(*args, **kwargs)

        return forward

    def _make_hook(self, index: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            cap: _Capture | None = getattr(self._tls, "capture", None)
            if cap is None:
                return None
            hidden = args[0] if args else kwargs["hidden_states"]
            if index == cap.grad_start:
                # From here on the pass records a graph; everything below stayed under no_grad.
                torch.set_grad_enabled(True)
                if cap.residuals is not None:
                    if cap.residuals.shape != hidden.shape:
                        raise ModelError(
                            f"captured residual states {tuple(cap.residuals.shape)} do not fit the suffix "
                            f"{tuple(hidden.shape)}; this is a bug in semgrad-guard's step-4 path"
                        )
                    hidden = cap.residuals.to(hidden.device)
                    cap.substituted = True
                hidden = hidden.detach().requires_grad_(True)
                if args:
                    args = (hidden, *args[1:])
                else:
                    kwargs = {**kwargs, "hidden_states": hidden}
            if index in cap.layers:
                cap.captured[index] = hidden
            return args, kwargs

        return hook

    def remove_hooks(self) -> None:
        """Remove the hooks now (they are installed again by the next pass that needs them)."""
        with self._users_lock:
            self._uninstall()
            for handle, _ in self._recording.values():
                handle.remove()
            self._recording = {}

    def _uninstall(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        for layer, wrapper, original in self._wrapped:
            if vars(layer).get("forward") is wrapper:  # not re-wrapped by someone else since
                if original is None:
                    del layer.forward
                else:
                    layer.forward = original
        self._wrapped = []

    @contextlib.contextmanager
    def recording(self, layer: int, keep_from: int, logit_rows: int = 0) -> Iterator[ResidualRecorder]:
        """Record the residual stream entering ``layer`` (positions >= ``keep_from``) on this thread, and
        the raw logits of the first ``logit_rows`` generation steps (:class:`ResidualRecorder`).

        Only two hooks run per step: a pre-hook on ``layer`` and a forward hook on the output
        projection; the scoring pass's hooks on every layer are not installed for generation.
        """
        rec = ResidualRecorder(layer=layer, keep_from=keep_from, logit_rows=max(0, int(logit_rows)))
        head = self.model.get_output_embeddings()
        with (
            self._shared_hook(("layer", layer), lambda: self._hook_layer(layer)),
            self._shared_hook("logits", lambda: head.register_forward_hook(self._record_logits)),
        ):
            self._tls.record = rec
            try:
                yield rec
            finally:
                self._tls.record = None

    @contextlib.contextmanager
    def not_recording(self) -> Iterator[None]:
        """A scoring pass inside a recorded generation on this thread (gate mode scores a sentence from
        a stopping criterion, between two decode steps) is not recorded as generation's residuals."""
        paused, self._tls.record = getattr(self._tls, "record", None), None
        try:
            yield
        finally:
            self._tls.record = paused

    def _hook_layer(self, index: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            rec: ResidualRecorder | None = getattr(self._tls, "record", None)
            if rec is not None and rec.layer == index:
                rec.add(args[0] if args else kwargs["hidden_states"])

        return self.layers[index].register_forward_pre_hook(hook, with_kwargs=True)

    def _record_logits(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        rec: ResidualRecorder | None = getattr(self._tls, "record", None)
        if rec is not None and isinstance(output, torch.Tensor) and output.dim() == 3:
            rec.add_logits(output)

    @contextlib.contextmanager
    def _shared_hook(self, key: object, install: Any) -> Iterator[None]:
        """A hook installed by the first block that needs it and removed by the last (``install()`` returns
        its handle)."""
        with self._users_lock:
            handle, holders = self._recording.get(key) or (None, 0)
            if handle is None:
                handle = install()
            self._recording[key] = (handle, holders + 1)
        try:
            yield
        finally:
            with self._users_lock:
                entry = self._recording.get(key)
                if entry is not None:  # None: remove_hooks() ran meanwhile
                    if entry[1] <= 1:
                        entry[0].remove()
                        del self._recording[key]
                    else:
                        self._recording[key] = (entry[0], entry[1] - 1)

    # -- passes ------------------------------------------------------------------------------------
    def run(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        cache: Any,
        capture: _Capture | None = None,
    ) -> tuple[torch.Tensor, Any]:
        """Run the decoder (no lm_head). Returns (final normed hidden states, cache)."""
        kwargs = {self.cache_kwarg: cache}
        self._tls.capture = capture
        try:
            # The prefix pass (no capture) needs no hooks: it runs as the plain model does.
            with (
                self.not_recording(),
                torch.no_grad(),
                self.hooked() if capture is not None else contextlib.nullcontext(),
            ):
                out = self.base(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    position_ids=position_ids,
                    use_cache=True,
                    **kwargs,
                )
        finally:
            self._tls.capture = None
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = getattr(out, "past_key_values", None)
        return out.last_hidden_state, new_cache

    def final_logits(self, raw: torch.Tensor) -> torch.Tensor:
        """Apply post-projection logit transforms (scale, soft-capping) to float32 raw logits."""
        z = raw
        if self.logit_multiplier != 1.0:
            z = z * self.logit_multiplier
        if self.softcap:
            z = torch.tanh(z / self.softcap) * self.softcap
        return z


def _checkpointed(original: Any, index: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """One decoder layer under activation checkpointing: only its inputs are saved, and the backward
    runs it again. The layer appends the suffix's keys and values to the KV cache; the rerun first
    puts that cache layer back as it was, so it appends the same ones again (the cache is
    :func:`restorable`, checked by the caller)."""
    cache = next((kwargs[k] for k in ("cache", "past_key_values", "past_key_value") if k in kwargs), None)
    held = getattr(cache, "layers", None)
    layer = held[index] if held is not None and index < len(held) else None
    state = dict(vars(layer)) if layer is not None else None

    def run(*a: Any, **k: Any) -> Any:
        if layer is not None and state is not None:
            vars(layer).update(state)
        return original(*a, **k)

    # Eval mode: nothing random to replay, so the RNG state is not saved.
    return torch.utils.checkpoint.checkpoint(
        run, *args, use_reentrant=False, preserve_rng_state=False, **kwargs
    )


def restorable(cache: Any) -> bool:
    """Whether every layer of a KV cache appends by concatenation (a rerun of a layer after putting its
    attributes back appends the same entries), as dynamic caches do; None: the model makes a dynamic one."""
    if cache is None:
        return True
    layers = getattr(cache, "layers", None)
    return layers is not None and all(
        type(layer).__name__ in ("DynamicLayer", "DynamicSlidingWindowLayer") for layer in layers
    )


def _find_base_model(model: nn.Module) -> nn.Module:
    for attr in ("model", "transformer", "language_model"):
        sub = getattr(model, attr, None)
        if isinstance(sub, nn.Module):
            if hasattr(sub, "layers") or hasattr(sub, "h"):
                return sub
            inner = getattr(sub, "language_model", None)
            if isinstance(inner, nn.Module):
                return inner
    raise ModelError(
        f"cannot find the decoder stack of {type(model).__name__}: expected a causal LM with "
        "`.model.layers` (Llama, Qwen, Gemma, Mistral, Phi-3 and most decoder-only models)"
    )


def _find_layers(base: nn.Module) -> nn.ModuleList:
    for attr in ("layers", "h"):
        layers = getattr(base, attr, None)
        if isinstance(layers, nn.ModuleList):
            return layers
    raise ModelError(f"cannot find the decoder layers of {type(base).__name__}")


def crop_cache(cache: Any, length: int) -> bool:
    """Crop a dynamic KV cache to its first ``length`` positions in place. False if it cannot be done safely."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        return False
    for layer in layers:
        kind = type(layer).__name__
        if kind == "DynamicSlidingWindowLayer":
            # Safe while the window has dropped nothing (every position since the start is still held).
            keys = getattr(layer, "keys", None)
            held = 0 if keys is None or not getattr(layer, "is_initialized", True) else keys.shape[-2]
            if held != getattr(layer, "cumulative_length", -1):
                return False
        elif kind != "DynamicLayer":
            return False  # quantized or static layers transform or pre-allocate positions
    for layer in layers:
        if getattr(layer, "is_initialized", True) and getattr(layer, "keys", None) is not None:
            layer.keys = layer.keys[..., :length, :]
            layer.values = layer.values[..., :length, :]
            if hasattr(layer, "cumulative_length"):
                layer.cumulative_length = layer.keys.shape[-2]
    return bool(cache.get_seq_length() == length)


LOGIT_CHUNK = 1 << 23
"""Logit entries (rows x vocabulary) held at once while scoring: 32 MiB per float32 tensor, and at most
about four such tensors are alive (docs/method.md, "Memory"). The answer's positions are processed in
chunks of ``LOGIT_CHUNK // vocabulary`` rows, so no vocabulary-sized tensor grows with the answer."""


VOCAB_CHUNK = 2048
"""Vocabulary rows of dL/dW_out reduced at once for exgrad: a (2048 x d) float32 block stays in cache;
8,192 rows were about 30% slower on CPU at 40-token answers (benchmarks/results/scoring_cpu.md)."""


_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "kib": 2**10,
    "m": 10**6,
    "mb": 10**6,
    "mib": 2**20,
    "g": 10**9,
    "gb": 10**9,
    "gib": 2**30,
    "t": 10**12,
    "tb": 10**12,
    "tib": 2**40,
}


def parse_bytes(value: int | str, what: str = "memory") -> int:
    """Bytes from an int or a string such as ``"4GB"``, ``"512 MiB"``, ``"1.5g"`` (decimal and binary units)."""
    if isinstance(value, bool):
        raise ConfigurationError(f"{what} must be a number of bytes or a string like '4GB', got {value!r}")
    if isinstance(value, int):
        n = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
        unit = m.group(2).lower() if m else ""
        if m is None or unit not in _UNITS:
            raise ConfigurationError(
                f"{what} must be a number of bytes or a string like '4GB' or '512MiB', got {value!r}"
            )
        n = float(m.group(1)) * _UNITS[unit]
    if not math.isfinite(n) or n <= 0:
        raise ConfigurationError(f"{what} must be positive, got {value!r}")
    return int(n)


CHECKPOINT_BYTES = 256 * 2**20
"""Above this estimated autograd graph (the layers from min(S) up over the suffix), a scoring pass
checkpoints each of those layers: the graph then holds each layer's input and one layer's activations
at a time, for one more forward pass through the upper layers (docs/method.md, "Memory")."""


def _graph_bytes(adapter: ModelAdapter, suffix: int, grad_start: int, batch: int) -> tuple[int, int]:
    """(all layers' saved activations, one layer's plus every layer's input) over ``suffix`` positions."""
    cfg = adapter.text_config
    esize = adapter.output_weight.element_size()
    d = adapter.output_weight.shape[1]
    m = int(getattr(cfg, "intermediate_size", None) or 4 * d)
    heads = int(getattr(cfg, "num_attention_heads", None) or 1)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or d // heads)
    graph_layers = adapter.num_layers - grad_start
    # The saved activations of a pre-norm decoder layer with some margin (measured against RSS growth
    # in ``benchmarks/bench_scoring.py --memory``).
    per_position = (16 * d + 6 * m + 4 * (heads + 2 * kv_heads) * head_dim) * esize
    full = graph_layers * per_position * suffix * batch
    # Checkpointed: each layer's input (and its output, the next one's input, while it is rerun), and
    # the rerun layer's activations twice (its recomputed forward and its backward's buffers: one
    # layer's worth fell short of RSS growth at 4,000 tokens, 1,800 MiB measured).
    checkpointed = 2 * (graph_layers * d * esize + per_position) * suffix * batch
    return full, checkpointed


def checkpoints(adapter: ModelAdapter, suffix: int, grad_start: int, batch: int = 1) -> bool:
    """Whether a scoring pass over ``suffix`` positions checkpoints its layers (:data:`CHECKPOINT_BYTES`)."""
    return _graph_bytes(adapter, suffix, grad_start, batch)[0] > CHECKPOINT_BYTES


def memory_estimate(
    adapter: ModelAdapter,
    *,
    prompt_tokens: int,
    answer_tokens: int,
    anchor_offset: int,
    layers: list[int],
    batch: int = 1,
    logit_chunk: int = LOGIT_CHUNK,
    vocab_chunk: int = VOCAB_CHUNK,
) -> int:
    """Bytes a :func:`score_ids` pass allocates above the loaded model, from the model's shapes.

    A fixed vocabulary term (four float32 tensors of ``logit_chunk`` entries, the exgrad buffer and
    the logits generation recorded) plus terms linear in length: the KV cache over every position,
    and the autograd graph of the layers from ``min(layers)`` up over the suffix (``|anchor_offset| +
    answer - 1`` positions), checkpointed above :data:`CHECKPOINT_BYTES` (each layer's input and one
    layer's activations); and one layer's attention scores (suffix x every position x heads,
    float32) held in the backward. The per-position coefficients are the saved activations of a
    pre-norm decoder layer with some margin (measured against RSS growth in
    ``benchmarks/bench_scoring.py --memory``).
    """
    cfg = adapter.text_config
    esize = adapter.output_weight.element_size()
    V, d = adapter.output_weight.shape
    heads = int(getattr(cfg, "num_attention_heads", None) or 1)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or d // heads)
    n_layers = adapter.num_layers
    B = max(1, batch)
    suffix = max(1, -anchor_offset + answer_tokens - 1)
    total = prompt_tokens + answer_tokens
    rows = B * max(1, answer_tokens)
    full, checkpointed = _graph_bytes(adapter, suffix, min(layers), B)
    # + generation's recorded raw logits (at most one chunk's entries, the model's dtype)
    vocab = 4 * min(logit_chunk, rows * V) * 4 + B * min(vocab_chunk, V) * d * 4
    vocab += min(logit_chunk, rows * V) * esize
    kv = 2 * n_layers * kv_heads * head_dim * esize * total * B
    graph = checkpointed if full > CHECKPOINT_BYTES else full
    grads = (len(layers) + 4) * d * 4 * suffix * B  # dL/dh per scored layer, H, dL/dH
    # One layer's attention scores at a time in the backward (float32, every head): the only term
    # that grows with length squared, measured at 0.6 GB for 4,000 answer tokens on the embedded model.
    attention = heads * suffix * total * 4 * B
    return int(vocab + kv + graph + grads + attention + 64 * 2**20)  # + allocator slack


class _LogitHeads:
    """The answer's vocabulary-sized work, in chunks of positions: logits, entropy, nll and dL/dlogits.

    The loss ``sum_t e_t nll_t / T`` (entropy ``e_t`` a constant weight) has the closed-form gradient
    ``dL/dz_t = e_t / T (softmax(z_t) - onehot(y_t))``, so the logits need no autograd graph: each chunk
    gives its rows of dL/dH = dL/draw W, and the chunk's tensors are freed before the next one.

    exgrad = mean |sum_t G_t H_t^T| sums over every position inside the absolute value. When the answer
    fits one chunk its G is kept and reduced in vocabulary chunks; otherwise G is recomputed one
    vocabulary slice at a time (for all positions) from the stored log-normalisers, one extra lm_head
    product that bounds the memory.
    """

    def __init__(
        self,
        adapter: ModelAdapter,
        H: torch.Tensor,
        targets: torch.Tensor,
        valid: torch.Tensor,
        T: torch.Tensor,
        logit_chunk: int,
        given: torch.Tensor | None = None,
    ) -> None:
        self.adapter, self.H, self.targets, self.given = adapter, H, targets, given
        W = adapter.output_weight.detach()
        self.W = W
        B, Tmax = targets.shape
        V = W.shape[0]
        self.logit_chunk = max(1, int(logit_chunk))
        step = max(1, self.logit_chunk // (B * V))
        self.entropy = torch.zeros(B, Tmax, dtype=torch.float32, device=H.device)
        self.nll = torch.zeros_like(self.entropy)
        self.lse = torch.zeros_like(self.entropy)
        self.grad_hidden = torch.empty_like(H)
        self.G: torch.Tensor | None = None  # (B, Tmax, V), kept when one chunk holds the whole answer
        for t0 in range(0, Tmax, step):
            t1 = min(Tmax, t0 + step)
            z = adapter.final_logits(self._raw(t0, t1))
            lse = torch.logsumexp(z, dim=-1)
            logp = z - lse.unsqueeze(-1)
            y = targets[:, t0:t1].unsqueeze(-1)
            ok = valid[:, t0:t1]
            nll = torch.where(ok, -logp.gather(-1, y).squeeze(-1), 0.0)
            p = logp.exp()
            entropy = torch.where(ok, -logp.mul_(p).sum(-1), 0.0)
            del logp
            w = entropy / T.unsqueeze(-1)
            # G = w (p - onehot(y)) dz/draw, built in p's storage.
            G = p.mul_(w.unsqueeze(-1)).scatter_add_(-1, y, -w.unsqueeze(-1))
            self._chain(G, z)
            self.grad_hidden[:, t0:t1] = G.to(W.dtype) @ W
            self.entropy[:, t0:t1], self.nll[:, t0:t1], self.lse[:, t0:t1] = entropy, nll, lse
            if t0 == 0 and t1 == Tmax:
                self.G = G
        self.weight = self.entropy / T.unsqueeze(-1)

    def _raw(self, t0: int, t1: int) -> torch.Tensor:
        """Raw float32 logits of answer steps ``t0 .. t1``: generation's where it recorded them (the same
        product of the same states), the output projection's for the rest."""
        have = 0 if self.given is None else min(t1, self.given.shape[1])
        if self.given is not None and have >= t1:
            return self.given[:, t0:t1].float()
        rest = torch.nn.functional.linear(self.H[:, max(t0, have) : t1], self.W).float()
        if self.given is not None and have > t0:
            return torch.cat([self.given[:, t0:have].float(), rest], dim=1)
        return rest

    def _chain(self, G: torch.Tensor, z: torch.Tensor) -> None:
        """dL/draw from dL/dz in place, through the model's logit scale and soft-capping."""
        a = self.adapter
        if a.softcap:  # z = c tanh(m raw / c): dz/draw = m (1 - (z / c)^2)
            G.mul_(z.div(a.softcap).square_().neg_().add_(1.0))
        if a.logit_multiplier != 1.0:
            G.mul_(a.logit_multiplier)

    def _slices(self, vocab_chunk: int) -> Iterator[torch.Tensor]:
        """dL/draw one vocabulary slice at a time, (B, Tmax, slice), every position."""
        V = self.W.shape[0]
        if self.G is not None:
            for v0 in range(0, V, vocab_chunk):
                yield self.G[:, :, v0 : v0 + vocab_chunk]
            return
        B, Tmax = self.targets.shape
        width = max(1, min(vocab_chunk, self.logit_chunk // (B * Tmax)))
        w = self.weight.unsqueeze(-1)
        for v0 in range(0, V, width):
            rows = self.W[v0 : v0 + width]
            z = self.adapter.final_logits(torch.nn.functional.linear(self.H, rows).float())
            G = (z - self.lse.unsqueeze(-1)).exp_().mul_(w)
            inside = (self.targets >= v0) & (self.targets < v0 + rows.shape[0])
            idx = (self.targets - v0).clamp_(0, rows.shape[0] - 1).unsqueeze(-1)
            G.scatter_add_(-1, idx, torch.where(inside.unsqueeze(-1), -w, 0.0))
            self._chain(G, z)
            yield G

    def exgrad(
        self, vocab_chunk: int, spans: Sequence[tuple[int, int, int]] = ()
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """mean |dL/dW_out| through the logits per example, never materialising dL/dW_out; and the same
        for each span ``(example, t0, t1)``'s loss (its rows of G rescaled from 1/T to 1/(t1 - t0))."""
        Hf = self.H.float()
        B, V, d = Hf.shape[0], self.W.shape[0], Hf.shape[-1]
        ex = torch.zeros(B, dtype=torch.float32, device=Hf.device)
        span_ex = torch.zeros(len(spans), dtype=torch.float32, device=Hf.device)
        buf: torch.Tensor | None = None
        for G in self._slices(vocab_chunk):
            # One buffer for every chunk, |.| in place: an allocation and a copy per chunk cost as much
            # as the matrix product itself at short answers (measured on CPU).
            if buf is None or buf.shape[1] != G.shape[-1]:
                buf = torch.empty(B, G.shape[-1], d, dtype=torch.float32, device=Hf.device)
            # (B, chunk, T) @ (B, T, d): one chunk of dL/dW_out per example.
            torch.bmm(G.transpose(1, 2), Hf, out=buf)
            ex += buf.abs_().sum((1, 2))
            for j, (i, t0, t1) in enumerate(spans):
                # The span's rows alone: its chunk of dL_span/dW_out, up to the factor T / (t1 - t0).
                torch.mm(G[i, t0:t1].T, Hf[i, t0:t1], out=buf[0])
                span_ex[j] += buf[0].abs_().sum()
        return ex / (V * d), span_ex / (V * d)


def score_ids(
    adapter: ModelAdapter,
    examples: list[ScoringInput],
    *,
    anchor_offset: int,
    layers: list[int],
    vocab_chunk: int = VOCAB_CHUNK,
    logit_chunk: int = LOGIT_CHUNK,
    prefix_cache: Any = None,
    window: bool = False,
    residuals: torch.Tensor | None = None,
    spans: Sequence[Sequence[tuple[int, int]] | None] | None = None,
    logits: torch.Tensor | None = None,
    checkpoint: bool | None = None,
) -> list[RawScores]:
    """Score a batch of examples with the fast path. ``prefix_cache`` (batch of one only) is a KV cache
    that already holds exactly the prefix ``x[:a]`` (from generation).

    ``residuals`` (step 4; with ``prefix_cache``, batch of one) are the residual states entering layer
    ``min(layers)`` at the suffix positions, shape ``(1, |offset| + T - 1, d)``, recorded during
    generation (:meth:`ModelAdapter.recording`): the layers below ``min(layers)`` then do not run again.
    ``logits`` (batch of one) are generation's raw logits of the first answer steps, ``(1, rows, V)``
    with ``rows <= len(answer)``: the output projection's forward pass is not run again for them.

    ``window=True`` also returns the SemGrad of every prompt position from the anchor to the end of
    the prompt (offsets ``anchor_offset .. -1``) per layer: the suffix already holds them, so one pass
    gives every candidate anchor of a profile search.

    ``spans[i]`` (optional, per example) are answer-token ranges ``(t0, t1)``; each gets the scores of
    its own loss ``sum_{t0 <= t < t1} H_t nll_t / (t1 - t0)`` from the same pass: the backward through
    the upper layers runs once for the answer and its spans together (a batched vector-Jacobian
    product), and exgrad reuses the answer's dL/dlogits.

    ``checkpoint``: recompute the layers from ``min(layers)`` up in the backward instead of keeping
    their activations (default: when the graph would exceed :data:`CHECKPOINT_BYTES`, and the KV
    cache is a dynamic one); the scores are the same."""
    device = adapter.output_weight.device
    if device.type == "meta":
        raise ModelError(
            "the output projection (lm_head) is offloaded: its weight is on the meta device, and the fast "
            "path reads it directly; keep it on a device, e.g. device_map={..., 'lm_head': 'cpu'}"
        )
    grad_start = min(layers)
    k = -anchor_offset  # prompt tokens inside the suffix
    anchors = [len(e.prompt_ids) + anchor_offset for e in examples]
    suffixes = [e.prompt_ids[a:] + e.answer_ids[:-1] for e, a in zip(examples, anchors, strict=True)]
    lengths_t = [len(e.answer_ids) for e in examples]
    B = len(examples)
    P = max(anchors)
    S = max(len(s) for s in suffixes)
    pad_id = 0

    padded = any(a != P for a in anchors)
    mask: torch.Tensor | None = None
    if padded:
        mask = torch.ones(B, P + S, dtype=torch.long, device=device)
        for i, a in enumerate(anchors):
            mask[i, : P - a] = 0

    cache = prefix_cache
    if cache is None and P > 0:
        ids = torch.full((B, P), pad_id, dtype=torch.long, device=device)
        pos = torch.zeros(B, P, dtype=torch.long, device=device)
        for i, (e, a) in enumerate(zip(examples, anchors, strict=True)):
            if a:
                ids[i, P - a :] = torch.tensor(e.prompt_ids[:a], device=device)
                pos[i, P - a :] = torch.arange(a, device=device)
        _, cache = adapter.run(
            ids, attention_mask=None if mask is None else mask[:, :P], position_ids=pos, cache=None
        )

    ids = torch.full((B, S), pad_id, dtype=torch.long, device=device)
    pos = torch.zeros(B, S, dtype=torch.long, device=device)
    for i, (s, a) in enumerate(zip(suffixes, anchors, strict=True)):
        ids[i, : len(s)] = torch.tensor(s, device=device)
        pos[i] = torch.arange(a, a + S, device=device)
    if residuals is not None and (prefix_cache is None or B != 1 or residuals.shape[:2] != (1, S)):
        raise ModelError(
            f"residuals of shape {tuple(residuals.shape)} need a prefix cache and one example whose "
            f"suffix has {S} positions"
        )
    if checkpoint is None:
        checkpoint = checkpoints(adapter, S, grad_start, B)
    capture = _Capture(
        grad_start=grad_start,
        layers=frozenset(layers),
        residuals=residuals,
        checkpoint=checkpoint and restorable(cache),
    )
    hidden, _ = adapter.run(ids, attention_mask=mask, position_ids=pos, cache=cache, capture=capture)
    if residuals is not None and not capture.substituted:
        raise ModelError("the captured residual states were not used: the decoder layers' hooks did not run")

    if not hidden.requires_grad:
        raise ModelError("the gradient pass did not record a graph: the decoder layers' hooks did not run")
    Tmax = max(lengths_t)
    # Final hidden states at the positions that predict y_0 .. y_{T-1}.
    H = hidden[:, k - 1 : k - 1 + Tmax]
    targets = torch.zeros(B, Tmax, dtype=torch.long, device=device)
    valid = torch.zeros(B, Tmax, dtype=torch.bool, device=device)
    for i, e in enumerate(examples):
        targets[i, : lengths_t[i]] = torch.tensor(e.answer_ids, device=device)
        valid[i, : lengths_t[i]] = True
    T = torch.tensor(lengths_t, dtype=torch.float32, device=device)
    if logits is not None and (
        B != 1 or logits.shape[1] > Tmax or logits.shape[-1] != adapter.output_weight.shape[0]
    ):
        raise ModelError(
            f"generation's logits of shape {tuple(logits.shape)} do not fit one answer of {Tmax} tokens"
        )
    heads = _LogitHeads(adapter, H.detach(), targets, valid, T, logit_chunk, logits)
    inputs = [capture.captured[layer] for layer in layers]
    flat = _flat_spans(spans, lengths_t)
    if flat:
        # Span j's loss is the answer's restricted to its rows, rescaled from 1/T to 1/T_j (the
        # entropy weights are constants), so its dL/dH is rows of the answer's, times T / T_j.
        slots_n = 1 + max(sum(1 for f in flat if f[0] == i) for i in range(B))
        outputs = torch.zeros(slots_n, *heads.grad_hidden.shape, dtype=heads.grad_hidden.dtype, device=device)
        outputs[0] = heads.grad_hidden
        slot = [0] * B
        where = []
        for i, t0, t1 in flat:
            slot[i] += 1
            outputs[slot[i], i, t0:t1] = heads.grad_hidden[i, t0:t1] * (lengths_t[i] / (t1 - t0))
            where.append(slot[i])
        batched = _batched_grad(adapter, H, inputs, outputs)
        hidden_grads = tuple(g[0] for g in batched)
    else:
        with torch.enable_grad():
            # dL/dH from the closed form, so no vocabulary-sized graph is ever recorded.
            hidden_grads = torch.autograd.grad(H, inputs, grad_outputs=heads.grad_hidden)
    entropy, nll = heads.entropy, heads.nll

    d = hidden_grads[0].shape[-1]
    # suffix position 0 is the anchor in every row; semgrad is the mean over the profile's layers
    per_layer = torch.stack([g[:, 0].float().abs().sum(-1) / d for g in hidden_grads], dim=1)  # (B, L)
    sem = per_layer.mean(1)
    win: list[list[list[float]]] = [[] for _ in range(B)]
    if window:
        w = torch.stack([g[:, :k].float().abs().sum(-1) / d for g in hidden_grads], dim=2)  # (B, k, L)
        win = w.cpu().tolist()
    ex, span_ex = heads.exgrad(vocab_chunk, flat)

    mean_entropy = entropy.sum(-1) / T
    alpha = torch.exp(-mean_entropy)
    hybrid = alpha * ex + (1 - alpha) * sem
    nll_sum = nll.sum(-1)
    values = torch.stack([sem, ex, hybrid, nll_sum, nll_sum / T, mean_entropy], dim=1).cpu()
    span_raw: list[list[RawSpan] | None] = [None] * B
    if spans is not None:
        span_raw = [[] if s is not None else None for s in spans]
    if flat:
        rows = torch.tensor([f[0] for f in flat], device=device)
        slots = torch.tensor(where, device=device)
        scale = torch.tensor([lengths_t[i] / (t1 - t0) for i, t0, t1 in flat], device=device)
        counts = torch.tensor([float(t1 - t0) for _, t0, t1 in flat], device=device)
        # (layers, spans): each span's anchor gradient, mean |.| over the hidden size
        span_sem = torch.stack([g[slots, rows, 0].float().abs().sum(-1) / d for g in batched]).mean(0)
        span_exg = span_ex * scale
        ent_sum = torch.stack([entropy[i, t0:t1].sum() for i, t0, t1 in flat])
        nll_span = torch.stack([nll[i, t0:t1].sum() for i, t0, t1 in flat])
        span_me = ent_sum / counts
        span_alpha = torch.exp(-span_me)
        span_values = torch.stack(
            [span_sem, span_exg, span_alpha * span_exg + (1 - span_alpha) * span_sem, nll_span,
             nll_span / counts, span_me],
            dim=1,
        ).cpu()  # fmt: skip
        for j, (i, t0, t1) in enumerate(flat):
            if not torch.isfinite(span_values[j]).all():
                values[i, 0] = float("nan")  # reported below, with the example's index
            sg, ex_j, hy, n_j, mn, me = (float(v) for v in span_values[j])
            target = span_raw[i]
            assert target is not None
            target.append(RawSpan(t0, t1, sg, ex_j, hy, n_j, mn, me))
    if not torch.isfinite(values).all():
        bad = [i for i in range(B) if not torch.isfinite(values[i]).all()]
        raise NonFiniteGradientError(
            f"non-finite loss or gradient for example(s) {bad} of the batch; no score is returned "
            "(check the model's dtype: fp16 overflows are the usual cause; try dtype=torch.bfloat16 or float32)"
        )
    out = []
    for i, e in enumerate(examples):
        sg, ex_i, hy, n, mn, me = (float(v) for v in values[i])
        out.append(
            RawScores(
                semgrad=sg,
                exgrad=ex_i,
                hybridgrad=hy,
                nll=n,
                mean_nll=mn,
                mean_entropy=me,
                answer_tokens=lengths_t[i],
                prompt_tokens=len(e.prompt_ids),
                layer_semgrad=per_layer[i].tolist(),
                window_semgrad=win[i],
                spans=span_raw[i],
            )
        )
    return out


def _flat_spans(
    spans: Sequence[Sequence[tuple[int, int]] | None] | None, lengths: list[int]
) -> list[tuple[int, int, int]]:
    """``(example, t0, t1)`` for every span of every example, checked against its answer's length."""
    if spans is None:
        return []
    if len(spans) != len(lengths):
        raise ModelError(f"spans for {len(spans)} examples, but {len(lengths)} examples to score")
    flat = []
    for i, ranges in enumerate(spans):
        for t0, t1 in ranges or ():
            if not 0 <= t0 < t1 <= lengths[i]:
                raise ModelError(
                    f"token span ({t0}, {t1}) is not inside example {i}'s {lengths[i]} answer tokens"
                )
            flat.append((i, int(t0), int(t1)))
    return flat


def _batched_grad(
    adapter: ModelAdapter, H: torch.Tensor, inputs: list[torch.Tensor], outputs: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """The vector-Jacobian products of ``H`` w.r.t. ``inputs`` for each ``outputs[k]``, stacked.

    One batched backward (``is_grads_batched``, vmap over the graph) where the model's backward ops
    support it, else one backward per row on the retained graph; which one works is found once per model.
    """
    with torch.enable_grad():
        if adapter.batched_grads is not False:
            try:
                grads = torch.autograd.grad(
                    H, inputs, grad_outputs=outputs, is_grads_batched=True, retain_graph=True
                )
                adapter.batched_grads = True
                return grads
            except RuntimeError:
                if adapter.batched_grads:
                    raise  # it worked for this model before: a real failure
                adapter.batched_grads = False  # an op without a batching rule: loop instead
        rows = [
            torch.autograd.grad(H, inputs, grad_outputs=outputs[k], retain_graph=k + 1 < len(outputs))
            for k in range(len(outputs))
        ]
    return tuple(torch.stack([r[n] for r in rows]) for n in range(len(inputs)))


EXGRAD_MODES: tuple[str, ...] = ("logits", "weight")
"""``logits``: dL/dW_out through the logits only. ``weight``: the autograd gradient of the lm_head
weight parameter, as the research code takes it (for tied embeddings this adds the input-embedding path)."""


def embeddings_are_tied(model: Any) -> bool:
    """True when the output projection shares its weight matrix with the input embeddings."""
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    if inp is None or out is None:
        return False
    return bool(inp.weight is out.weight or inp.weight.data_ptr() == out.weight.data_ptr())


def exgrad_weight(
    adapter: ModelAdapter,
    example: ScoringInput,
    *,
    vocab_chunk: int = 8192,
    span: tuple[int, int] | None = None,
) -> float:
    """exgrad as the research code computes it: mean |d L / d lm_head.weight| over all its entries.

    For an untied model this equals the logits-path exgrad of :func:`score_ids`. For a tied model the
    shared matrix also receives dL/d(input embedding) of every token of the sequence (prompt and
    answer, the embedding's padding row excepted), so the whole sequence runs forward and backward
    from the embeddings. Absolute values are summed in float64 (a float32 sum over tens of millions
    of entries under-counts by a few per cent). ``span = (t0, t1)``: the same for that span's loss.
    """
    model = adapter.model
    device = adapter.output_weight.device
    x, y = example.prompt_ids, example.answer_ids
    ids = torch.tensor([x + y[:-1]], device=device)
    T = len(y)
    embedding = model.get_input_embeddings()
    with torch.no_grad():
        embeds = embedding(ids)
        # Some models scale inside the embedding module (Gemma: sqrt(d)); the lookup is linear in the
        # weight, so dL/dE[row] is that scale times the sum of dL/d(embeds) over the row's positions.
        scale = float(getattr(embedding, "embed_scale", 1.0))
        if not torch.allclose(embeds, embedding.weight[ids] * scale, rtol=1e-4, atol=1e-6):
            raise ModelError(
                f"exgrad_mode='weight' does not know the input embedding {type(embedding).__name__} of "
                f"{type(model).__name__} (not a scaled lookup); use exgrad_mode='logits'"
            )
    # A leaf of its own: gradients flow to it, never into the parameters.
    embeds = embeds.detach().requires_grad_(True)
    with torch.enable_grad(), adapter.not_recording():
        out = adapter.base(
            inputs_embeds=embeds,
            position_ids=torch.arange(ids.shape[1], device=device)[None],
            use_cache=False,
        )
        H = out.last_hidden_state[0, len(x) - 1 : len(x) - 1 + T]
        W = adapter.output_weight.detach()
        raw = torch.nn.functional.linear(H, W).float()
        logp = torch.log_softmax(adapter.final_logits(raw), dim=-1)
        entropy = -(logp.exp() * logp).sum(-1).detach()
        nll = -logp.gather(-1, torch.tensor(y, device=device)[:, None]).squeeze(-1)
        t0, t1 = span or (0, T)
        loss = (entropy * nll)[t0:t1].sum() / (t1 - t0)
        G, dE = torch.autograd.grad(loss, [raw, embeds])
    Hf = H.detach().float()
    V, d = G.shape[-1], Hf.shape[-1]
    tied = embeddings_are_tied(model)
    rows = ids[0]
    emb_grad = dE[0].float() * scale
    pad = getattr(embedding, "padding_idx", None)
    if pad is not None:  # nn.Embedding gives its padding row no gradient
        keep = rows != pad
        rows, emb_grad = rows[keep], emb_grad[keep]
    total = torch.zeros((), dtype=torch.float64, device=device)
    for v0 in range(0, V, vocab_chunk):
        block = G[:, v0 : v0 + vocab_chunk].T @ Hf  # (chunk, d): this chunk of dL/dW through the logits
        if tied:
            in_chunk = (rows >= v0) & (rows < v0 + block.shape[0])
            if in_chunk.any():
                block = block.index_add(0, rows[in_chunk] - v0, emb_grad[in_chunk])
        total += block.double().abs().sum()
    value = float(total / (V * d))
    if not math.isfinite(value):
        raise NonFiniteGradientError("non-finite gradient of the output weight (exgrad_mode='weight')")
    return value
