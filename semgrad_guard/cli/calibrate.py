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

``--from-reviews DB`` recalibrates the current calibrator (``--base``, default the one shipped for
the labels' model) on the review queue's labels instead (see :mod:`semgrad_guard.guard.recalibrate`):
too few labels, or labels of another model or exgrad mode, exit 2 and write nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import CalibrationError, ConfigurationError
from ._rows import read_jsonl_rows, row_chat
from ._text import repeats_note
from ._threads import add_threads_argument

ANSWER_KEYS = ("references", "truthful answer", "answers")


def register(sub: Any) -> None:
    p = sub.add_parser("calibrate", help="fit a calibrator (scores -> P(correct)) on labelled data")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data",
        type=Path,
        help="JSONL: scores+correct, answers+correct, or questions+references",
    )
    source.add_argument(
        "--from-reviews",
        metavar="DB",
        help="recalibrate on the review queue's labels (decided items; audit items weighted); "
        "a SQLite path or a postgresql:// URL",
    )
    p.add_argument(
        "--base",
        default=None,
        help="with --from-reviews: the calibrator JSON to refit (default: the one shipped for the labels' model; "
        "'none': fit from the labels alone)",
    )
    p.add_argument(
        "--min-labels", type=int, default=10, help="with --from-reviews: fewest labels accepted (default 10)"
    )
    p.add_argument(
        "--policy",
        type=Path,
        default=None,
        help="with --from-reviews: report coverage and error among accepted under this policy",
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
            if isinstance(row.get("result"), dict):  # a row of 'review export --labels': the full result
                results[i] = ScoreResult.model_validate(row["result"])
                correct[i] = row["correct"]
                continue
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

    from ..guard.calibration import (
        Calibrator,
        cross_validated_confidence,
        expected_calibration_error,
        reliability_table,
    )
    from ..guard.risk import select_threshold

    if args.from_reviews is not None:
        return _from_reviews(args)
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
    console.print(_reliability(f"Reliability ({judged.split(' (')[0]})", reliability_table(oof, y)))
    sels = [select_threshold(oof, y, alpha=a, delta=args.delta, strict=False) for a in args.alphas]
    console.print(
        _thresholds(
            f"Risk-controlled thresholds (delta={args.delta}, on those confidences)", sels, args.alphas
        )
    )
    cal.save(args.out)
    console.print(f"wrote {args.out}: load it with Calibrator.load({str(args.out)!r})")
    return 0


def _from_reviews(args: argparse.Namespace) -> int:
    import numpy as np
    from rich.console import Console

    from ..errors import ReviewQueueError, ReviewQueueMissingError
    from ..guard.calibration import Calibrator
    from ..guard.policy import GuardPolicy
    from ..guard.recalibrate import recalibrate
    from ..review.labels import label_counts, labelled
    from ..review.queue import open_review_queue, review_db_name, warn_if_password_in_url

    warn_if_password_in_url(args.from_reviews, source="--from-reviews")
    try:
        queue: Any = open_review_queue(args.from_reviews, create=False)
    except ReviewQueueMissingError:
        raise ReviewQueueError(
            f"review database {review_db_name(args.from_reviews)} does not exist; give the queue's "
            "--from-reviews path or URL"
        ) from None
    with queue as q:
        labels = labelled(q)
        counts = label_counts(q)
    if args.base is None:
        models = {lab.result.model_id for lab in labels}
        model = next(iter(models)) if len(models) == 1 else None
        try:
            base = Calibrator.default_for(model) if model else None
        except ConfigurationError as e:
            raise ConfigurationError(
                f"no calibrator is shipped for {model}: pass --base FILE (the one the guard runs with), or "
                "--base none to fit one from the labels alone"
            ) from e
    elif args.base == "none":
        base = None
    else:
        base = Calibrator.load(args.base)
    rec = recalibrate(
        base,
        labels,
        min_labels=args.min_labels,
        alphas=args.alphas,
        delta=args.delta,
        source=review_db_name(args.from_reviews),
    )
    console = Console()
    console.print(
        f"{rec.n_labels} labels ({rec.n_audit} audit{repeats_note(counts.repeats)}; "
        f"{counts.cannot_tell} cannot tell, {counts.unscored} unscored "
        f"and {counts.pending} pending left out); weighted accuracy {rec.accuracy:.3f}"
    )
    tried = ", ".join(f"{k} {v:.4f}" for k, v in rec.cv_log_loss.items())
    console.print(f"chose [bold]{rec.chosen}[/] by {len(rec.cv_log_loss)}-way out-of-fold log-loss ({tried})")
    before = "-" if rec.ece_before is None else f"{rec.ece_before:.3f}"
    console.print(f"ECE (weighted, out-of-fold): before {before}, after {rec.ece_after:.3f}")
    console.print(_reliability("Reliability (out-of-fold)", rec.reliability()))
    console.print(
        _thresholds(
            f"Re-certified thresholds (delta={args.delta}, weighted labels)",
            rec.thresholds,
            [sel.alpha for sel in rec.thresholds],
        )
    )
    if args.policy is not None:
        policy = GuardPolicy.coerce(args.policy)
        actions = [
            policy.decide(lab.result, float(c)).action.value for lab, c in zip(labels, rec.oof, strict=True)
        ]
        acc = np.asarray([a in ("accept", "annotate") for a in actions])
        w, y = rec.weights, rec.correct
        cov = float(w[acc].sum() / w.sum())
        err = float(np.average(~y[acc], weights=w[acc])) if acc.any() else 0.0
        console.print(
            f"under {args.policy}: coverage {cov:.3f}, error among accepted {err:.3f} (weighted, out-of-fold)"
        )
    rec.calibrator.save(args.out)
    console.print(
        f"wrote {args.out} (version {rec.calibrator.fingerprint}); reload a running service with "
        f"POST /admin/calibrator or kill -HUP its pid"
    )
    return 0


def _reliability(title: str, rows: Any) -> Any:
    """A reliability table: per confidence bin, its answers, mean confidence and accuracy."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("confidence bin", "answers", "mean confidence", "accuracy"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            f"[{r['low']:.1f}, {r['high']:.1f})",
            str(r["n"]),
            f"{r['confidence']:.3f}",
            f"{r['accuracy']:.3f}",
        )
    return table


def _thresholds(title: str, selections: Any, alphas: Any) -> Any:
    """Certified thresholds, one row per alpha ("none" where no threshold meets it)."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("alpha", "threshold", "coverage", "error among accepted"):
        table.add_column(col, justify="right")
    for a, sel in zip(alphas, selections, strict=True):
        if sel.feasible and sel.threshold is not None:
            table.add_row(f"{a}", f"{sel.threshold:.3f}", f"{sel.coverage:.3f}", f"{sel.empirical_error:.3f}")
        else:
            table.add_row(f"{a}", "none", "0", "-")
    return table
