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

    python benchmarks/bench_scoring.py                  # CPU, embedded model
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
from pathlib import Path

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
    print(
        json.dumps(
            {"answer_tokens": r.answer_tokens, "peak": p.peak, "seconds": p.seconds, "estimate": estimate}
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
                continue  # grew by ~1.4 MiB per token: 8,000 tokens would take the shared machine down
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
        "| answer tok | before MiB | after MiB | estimate MiB | after s |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in (r for r in rows if r["version"] == "after"):
        b = before.get(r["answer_tokens"], {})
        lines.append(
            f"| {r['answer_tokens']} | {mib(b.get('peak')) or '-'} | {mib(r['peak'])} | "
            f"{mib(r['estimate'])} | {float(r['seconds']):.1f} |"  # type: ignore[arg-type]
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
    scorer: SemGradScorer, plain: torch.nn.Module, target: int, repeats: int, device: str, full_run: bool
) -> tuple[int, int, dict[str, float], dict[str, int]]:
    """Time every path for one prompt length; interleaved rounds after a warm-up.

    ``plain`` is a copy of the model made before any scorer saw it: no hook was ever registered on it.
    """
    model = scorer.model
    delays: list[float] = []

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
        # Generation as `scorer.generate` runs it (hooks installed, residuals recorded), no scoring.
        a = len(x) + scorer.profile.anchor_offset
        with torch.no_grad(), scorer.adapter.recording(min(scorer.profile.layers), keep_from=a):
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **gen_kwargs)

    paths = {
        "generate": generate,
        "gen+hooks": generate_hooked,
        "generate+score": lambda: scorer.generate(
            chat, max_new_tokens=ANSWER_TOKENS, min_new_tokens=ANSWER_TOKENS
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
    print(
        f"prompt {len(x)} tokens, answer {len(y)} tokens: "
        + ", ".join(f"{k} {v:.3f}s" for k, v in med.items())
    )
    return len(x), len(y), med, peaks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--random-llama-8b", action="store_true", help="random weights with Llama-3.1-8B's shape, bf16"
    )
    ap.add_argument("--prompts", default=None, help="default 100,1000 on CPU, 256,2048 on GPU")
    ap.add_argument("--answer-tokens", type=int, default=None, help="default 40 on CPU, 64 on GPU")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--full", action="store_true", help="also time the reference, forward and stream")
    ap.add_argument("--memory", default=None, help="answer lengths for the memory table, e.g. 250,1000")
    ap.add_argument("--before", type=Path, default=None, help="a checkout of the code before, for --memory")
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.memory_child is not None:
        memory_child(args.memory_child)
        return
    gpu = args.device.startswith("cuda")
    args.prompts = args.prompts or ("256,2048" if gpu else "100,1000")
    global ANSWER_TOKENS
    ANSWER_TOKENS = args.answer_tokens or (64 if gpu else 40)
    load = [f"{v:.2f}" for v in os.getloadavg()]

    if args.random_llama_8b:
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
        with torch.device(args.device):
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()
        plain = copy.deepcopy(model)  # before any scorer sees `model`: never hooked
        scorer = SemGradScorer(model, tok, model_id="random-llama-3.1-8b-shape")
        name = "random-weight model with Llama-3.1-8B's shape, bf16"
    else:
        from semgrad_guard.scoring.loading import load_model_and_tokenizer

        # The baseline: a second, separately loaded copy that no scorer ever wraps.
        plain = load_model_and_tokenizer("default", device=args.device)[0].eval()
        scorer = SemGradScorer.from_pretrained("default", device=args.device)
        name = f"{scorer.model_id} (float32)"
    device = args.device
    rows = []
    for target in [int(v) for v in args.prompts.split(",")]:
        rows.append(bench_prompt(scorer, plain, target, args.repeats, device, args.full))
    del plain
    # After the timings, in subprocesses of their own: a long answer's peak does not disturb them.
    mem_rows = bench_memory([int(v) for v in args.memory.split(",")], args.before) if args.memory else []
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
        if device.startswith("cuda")
        else f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    )
    when = dt.datetime.now(dt.timezone.utc)
    lines = [
        f"# SemGrad scoring cost: {name}",
        "",
        f"Machine: {machine}; torch {torch.__version__}; {platform.platform()}.",
        f"Run {when:%Y-%m-%d %H:%M} UTC. Load average (1, 5, 15 min) at the start {' / '.join(load)}, at the "
        f"end {' / '.join(f'{v:.2f}' for v in os.getloadavg())}.",
        f"Profile: anchor_offset={scorer.profile.anchor_offset}, layers={scorer.profile.layers[0]}.."
        f"{scorer.profile.layers[-1]} ({len(scorer.profile.layers)} of {scorer.adapter.num_layers}).",
        f"Median of {args.repeats} interleaved rounds after a warm-up; {ANSWER_TOKENS}-token answers.",
        "",
        "`plain`: greedy generation on a separately loaded copy of the model that no scorer ever wrapped",
        "(no hooks). `hooked`: the same generation on the scorer's model with its hooks installed and the",
        "residual stream recorded, as `scorer.generate` does, without scoring. `gen+sc`: `scorer.generate`",
        "(generation and scoring). `score`: `scorer.score` on text. `floor`: one forward pass without",
        "gradients, logits only at the answer's positions. `hook x` = hooked / plain, `g+s x` = gen+sc /",
        "plain, `sc/fl` = score / floor; `x`, `y`: prompt and answer tokens. Times in seconds.",
        "",
        "| x | y | plain | hooked | gen+sc | score | floor | hook x | g+s x | sc/fl |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for nx, ny, med, _ in rows:
        lines.append(
            f"| {nx} | {ny} | {med['generate']:.3f} | {med['gen+hooks']:.3f} | {med['generate+score']:.3f} | "
            f"{med['score(text)']:.3f} | {med['forward(ans)']:.3f} | "
            f"{med['gen+hooks'] / med['generate']:.3f} | {med['generate+score'] / med['generate']:.3f} | "
            f"{med['score(text)'] / med['forward(ans)']:.2f} |"
        )
    lines += [
        "",
        "Peak memory of the same paths (MiB): rise of peak RSS above the loaded models (CPU), or the peak",
        "CUDA allocation (GPU).",
        "",
        "| x tok | plain | hooked | gen+sc | score | floor |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for nx, _, _, peaks in rows:
        lines.append(
            f"| {nx} | "
            + " | ".join(
                f"{peaks[k] / 2**20:.0f}"
                for k in ("generate", "gen+hooks", "generate+score", "score(text)", "forward(ans)")
            )
            + " |"
        )
    if args.full:
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
    if mem_rows:
        lines += [
            "",
            "Peak memory of `scorer.score` against answer length (RSS growth in a fresh subprocess per",
            "length, 1 thread, the embedded model, a one-line question). `before`: the code before chunking",
            f"({args.before}); `estimate`: `scorer.estimate_memory`, which the `max_memory` budget checks.",
            "",
            *memory_table(mem_rows),
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = args.out or ROOT / "benchmarks" / "results" / (
        "scoring_gpu.md" if device.startswith("cuda") else "scoring_cpu.md"
    )
    out.write_text(text)
    (out.with_suffix(".json")).write_text(
        json.dumps({"rows": [list(r) for r in rows], "memory": mem_rows, "load_start": load}, indent=1) + "\n"
    )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
