"""One table across models: accuracy, AUROC of each single score, and seconds per answer, per dev set.

Reads the rows ``benchmarks/devsets/collect.py`` wrote (``results/devsets/*.jsonl`` for the embedded
model, ``results/devsets/<registry name>/*.jsonl`` for the others); needs no model. SemGrad is shown
at the default rule (anchor -3, upper half of the layers) and at the best cell of the sweep (chosen
on the same rows: optimistic, a ceiling, not a held-out number). AUROC is for detecting wrong answers
(higher score = less trustworthy); "-" where a set has only one class.

Usage: python benchmarks/bench_models.py [--out benchmarks/results/models.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.devsets.devdata import DEVSETS, NAMES, OFFSETS, load  # noqa: E402
from semgrad_guard.eval.metrics import auroc  # noqa: E402
from semgrad_guard.eval.profile_search import layer_bands  # noqa: E402

MODELS = {
    "SmolLM2-135M": DEVSETS,
    "Qwen-0.5B": DEVSETS / "qwen2.5-coder-0.5b",
    "Qwen-1.5B": DEVSETS / "qwen2.5-coder-1.5b",
}
SINGLE = ("nll", "mean_nll", "mean_entropy", "exgrad_logits")


def _auroc(scores: np.ndarray, errors: np.ndarray) -> str:
    if errors.all() or not errors.any():
        return "-"
    return f"{auroc(scores, errors):.2f}"


def rows_for(label: str, folder: Path) -> list[str]:
    names = tuple(n for n in NAMES if (folder / f"{n}.jsonl").exists())
    if not names:
        return [f"| {label} | not run | | | | | | | | |"]
    out = []
    for name in names:
        d = load((name,), folder)
        errors = ~d.correct
        n_layers = d.window.shape[2]
        default = d.window[:, OFFSETS.index(-3), layer_bands(n_layers)["upper half"]].mean(axis=1)
        cells = (
            [
                (auroc(d.window[:, j, ls].mean(axis=1), errors), o, b)
                for j, o in enumerate(OFFSETS)
                for b, ls in layer_bands(n_layers).items()
            ]
            if errors.any() and not errors.all()
            else []
        )
        best = f"{max(cells)[0]:.2f}" if cells else "-"
        singles = [_auroc(np.asarray([r[k] for r in d.rows], float), errors) for k in SINGLE]
        gen = [r["generate_s"] for r in d.rows if "generate_s" in r]
        sc = [r["window_score_s"] for r in d.rows if "window_score_s" in r]
        secs = f"{np.mean(gen):.1f}+{np.mean(sc):.1f}" if gen else "-"
        out.append(
            f"| {label} | {name} | {len(d)} | {d.correct.mean():.2f} | "
            + " | ".join(singles)
            + f" | {_auroc(default, errors)} | {best} | {secs} |"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    lines = [
        "| model | set | n | acc | nll | mnll | ment | exgr | sg-3 | sg* | s/ans |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for label, folder in MODELS.items():
        lines += rows_for(label, folder)
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
