"""Cost of SemGrad scoring against generation, a plain forward pass and the reference implementation.

Measures, in one process on one machine, for prompts of about 100 and 1,000 tokens and 40-token answers:
  generate        greedy generation of the answer alone
  generate+score  `scorer.generate` (scores from generation's KV cache)
  score(text)     `scorer.score` on text (the path a callback uses)
  reference       full-sequence forward with all hidden states + autograd (tests/reference_semgrad.py)
  forward         one plain forward pass without gradients over prompt + answer, logits for every position
  forward(ans)    the same, logits only where the answer needs them (`logits_to_keep`): the fair floor
  stream          `scorer.stream` (what ChatSemGrad / SemGradLLM stream through); its `delay` is the time
                  from the last text chunk to the scored final chunk
Times are medians over --repeats interleaved rounds; peak memory is the rise of the process's peak RSS
(VmHWM, reset before each path) above the loaded model, on CPU, or torch's peak allocation on CUDA.

    python benchmarks/bench_scoring.py                  # CPU: the embedded model and Qwen2.5-Coder-0.5B,
                                                        # memory against answer length (< 10 min quiet)
    python benchmarks/bench_scoring.py --profile        # torch.profiler's top entries of the scoring pass
    python benchmarks/bench_scoring.py --device cuda --random-llama-8b   # GPU mode: bf16, prompts 256 and
                                                                         # 2,048, answers of 64 tokens
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import ctypes.util
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from reference_semgrad import reference_scores  # noqa: E402

from semgrad_guard import SemGradScorer  # noqa: E402

# /work/shared next to the main checkout, or two levels up from a worktree (/work/wt/<name>).
SCIQ = next(
    (p / "shared" / "data" / "sciq" / "test.jsonl" for p in ROOT.parents if (p / "shared" / "data").is_dir()),
    ROOT.parent / "shared" / "data" / "sciq" / "test.jsonl",
)
ANSWER_TOKENS = 40  # CPU; --answer-tokens (64 on GPU)


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


class Peak:
    """Peak memory of a block: VmHWM reset via /proc/self/clear_refs on CPU, torch's counter on CUDA."""

    def __init__(self, device: str) -> None:
        self.device = device

    def __enter__(self) -> Peak:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            _LIBC.malloc_trim(0)  # hand freed heap back, so the next path's peak is its own
            Path("/proc/self/clear_refs").write_text("5")
            self.base = rss_kib("VmRSS") * 1024
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.peak = rss_kib("VmHWM") * 1024 - self.base
        self.seconds = time.perf_counter() - self.t0


def memory_child(answer_tokens: int) -> None:
    """Print, as JSON, the peak RSS growth of scoring one answer of ``answer_tokens`` tokens (run in a
    fresh process per length, so one length's heap does not hide the next one's)."""
    torch.set_num_threads(1)
    params = SemGradScorer.__init__.__code__.co_varnames  # the code before the budget had none
    scorer = SemGradScorer.from_pretrained(
        "default", **({"max_memory": None} if "max_memory" in params else {})
    )
    text = " ".join(json.loads(line)["query"] for line in SCIQ.read_text().splitlines())
    ids = scorer.tokenizer(text, add_special_tokens=False)["input_ids"][: answer_tokens - 1]
    answer = scorer.tokenizer.decode(ids)
    chat = [{"role": "user", "content": "Summarise what you know about science."}]
    scorer.score(chat, "A warm-up.")
    with Peak("cpu") as p:
        r = scorer.score(chat, answer)
    estimate = scorer.estimate_memory(r.prompt_tokens, r.answer_tokens) if "max_memory" in params else None
    try:
        from semgrad_guard.scoring.fastpath import checkpoints

        suffix = -scorer.profile.anchor_offset + r.answer_tokens - 1
        ckpt: bool | None = checkpoints(scorer.adapter, suffix, min(scorer.profile.layers))
    except ImportError:  # the code before checkpointing
        ckpt = None
    print(
        json.dumps(
            {
                "answer_tokens": r.answer_tokens,
                "peak": p.peak,
                "seconds": p.seconds,
                "estimate": estimate,
                "checkpointed": ckpt,
            }
        )
    )


