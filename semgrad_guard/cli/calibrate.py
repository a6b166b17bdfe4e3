"""``semgrad-guard calibrate``: fit a calibrator on your own labelled data in one command.

Input rows (JSONL), any of three kinds, mixed freely:

- scores already computed: the six score fields (``semgrad`` ... ``mean_entropy``) and ``correct``;
  no model is loaded;
- answers with labels: ``messages`` (or ``question``), ``answer``, ``correct``: scored with ``--model``;
- questions with references: ``question`` and ``references`` (or ``truthful answer`` / ``answers``),
  no ``answer``: answered greedily with ``--model`` and labelled by the eval harness's ``--rule``.

An optional ``group`` (or ``dataset``) field names each row's source; with two or more groups the
features are chosen leaving one group out at a time. Prints the cross-validated choice, the
out-of-fold ECE and reliability table (the calibrator judged on answers it was not fitted on) and
the risk-controlled thresholds for ``--alphas``; writes the calibrator JSON the Guard loads.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import CalibrationError, ConfigurationError
from ._rows import read_jsonl_rows, row_chat
from ._threads import add_threads_argument

ANSWER_KEYS = ("references", "truthful answer", "answers")


def register(sub: Any) -> None:
    p = sub.add_parser("calibrate", help="fit a calibrator (scores -> P(correct)) on labelled data")
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help="JSONL: scores+correct, answers+correct, or questions+references",
    )
    p.add_argument("--out", type=Path, default=Path("calibrator.json"), help="where to write it")
    p.add_argument(
        "--model", default="default", help="model for rows that need scoring ('default', a dir, a hub id)"
    )
    p.add_argument("--profile", type=Path, default=None, help="profile JSON to score with")
    p.add_argument("--system-prompt", default=None, help="system prompt for rows given as 'question'")
    p.add_argument("--user-template", default="{question}", help="user message template with {question}")
    p.add_argument("--rule", default="contains", help="correctness rule for questions+references rows")
    p.add_argument("--threshold", type=float, default=None, help="threshold of --rule (default: the rule's)")
    p.add_argument(
        "--max-new-tokens", type=int, default=32, help="answer length for questions+references rows"
    )
    p.add_argument("--method", default="auto", choices=["auto", "isotonic", "platt"])
    p.add_argument("--features", default="auto", help="'auto' or comma-separated score fields")
    p.add_argument("--alphas", type=float, nargs="+", default=[0.1, 0.2, 0.3], help="target error rates")
    p.add_argument("--delta", type=float, default=0.1, help="allowed failure probability of the bound")
    p.add_argument("--folds", type=int, default=5)
    add_threads_argument(p)
    p.set_defaults(func=_calibrate)


def _messages(row: dict[str, Any], args: argparse.Namespace) -> Any:
    chat = row_chat(row, args.system_prompt, args.user_template)
    if chat is None:
        raise ConfigurationError(f"--data line {row['_line']}: no 'messages' or 'question'")
    return chat


def _labelled_results(rows: list[dict[str, Any]], args: argparse.Namespace) -> tuple[list[Any], list[bool]]:
    from ..results import SCORE_FIELDS, ScoreResult

    results: list[Any] = [None] * len(rows)
    correct: list[bool | None] = [None] * len(rows)
    to_score, to_answer = [], []
    for i, row in enumerate(rows):
        if all(f in row for f in SCORE_FIELDS):
            if not isinstance(row.get("correct"), bool):
                raise ConfigurationError(f"--data line {row['_line']}: 'correct' must be true or false")
            scores: dict[str, Any] = {f: float(row[f]) for f in SCORE_FIELDS}
            results[i] = ScoreResult(
                **scores,
                answer_tokens=int(row.get("answer_tokens", 1)),
                anchor_offset=int(row.get("anchor_offset", -1)),
                layers=list(row.get("layers", [0])),
                model_id=row.get("model_id"),
            )
            correct[i] = row["correct"]
        elif "answer" in row:
            if not isinstance(row.get("correct"), bool):
                raise ConfigurationError(f"--data line {row['_line']}: 'correct' must be true or false")
            to_score.append(i)
        elif any(k in row for k in ANSWER_KEYS):
            to_answer.append(i)
        else:
            raise ConfigurationError(
                f"--data line {row['_line']}: give scores + 'correct', 'answer' + 'correct', or 'references'"
            )
    _check_enough(
        rows, to_answer
    )  # before any model loads: scoring 4 rows to be told 10 are needed helps nobody
    if to_score or to_answer:
        from rich.progress import Progress

        from ..eval.correctness import check_rule, is_correct, rule_values
        from ..scoring.hf_scorer import SemGradScorer

        threshold = check_rule(args.rule, args.threshold) if to_answer else 0.0
        scorer = SemGradScorer.from_pretrained(args.model, profile=args.profile)
        with Progress() as bar:
            task = bar.add_task("scoring", total=len(to_score) + len(to_answer))
            for i in to_score:
                results[i] = scorer.score(_messages(rows[i], args), rows[i]["answer"])
                correct[i] = rows[i]["correct"]
                bar.advance(task)
            for i in to_answer:
                refs = next(rows[i][k] for k in ANSWER_KEYS if k in rows[i])
                refs = [refs] if isinstance(refs, str) else list(refs)
                answer, results[i] = scorer.generate(
                    _messages(rows[i], args), max_new_tokens=args.max_new_tokens
                )
                values = rule_values(answer, refs, with_embedding=args.rule == "embedding")
                correct[i] = is_correct(values, args.rule, threshold)
                bar.advance(task)
    return results, [bool(c) for c in correct]


def _check_enough(rows: list[dict[str, Any]], to_answer: list[int]) -> None:
    """Fail on too few rows, or (where every label is known) too few of a class, as ``Calibrator.fit`` would."""
    from ..guard.calibration import MIN_EXAMPLES

    n_correct = sum(1 for r in rows if r.get("correct") is True)
    n_wrong = sum(1 for r in rows if r.get("correct") is False)
    if len(rows) < MIN_EXAMPLES or (not to_answer and min(n_correct, n_wrong) < 2):
        raise CalibrationError(
            f"--data has {len(rows)} rows ({n_correct} correct, {n_wrong} incorrect): a calibrator needs at "
            f"least {MIN_EXAMPLES} labelled examples with at least 2 correct and 2 incorrect; add rows"
        )


def _calibrate(args: argparse.Namespace) -> int:
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from ..guard.calibration import (
        Calibrator,
        cross_validated_confidence,
        expected_calibration_error,
        reliability_table,
    )
    from ..guard.risk import select_threshold

    rows = read_jsonl_rows(args.data, "--data")
    results, correct = _labelled_results(rows, args)
    groups = [str(r.get("group", r.get("dataset", ""))) for r in rows]
    groups_arg = groups if len(set(groups)) >= 2 else None
    features: Any = "auto" if args.features == "auto" else [f.strip() for f in args.features.split(",")]
    fit_kwargs = dict(method=args.method, features=features, folds=args.folds)
    cal = Calibrator.fit(
        results, correct, groups=groups_arg, data=f"{args.data.name}: {len(rows)} rows", **fit_kwargs
    )
    # Judge it on answers it was not fitted on: out-of-fold confidences with the chosen method/features.
    y = np.asarray(correct)
    console = Console()
    try:
        oof = cross_validated_confidence(
            results, correct, folds=args.folds, method=cal.method, features=cal.features
        )
        judged = "out-of-fold"
    except CalibrationError:
        oof = cal.predict(results, check=False)
        judged = "on its own fitting data (too few answers per fold for out-of-fold numbers: optimistic)"
    console.print(
        f"calibrator: {cal.method} on {'+'.join(cal.features)} ({cal.cv_scheme or 'as given'}); {len(y)} answers, "
        f"accuracy {y.mean():.3f}; ECE {judged}: {expected_calibration_error(oof, y):.3f}"
    )
    table = Table(title=f"Reliability ({judged.split(' (')[0]})")
    for col in ("confidence bin", "answers", "mean confidence", "accuracy"):
        table.add_column(col, justify="right")
    for r in reliability_table(oof, y):
        table.add_row(
            f"[{r['low']:.1f}, {r['high']:.1f})",
            str(r["n"]),
            f"{r['confidence']:.3f}",
            f"{r['accuracy']:.3f}",
        )
    console.print(table)
    table = Table(title=f"Risk-controlled thresholds (delta={args.delta}, on those confidences)")
    for col in ("alpha", "threshold", "coverage", "error among accepted"):
        table.add_column(col, justify="right")
    for a in args.alphas:
        sel = select_threshold(oof, y, alpha=a, delta=args.delta, strict=False)
        if sel.feasible and sel.threshold is not None:
            table.add_row(f"{a}", f"{sel.threshold:.3f}", f"{sel.coverage:.3f}", f"{sel.empirical_error:.3f}")
        else:
            table.add_row(f"{a}", "none", "0", "-")
    console.print(table)
    cal.save(args.out)
    console.print(f"wrote {args.out}: load it with Calibrator.load({str(args.out)!r})")
    return 0