def bench_memory(lengths: list[int], before: Path | None) -> list[dict[str, object]]:
    """Peak memory of `score` against answer length, one subprocess per length (and per code version)."""
    import subprocess

    rows: list[dict[str, object]] = []
    versions = [("after", ROOT)] + ([("before", before)] if before else [])
    for n in lengths:
        for label, root in versions:
            if label == "before" and n > 2000:
                continue  # grew by ~1.2 MiB per token: 8,000 tokens would take the shared machine down
            env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
            out = (
                subprocess.run(
                    [sys.executable, __file__, "--memory-child", str(n)],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            row = {"version": label, **json.loads(out)}
            print(row, flush=True)
            rows.append(row)
    return rows


def memory_table(rows: list[dict[str, object]]) -> list[str]:
    def mib(v: object) -> str:
        return "" if v is None else f"{float(v) / 2**20:,.0f}"  # type: ignore[arg-type]

    before = {r["answer_tokens"]: r for r in rows if r["version"] == "before"}
    lines = [
        "| answer tok | before MiB | after MiB | MiB/tok | estimate MiB | ckpt | after s |",
        "|---:|---:|---:|---:|---:|:---:|---:|",
    ]
    for r in (r for r in rows if r["version"] == "after"):
        b = before.get(r["answer_tokens"], {})
        per = float(r["peak"]) / 2**20 / int(r["answer_tokens"])  # type: ignore[arg-type]
        lines.append(
            f"| {r['answer_tokens']} | {mib(b.get('peak')) or '-'} | {mib(r['peak'])} | {per:.2f} | "
            f"{mib(r['estimate'])} | {'yes' if r.get('checkpointed') else 'no'} | "
            f"{float(r['seconds']):.1f} |"  # type: ignore[arg-type]
        )
    return lines


def make_prompt(scorer: SemGradScorer, target_tokens: int) -> list[dict[str, str]]:
    lines = [json.loads(line)["query"] for line in SCIQ.read_text().splitlines()[:400]]
    context, i = "", 0
    while (
        len(scorer.prompt_ids([{"role": "user", "content": context + "Question: Why is the sky blue?"}]))
        < target_tokens
    ):
        context += f"Document {i}: {lines[i]}\n"
        i += 1
    return [
        {"role": "user", "content": f"Use the documents to answer.\n{context}Question: Why is the sky blue?"}
    ]


def bench_prompt(
    scorer: SemGradScorer,
    plain: torch.nn.Module,
    target: int,
    repeats: int,
    device: str,
    full_run: bool,
    hooked: bool = True,
) -> tuple[int, int, dict[str, float], dict[str, int]]:
    """Time every path for one prompt length; interleaved rounds after a warm-up.

    ``plain`` is a copy of the model made before any scorer saw it: no hook was ever registered on it.
    """
    model = scorer.model
    delays: list[float] = []
    passes: list[float] = []

    def timed_pass(run: Callable[[], object]) -> None:
        """Run ``scorer.generate``, timing its scoring pass alone (``score_ids`` after generation): a
        short interval, so on a loaded machine 1 + pass / plain is a steadier ratio than gen+sc / plain."""
        import semgrad_guard.scoring.hf_scorer as hf

        original = hf.score_ids

        def score_ids(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                passes.append(time.perf_counter() - t0)

        with mock.patch.object(hf, "score_ids", score_ids):
            run()

    def stream() -> None:
        last_text = time.perf_counter()
        for chunk in scorer.stream(chat, max_new_tokens=ANSWER_TOKENS, min_new_tokens=ANSWER_TOKENS):
            now = time.perf_counter()
            if chunk.result is None:
                last_text = now
            else:
                delays.append(now - last_text)

    chat = make_prompt(scorer, target)
    x = scorer.prompt_ids(chat)
    ids = torch.tensor([x], device=device)
    gen_kwargs = dict(
        max_new_tokens=ANSWER_TOKENS,
        min_new_tokens=ANSWER_TOKENS,
        do_sample=False,
        eos_token_id=scorer.eos_token_ids,
        pad_token_id=scorer.eos_token_ids[0],
    )
    answer, _ = scorer.generate(
        chat, **{k: v for k, v in gen_kwargs.items() if k in ("max_new_tokens", "min_new_tokens")}
    )
    y = scorer.answer_ids(chat, answer, prompt_ids=x)
    full = torch.tensor([x + y], device=device)

    def generate() -> None:
        with torch.no_grad():
            plain.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **gen_kwargs)

    def generate_hooked() -> None:
        # Generation as `scorer.generate` runs it (hooks installed, residuals and logits recorded),
        # no scoring.
        a = len(x) + scorer.profile.anchor_offset
        rows = min(ANSWER_TOKENS, scorer.logit_chunk // scorer.adapter.output_weight.shape[0])
        with (
            torch.no_grad(),
            scorer.adapter.recording(min(scorer.profile.layers), keep_from=a, logit_rows=rows),
        ):
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **gen_kwargs)

    paths = {
        "generate": generate,
        "gen+hooks": generate_hooked,
        "generate+score": lambda: timed_pass(
            lambda: scorer.generate(chat, max_new_tokens=ANSWER_TOKENS, min_new_tokens=ANSWER_TOKENS)
        ),
        "score(text)": lambda: scorer.score(chat, answer),
        "reference": lambda: reference_scores(
            model, x, y, scorer.profile.anchor_offset, scorer.profile.layers
        ),
        "forward": lambda: torch.no_grad()(lambda: model(input_ids=full, use_cache=False))(),
        "forward(ans)": lambda: torch.no_grad()(
            lambda: model(input_ids=full, use_cache=False, logits_to_keep=len(y) + 1)
        )(),
        "stream": stream,
    }
    if not full_run:
        for k in ("reference", "forward", "stream"):
            del paths[k]
    if not hooked:  # the hooks' cost is the code's, measured on the first model only
        del paths["gen+hooks"]
    for fn in paths.values():  # warm-up
        fn()
    delays.clear()
    times: dict[str, list[float]] = {k: [] for k in paths}
    peaks: dict[str, int] = {k: 0 for k in paths}
    for _ in range(repeats):
        for k, fn in paths.items():
            with Peak(device) as p:
                fn()
            times[k].append(p.seconds)
            peaks[k] = max(peaks[k], p.peak)
    med = {k: statistics.median(v) for k, v in times.items()}
    med["delay"] = statistics.median(delays) if delays else float("nan")
    med["pass"] = statistics.median(passes[1:] or passes)  # the warm-up's pass left out
    med["pass_flop"], med["pass_flop_vocab"] = pass_flops(scorer, chat)
    print(
        f"prompt {len(x)} tokens, answer {len(y)} tokens: "
        + ", ".join(f"{k} {v:.3f}s" for k, v in med.items())
    )
    return len(x), len(y), med, peaks


def pass_flops(scorer: SemGradScorer, chat: list[dict[str, str]]) -> tuple[float, float]:
    """Floating-point operations of the scoring pass inside ``scorer.generate``, and the part of them in
    the vocabulary products: torch's FLOP formulas (``flop_registry``: matrix products and attention,
    forward and backward; attention as if not causal, an upper bound) over every op ``score_ids``
    dispatches. A dispatch mode of its own: FlopCounterMode's module tracker refuses
    ``autograd.grad`` with leaf inputs."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten
    # The CPU kernels of scaled_dot_product_attention, which torch's registry leaves out.
    cpu_attention = {
        aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *a, **kw: sdpa_flop_count(
            q.shape, k.shape, v.shape
        ),
        aten._scaled_dot_product_flash_attention_for_cpu_backward: lambda g, q, k, v, *a, **kw: (
            sdpa_backward_flop_count(g.shape, q.shape, k.shape, v.shape)
        ),
    }

    import semgrad_guard.scoring.fastpath as fp
    import semgrad_guard.scoring.hf_scorer as hf

    class Counting(TorchDispatchMode):
        total = 0
        vocab_work = 0  # inside _LogitHeads: dL/dH = G W_out (and any logits not reused), exgrad's G^T H
        in_heads = False

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            out = func(*args, **(kwargs or {}))
            formula = flop_registry.get(func._overloadpacket) or cpu_attention.get(func._overloadpacket)
            if formula is not None:
                flops = formula(*args, **(kwargs or {}), out_val=out)
                self.total += flops
                if self.in_heads:
                    self.vocab_work += flops
            return out

    original, counted = hf.score_ids, []
    counter = Counting()

    def in_heads(method: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            counter.in_heads = True
            try:
                return method(*args, **kwargs)
            finally:
                counter.in_heads = False

        return run

    def counting(*args: Any, **kwargs: Any) -> Any:
        with counter:
            out = original(*args, **kwargs)
        counted.append((counter.total, counter.vocab_work))
        return out

    with (
        mock.patch.object(hf, "score_ids", counting),
        mock.patch.object(fp._LogitHeads, "__init__", in_heads(fp._LogitHeads.__init__)),
        mock.patch.object(fp._LogitHeads, "exgrad", in_heads(fp._LogitHeads.exgrad)),
    ):
        scorer.generate(chat, max_new_tokens=ANSWER_TOKENS, min_new_tokens=ANSWER_TOKENS)
    return float(counted[0][0]), float(counted[0][1])


def gemm_rate(device: str, dtype: torch.dtype = torch.float32, seconds: float = 1.0) -> float:
    """FLOP/s of a large matrix product on this device and thread count: the arithmetic ceiling that
    ``pass_flops / gemm_rate`` turns into the fastest the pass could run."""
    a = torch.randn(1024, 1024, device=device, dtype=dtype)
    b = torch.randn(1024, 1024, device=device, dtype=dtype)
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = max(best, 4 * 2 * 1024**3 / (time.perf_counter() - t0))
    return best


def profile_scoring(scorer: SemGradScorer, targets: list[int], rows: int = 12) -> list[str]:
    """torch.profiler's top entries (self CPU time) of the scoring pass that follows ``generate``."""
    from torch.profiler import ProfilerActivity, profile

    import semgrad_guard.scoring.hf_scorer as hf

    original, on = hf.score_ids, {"now": False}
    lines: list[str] = []

    def profiled(*args: object, **kwargs: object) -> object:
        if not on["now"]:
            return original(*args, **kwargs)  # type: ignore[arg-type]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            out = original(*args, **kwargs)  # type: ignore[arg-type]
            seconds = time.perf_counter() - t0
        table = prof.key_averages().table(
            sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40
        )
        lines.extend([f"scoring pass after generate, {n_prompt} prompt tokens: {seconds:.3f} s", "", "```"])
        # Name, self CPU %, self CPU, calls: the columns that fit 80 characters.
        for row in table.splitlines():
            cells = [c for c in row.split("  ") if c.strip()]
            if len(cells) >= 7 and not set(row) <= set("- "):
                lines.append(
                    f"{cells[0].strip()[:40]:<40} {cells[1].strip():>8} {cells[2].strip():>11} {cells[-1].strip():>7}"
                )
        lines.extend(["```", ""])
        return out

    with mock.patch.object(hf, "score_ids", profiled):
        for target in targets:
            chat = make_prompt(scorer, target)
            n_prompt = len(scorer.prompt_ids(chat))
            scorer.generate(chat, max_new_tokens=ANSWER_TOKENS, min_new_tokens=ANSWER_TOKENS)  # warm-up
            on["now"] = True
            scorer.generate(chat, max_new_tokens=ANSWER_TOKENS, min_new_tokens=ANSWER_TOKENS)
            on["now"] = False
    return lines


def load_pair(name: str, device: str) -> tuple[SemGradScorer, torch.nn.Module, str]:
    """A scorer and, as the baseline, a separately loaded copy of the same model that no scorer wraps."""
    if name == "random-llama-8b":
        from transformers import AutoConfig, AutoModelForCausalLM

        from semgrad_guard.testing import tiny_tokenizer

        tok = tiny_tokenizer("llama")
        cfg = AutoConfig.for_model(
            "llama",
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128256,
            max_position_embeddings=131072,
            rope_theta=500000.0,
            tie_word_embeddings=False,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.eos_token_id,
        )
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()
        plain = copy.deepcopy(model)  # before any scorer sees `model`: never hooked
        scorer = SemGradScorer(model, tok, model_id="random-llama-3.1-8b-shape")
        return scorer, plain, "random-weight model with Llama-3.1-8B's shape, bf16"
    from semgrad_guard.scoring.loading import load_model_and_tokenizer

    plain = load_model_and_tokenizer(name, device=device)[0].eval()
    scorer = SemGradScorer.from_pretrained(name, device=device)
    return scorer, plain, f"{scorer.model_id} ({str(scorer.adapter.output_weight.dtype).split('.')[-1]})"


def timing_tables(name: str, scorer: SemGradScorer, rows: list, full: bool, rate: float) -> list[str]:
    hooked = "gen+hooks" in rows[0][2]
    lines = [
        f"### {name}",
        "",
        f"Profile: anchor_offset={scorer.profile.anchor_offset}, layers={scorer.profile.layers[0]}.."
        f"{scorer.profile.layers[-1]} ({len(scorer.profile.layers)} of {scorer.adapter.num_layers}).",
        "",
        "| x | y | plain | hooked | gen+sc | score | floor | hook x | g+s x | sc/fl |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for nx, ny, med, _ in rows:
        hk = f"{med['gen+hooks']:.3f}" if hooked else "-"
        hx = f"{med['gen+hooks'] / med['generate']:.3f}" if hooked else "-"
        lines.append(
            f"| {nx} | {ny} | {med['generate']:.3f} | {hk} | {med['generate+score']:.3f} | "
            f"{med['score(text)']:.3f} | {med['forward(ans)']:.3f} | {hx} | "
            f"{med['generate+score'] / med['generate']:.3f} | {med['score(text)'] / med['forward(ans)']:.2f} |"
        )
    lines += [
        "",
        "The scoring pass alone (timed inside `scorer.generate`), what it adds to plain generation, and",
        "its arithmetic: `GFLOP` counted with torch's FLOP formulas (matrix products and attention,",
        "forward and backward; attention as if not causal), `vocab`: the share of it in the vocabulary",
        "products (dL/dH = G W_out and exgrad's G^T H), `at peak s` = GFLOP / this",
        f"machine's GEMM rate ({rate / 1e9:.0f} GFLOP/s, a 1,024-square product, same threads and dtype),",
        "`pass / peak`: how far the pass is from that ceiling.",
        "",
        "| x tok | pass s | 1 + pass / plain | GFLOP | vocab | at peak s | pass / peak |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for nx, _, med, _ in rows:
        peak = med["pass_flop"] / rate
        lines.append(
            f"| {nx} | {med['pass']:.3f} | {1 + med['pass'] / med['generate']:.3f} | "
            f"{med['pass_flop'] / 1e9:.1f} | {med['pass_flop_vocab'] / med['pass_flop']:.0%} | "
            f"{peak:.3f} | {med['pass'] / peak:.2f} |"
        )
    keys = ("generate", "gen+hooks", "generate+score", "score(text)", "forward(ans)")
    lines += [
        "",
        "Peak memory of the same paths (MiB above the loaded models).",
        "",
        "| x tok | plain | hooked | gen+sc | score | floor |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for nx, _, _, peaks in rows:
        lines.append(
            f"| {nx} | " + " | ".join(f"{peaks[k] / 2**20:.0f}" if k in peaks else "-" for k in keys) + " |"
        )
    if full:
        lines += [
            "",
            "| x tok | reference | forward | stream | stream delay | reference / score |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for nx, _, med, _ in rows:
            lines.append(
                f"| {nx} | {med['reference']:.3f} | {med['forward']:.3f} | {med['stream']:.3f} | "
                f"{med['delay']:.3f} | {med['reference'] / med['score(text)']:.2f} |"
            )
    return [*lines, ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--random-llama-8b", action="store_true", help="random weights with Llama-3.1-8B's shape, bf16"
    )
    ap.add_argument(
        "--models",
        default=None,
        help="comma-separated (default: default,qwen2.5-coder-0.5b on CPU; random-llama-8b on GPU)",
    )
    ap.add_argument("--prompts", default=None, help="default 100,1000 on CPU, 256,2048 on GPU")
    ap.add_argument("--answer-tokens", type=int, default=None, help="default 40 on CPU, 64 on GPU")
    ap.add_argument("--repeats", type=int, default=5, help="rounds for the first model")
    ap.add_argument("--repeats-others", type=int, default=2, help="rounds for the other models")
    ap.add_argument("--full", action="store_true", help="also time the reference, forward and stream")
    ap.add_argument(
        "--memory",
        default="1000,8000",
        help="answer lengths for the memory table ('' for none); default up to the 8,192-token context",
    )
    ap.add_argument("--before", type=Path, default=None, help="a checkout of the code before, for --memory")
    ap.add_argument("--profile", action="store_true", help="only profile the scoring pass (first model)")
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.memory_child is not None:
        memory_child(args.memory_child)
        return
    started = time.perf_counter()
    gpu = args.device.startswith("cuda")
    args.prompts = args.prompts or ("256,2048" if gpu else "100,1000")
    global ANSWER_TOKENS
    ANSWER_TOKENS = args.answer_tokens or (64 if gpu else 40)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    load = [f"{v:.2f}" for v in os.getloadavg()]
    models = (
        args.models or ("random-llama-8b" if gpu or args.random_llama_8b else "default,qwen2.5-coder-0.5b")
    ).split(",")
    targets = [int(v) for v in args.prompts.split(",")]
    device = args.device
    if args.profile:
        scorer, plain, name = load_pair(models[0], device)
        del plain
        text = "\n".join([f"# Profile of the scoring pass: {name}", "", *profile_scoring(scorer, targets)])
        print(text)
        if args.out:
            args.out.write_text(text + "\n")
        return
    sections: list[str] = []
    results: dict[str, object] = {}
    for i, model_name in enumerate(models):
        scorer, plain, name = load_pair(model_name, device)
        repeats = args.repeats if i == 0 else args.repeats_others
        rows = [bench_prompt(scorer, plain, t, repeats, device, args.full, hooked=i == 0) for t in targets]
        rate = gemm_rate(device, scorer.adapter.output_weight.dtype)
        sections += timing_tables(f"{name}: median of {repeats} rounds", scorer, rows, args.full, rate)
        results[model_name] = {"rows": [list(r) for r in rows], "gemm_flops": rate}
        del plain, scorer
    # After the timings, in subprocesses of their own: a long answer's peak does not disturb them.
    lengths = [int(v) for v in args.memory.split(",") if v.strip()] if not gpu else []
    mem_rows = bench_memory(lengths, args.before) if lengths else []
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    machine = (
        torch.cuda.get_device_name()
        if gpu
        else f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    )
    when = dt.datetime.now(dt.timezone.utc)
    lines = [
        "# SemGrad scoring cost against a plain model" + (" (GPU)" if gpu else " (CPU)"),
        "",
        f"Machine: {machine}; torch {torch.__version__}; {platform.platform()}.",
        f"Run {when:%Y-%m-%d %H:%M} UTC, {time.perf_counter() - started:.0f} s. Load average (1, 5, 15",
        f"min) at the start {' / '.join(load)}, at the end {' / '.join(f'{v:.2f}' for v in os.getloadavg())}.",
        f"Medians of interleaved rounds after a warm-up; {ANSWER_TOKENS}-token answers. Regenerate:",
        "`python benchmarks/bench_scoring.py`" + (" --device cuda" if gpu else "") + ".",
        "",
        "`plain`: greedy generation on a separately loaded copy of the model that no scorer ever wrapped",
        "(no hooks). `hooked`: the same generation on the scorer's model with its recording hooks (the",
        "layer min(S) and lm_head), as `scorer.generate` runs it, without scoring. `gen+sc`:",
        "`scorer.generate` (generation and scoring). `score`: `scorer.score` on text. `floor`: one",
        "forward pass without gradients, logits only at the answer's positions. `hook x` = hooked /",
        "plain, `g+s x` = gen+sc / plain (targets: <= 1.08 at ~100 prompt tokens, <= 1.05 at ~1,000),",
        "`sc/fl` = score / floor; `x`, `y`: prompt and answer tokens. Times in seconds.",
        "",
        *sections,
    ]
    if mem_rows:
        lines += [
            "Peak memory of `scorer.score` against answer length (RSS growth in a fresh subprocess per",
            "length, 1 thread, the embedded model, a one-line question). `before`: the code at",
            f"{args.before or '--before (not run)'}; `estimate`: `scorer.estimate_memory`, which the",
            "`max_memory` budget checks; `ckpt`: the pass checkpointed the upper layers (graph over 256 MiB).",
            "",
            *memory_table(mem_rows),
            "",
        ]
    text = "\n".join(lines)
    print(text)
    out = args.out or ROOT / "benchmarks" / "results" / ("scoring_gpu.md" if gpu else "scoring_cpu.md")
    out.write_text(text)
    (out.with_suffix(".json")).write_text(
        json.dumps({"rows": results, "memory": mem_rows, "load_start": load}, indent=1) + "\n"
    )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
