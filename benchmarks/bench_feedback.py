"""The feedback loop on each development set held out in turn: review labels -> recalibration.

For each development set H (``benchmarks/results/devsets``, no model needed) the base calibrator is
fitted on the *other two* sets (what a user of the shipped calibrator faces on data it never saw).
H's answers are its development rows plus its rows in ``devsets/pool`` (the same questions' source,
answered by the same model, used by no shipped fit; ``--no-pool``: development rows only): at 200
answers the ECE estimator's own noise (~0.05) is near the 0.06 target, at 600 it is ~0.03.
Each random order splits H into ``--folds`` folds (4, stratified by label) and runs the loop once per
fold, with the other folds as the deployment's traffic and the fold as the answers it is judged on,
so every answer's confidence comes from a loop that never labelled it (cross-fitting; the folds'
confidences are pooled into one ECE over all of H). Four folds, not two: the queue judges each
answer once, so 200 reviews need more than 200 distinct answers in the traffic (rag's half holds 200).

The loop is the running guard's: traffic draws answers from the other folds at random (with
replacement: traffic repeats questions, and greedy decoding repeats answers); the README policy
(``cookbook/policies/default.yaml``) plus ``audit: {rate}`` routes each one with the *current*
calibrator: the review band is queued (inclusion probability 1), a random ``rate`` share of the rest
is audited (probability ``rate``). Reviewers answer from H's labels; an answer already judged is
decided by the queue on arrival, as the review queue does (a repeat: a label, not a review). Every
``--refit-every`` reviews (a person's decisions, as the guard counts them) and at each checkpoint ``recalibrate`` (the code ``calibrate --from-reviews`` and ``review:
{refit_every}`` run) refits the base on all labels so far and the result is swapped in, so later
routing uses it; a refused refit keeps the current calibrator, as the service does.

After 10, 20, 50, 100 and 200 reviews, on the answers never labelled: ECE (10 equal-width bins) with
its noise floor (the ECE of a perfectly calibrated predictor with the same confidences: labels drawn
from them, same n and bins), coverage and error among accepted under the policy, and for each alpha
whether the threshold ``select_threshold`` certified on the labels has a realised error above alpha.
Intervals: 10th-90th percentile over ``--orders`` random orders.

The bias of unaudited labels: at 200 reviews, the same refit on review-band labels only (no audit)
and on the audited labels without their weights.

One refit, no swap (the README's three commands: serve with the shipped calibrator and audit, review,
``calibrate --from-reviews`` once): the same orders with every label routed by the base calibrator,
and each checkpoint's calibrator the refit on the labels so far.

Usage: python benchmarks/bench_feedback.py [--orders 20] [--audit-rate 0.1] [--refit-every 50] [--folds 4]
       [--jobs N] [--no-pool]
Writes ``benchmarks/results/feedback.md``, ``feedback.json`` and ``feedback_ece.png``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from scipy.stats import binom

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.devsets.devdata import DEVSETS, NAMES, load  # noqa: E402
from semgrad_guard import Calibrator, GuardPolicy  # noqa: E402
from semgrad_guard.errors import SemGradGuardError  # noqa: E402
from semgrad_guard.guard.calibration import expected_calibration_error  # noqa: E402
from semgrad_guard.guard.recalibrate import Recalibration, recalibrate  # noqa: E402
from semgrad_guard.review.labels import LabelledExample  # noqa: E402

OUT = ROOT / "benchmarks" / "results"
PROFILE = json.loads((ROOT / "semgrad_guard" / "profiles" / "smollm2-135m-instruct.json").read_text())
POLICY = ROOT / "cookbook" / "policies" / "default.yaml"
CHECKPOINTS = (10, 20, 50, 100, 200)
ALPHAS = (0.4, 0.5, 0.6)  # the model is wrong on most answers: lower targets cannot be certified here
DELTA = 0.1
BINS = 10
FLOOR_DRAWS = 200


def noise_floor(conf: np.ndarray, rng: np.random.Generator, draws: int = FLOOR_DRAWS) -> float:
    """Median ECE of a perfectly calibrated predictor giving ``conf``: labels drawn as Bernoulli(conf).

    What the estimator reads at this n and binning when the calibration error is zero.
    """
    y = rng.random((draws, len(conf))) < conf
    idx = np.minimum((conf * BINS).astype(int), BINS - 1)
    ece = np.zeros(draws)
    for b in np.unique(idx):
        m = idx == b
        ece += m.sum() / len(conf) * np.abs(y[:, m].mean(axis=1) - conf[m].mean())
    return float(np.median(ece))


def _accepted(policy: GuardPolicy, conf: np.ndarray, results) -> np.ndarray:
    return np.asarray(
        [
            policy.decide(r, float(c)).action.value in ("accept", "annotate")
            for r, c in zip(results, conf, strict=True)
        ]
    )


def _actions(policy: GuardPolicy, cal: Calibrator, results) -> list[str]:
    conf = cal.predict(results, check=False)
    return [policy.decide(r, float(c)).action.value for r, c in zip(results, conf, strict=True)]


def _refit(base: Calibrator, labels: list[LabelledExample]) -> Recalibration | None:
    try:
        return recalibrate(base, labels, alphas=ALPHAS, delta=DELTA)
    except SemGradGuardError:  # e.g. all ten labels right: the refusal a user sees too
        return None


def one_loop(
    stream: np.ndarray,
    res_h: list,
    y_h: np.ndarray,
    base: Calibrator,
    policy: GuardPolicy,
    rate: float,
    refit_every: int,
    rng: np.random.Generator,
    swap: bool = True,
) -> dict:
    """The loop on traffic drawn from ``stream`` (indices into the held-out set); per checkpoint,
    the calibrator running then (and the thresholds its refit certified). ``swap=False``: refits
    are not swapped in, so the base routes every label (the one-refit path)."""
    current, rec = base, None
    actions = _actions(policy, current, res_h)
    labels: list[LabelledExample] = []
    judged: dict[int, int] = {}  # answer -> the label of the person's decision on it
    reviews = 0
    out: dict = {"checkpoints": {}}
    while reviews < CHECKPOINTS[-1]:
        j = int(stream[rng.integers(len(stream))])
        if actions[j] == "review":
            p, kind = 1.0, "review"
        elif rng.random() < rate:
            p, kind = rate, "audit"
        else:
            continue
        labels.append(
            LabelledExample(
                item_id=len(labels),
                result=res_h[j],
                correct=bool(y_h[j]),
                weight=1.0 / p,
                kind=kind,
                inclusion_probability=p,
                status="approved" if y_h[j] else "rejected",
                created_at="",
                repeat_of=judged.get(j),
            )
        )
        if j in judged:  # the queue decides a repeat on arrival: a label, no one's time
            continue
        judged[j] = len(labels) - 1
        reviews += 1
        refused = False
        # A refit every refit_every decisions by a person (as the guard counts them), and at each
        # checkpoint (what `calibrate --from-reviews` would write then).
        if reviews % refit_every == 0 or reviews in CHECKPOINTS:
            new = _refit(base, labels)
            refused = new is None
            if new is not None:
                rec, current = new, new.calibrator
                if swap:
                    actions = _actions(policy, current, res_h)
        if reviews in CHECKPOINTS:
            out["checkpoints"][reviews] = {
                "calibrator": current,
                "thresholds": [] if rec is None else rec.thresholds,
                "refused": refused,
                "step": None if rec is None else rec.chosen,
                "labels": len(labels),
            }
    band = [lab for lab in labels if lab.kind == "review"]
    out["band_only"] = _refit(base, band)
    out["unweighted"] = _refit(base, [lab.model_copy(update={"weight": 1.0}) for lab in labels])
    out["audit_share"] = float(np.mean([lab.kind == "audit" for lab in labels]))
    return out


def one_order(
    res_h: list,
    y_h: np.ndarray,
    base: Calibrator,
    policy: GuardPolicy,
    args: argparse.Namespace,
    seed: int,
    swap: bool = True,
) -> dict:
    rng = np.random.default_rng(seed)
    k = args.folds
    folds: list[list[int]] = [[] for _ in range(k)]
    for cls in (False, True):  # stratified by label
        for f, part in enumerate(np.array_split(rng.permutation(np.flatnonzero(y_h == cls)), k)):
            folds[f] += list(part)
    runs = []
    for f in range(k):  # each fold judged once, by a loop whose traffic is the other folds
        ev = np.asarray(folds[f])
        st = np.concatenate([folds[g] for g in range(k) if g != f]).astype(int)
        runs.append(
            (ev, one_loop(st, res_h, y_h, base, policy, args.audit_rate, args.refit_every, rng, swap))
        )
    order: dict = {"checkpoints": {}}
    for n in CHECKPOINTS:
        conf = np.zeros(len(y_h))
        exceed: dict[str, list[bool]] = {str(x): [] for x in ALPHAS}
        clear: dict[str, list[bool]] = {str(x): [] for x in ALPHAS}
        for ev, run in runs:
            cp = run["checkpoints"][n]
            conf[ev] = cp["calibrator"].predict([res_h[i] for i in ev], check=False)
            for sel in cp["thresholds"]:
                if sel.feasible and sel.threshold is not None:
                    acc = conf[ev] >= sel.threshold
                    errors, n_acc = int((~y_h[ev][acc]).sum()), int(acc.sum())
                    realised = errors / n_acc if n_acc else 0.0
                    exceed[str(sel.alpha)].append(realised > sel.alpha)
                    # Above alpha beyond the judged fold's own noise: a one-sided binomial test at 10%.
                    clear[str(sel.alpha)].append(
                        bool(n_acc) and binom.sf(errors - 1, n_acc, sel.alpha) <= 0.1
                    )
        accepted = _accepted(policy, conf, res_h)
        order["checkpoints"][n] = {
            "ece": expected_calibration_error(conf, y_h, BINS),
            "floor": noise_floor(conf, rng),
            "coverage": float(accepted.mean()),
            "error": float((~y_h[accepted]).mean()) if accepted.any() else float("nan"),
            "exceed": exceed,
            "clear": clear,
            "refused": sum(run["checkpoints"][n]["refused"] for _, run in runs),
            "labels": float(np.mean([run["checkpoints"][n]["labels"] for _, run in runs])),
            "steps": [str(run["checkpoints"][n]["step"]) for _, run in runs],
        }
    for key in ("band_only", "unweighted"):
        conf = np.zeros(len(y_h))
        ok = True
        for ev, run in runs:
            rec = run[key]
            ok = ok and rec is not None
            if rec is not None:
                conf[ev] = rec.calibrator.predict([res_h[i] for i in ev], check=False)
        order[key] = expected_calibration_error(conf, y_h, BINS) if ok else None
    order["audit_share"] = float(np.mean([run["audit_share"] for _, run in runs]))
    return order


@functools.cache
def held_out(held: str, with_pool: bool) -> tuple[list, np.ndarray, Calibrator, int]:
    """The held-out set's answers and labels, the base calibrator fitted on the other two sets, and
    how many of the answers are development rows (the rest are pool rows)."""
    data = load()
    results = data.results(PROFILE["anchor_offset"], PROFILE["layers"], PROFILE["exgrad_mode"])
    tr = np.flatnonzero(data.groups != held)
    base = Calibrator.fit([results[i] for i in tr], list(data.correct[tr]), groups=list(data.groups[tr]))
    te = np.flatnonzero(data.groups == held)
    res_h, y_h = [results[i] for i in te], data.correct[te]
    if with_pool:
        pool = load(folder=DEVSETS / "pool")
        pool_results = pool.results(PROFILE["anchor_offset"], PROFILE["layers"], PROFILE["exgrad_mode"])
        extra = np.flatnonzero(pool.groups == held)
        res_h += [pool_results[i] for i in extra]
        y_h = np.concatenate([y_h, pool.correct[extra]])
    return res_h, y_h, base, len(te)


def _order(held: str, with_pool: bool, args: argparse.Namespace, seed: int, swap: bool = True) -> dict:
    """One order in a worker process (it loads the set itself: calibrators hold locks, not pickled)."""
    res_h, y_h, base, _ = held_out(held, with_pool)
    return one_order(res_h, y_h, base, GuardPolicy.from_yaml(POLICY), args, seed, swap)


def _q(values: list) -> tuple[float, float, float]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if not len(v):
        return (float("nan"),) * 3
    return float(np.median(v)), float(np.quantile(v, 0.1)), float(np.quantile(v, 0.9))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=20)
    parser.add_argument("--audit-rate", type=float, default=0.1)
    parser.add_argument(
        "--refit-every", type=int, default=50, help="labels between refits (review.refit_every)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--folds", type=int, default=4, help="cross-fitting folds: each judged by a loop on the others"
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--sets", nargs="+", default=list(NAMES), choices=NAMES)
    parser.add_argument(
        "--no-pool", action="store_true", help="judge on the development rows only, not on devsets/pool too"
    )
    parser.add_argument("--render", action="store_true", help="only rewrite feedback.md from feedback.json")
    parser.add_argument("--no-write", action="store_true", help="print the summary, write nothing")
    args = parser.parse_args(argv)
    if args.render:
        (OUT / "feedback.md").write_text(render(json.loads((OUT / "feedback.json").read_text())))
        return 0
    t0 = time.perf_counter()
    load_before = os.getloadavg()[0]
    policy = GuardPolicy.from_yaml(POLICY)
    report: dict = {
        "audit_rate": args.audit_rate,
        "orders": args.orders,
        "refit_every": args.refit_every,
        "folds": args.folds,
        "pool": not args.no_pool,
        "sets": {},
    }
    for held in args.sets:
        res_h, y_h, base, n_dev = held_out(held, not args.no_pool)
        conf0 = base.predict(res_h, check=False)
        acc0 = _accepted(policy, conf0, res_h)
        seeds = [args.seed + 1000 * o for o in range(args.orders)]
        task = functools.partial(_order, held, not args.no_pool, args)
        with ProcessPoolExecutor(args.jobs) as workers:  # orders are independent: one per core
            orders = list(workers.map(task, seeds))
            once = list(workers.map(functools.partial(task, swap=False), seeds))
        rows = {}
        for n in CHECKPOINTS:
            cps = [o["checkpoints"][n] for o in orders]
            exceed = {}
            for a in ALPHAS:
                hits = [x for c in cps for x in c["exceed"][str(a)]]
                clear = sum(x for c in cps for x in c["clear"][str(a)])
                exceed[str(a)] = [float(np.mean(hits)) if hits else None, len(hits), int(clear)]
            rows[n] = {
                "ece": _q([c["ece"] for c in cps]),
                "floor": _q([c["floor"] for c in cps]),
                "coverage": _q([c["coverage"] for c in cps]),
                "error": _q([c["error"] for c in cps]),
                "refused": sum(c["refused"] for c in cps),
                "labels": float(np.median([c["labels"] for c in cps])),
                "exceed": exceed,
                "steps": {
                    s: sum(c["steps"].count(s) for c in cps)
                    for s in sorted({str(s) for c in cps for s in c["steps"]})
                },
            }
        report["sets"][held] = {
            "n": len(y_h),
            "n_dev": n_dev,
            "accuracy": float(y_h.mean()),
            "before": {
                "ece": expected_calibration_error(conf0, y_h, BINS),
                "floor": noise_floor(conf0, np.random.default_rng(args.seed)),
                "coverage": float(acc0.mean()),
                "error": float((~y_h[acc0]).mean()) if acc0.any() else float("nan"),
            },
            "after": rows,
            "bias_at_200": {
                "audited_weighted": rows[200]["ece"][0],
                "audited_unweighted": _q([o["unweighted"] for o in orders])[0],
                "review_band_only": _q([o["band_only"] for o in orders])[0],
            },
            "audit_share": float(np.mean([o["audit_share"] for o in orders])),
            "one_refit": {
                n: {
                    "ece": _q([o["checkpoints"][n]["ece"] for o in once]),
                    "steps": {
                        s: sum(o["checkpoints"][n]["steps"].count(s) for o in once)
                        for s in sorted({s for o in once for s in o["checkpoints"][n]["steps"]})
                    },
                }
                for n in CHECKPOINTS
            },
        }
        print(
            held,
            {n: [round(rows[n]["ece"][0], 3), round(rows[n]["floor"][0], 3)] for n in CHECKPOINTS},
            flush=True,
        )
    elapsed = time.perf_counter() - t0
    report["machine"] = {
        "date": str(dt.date.today()),
        "cpu": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "load": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "seconds": round(elapsed),
    }
    if args.no_write:
        return 0
    (OUT / "feedback.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    report = json.loads((OUT / "feedback.json").read_text())  # rendered as --render reads it (str keys)
    (OUT / "feedback.md").write_text(render(report))
    plot(report)
    print((OUT / "feedback.md").read_text())
    return 0


def render(r: dict) -> str:
    def f(x: float | None) -> str:
        return "-" if x is None or not np.isfinite(x) else f"{x:.3f}"

    m = r["machine"]
    lines = [
        "# The feedback loop: review labels -> recalibration",
        "",
        "`python benchmarks/bench_feedback.py --orders "
        f"{r['orders']} --audit-rate {r['audit_rate']} --refit-every {r['refit_every']} "
        f"--folds {r.get('folds', 2)}`",
        f"({m['date']}, {m['cpu']}, load average {m['load'][0]} at the start and",
        f"{m['load'][1]} at the end, on the shared machine; {m['seconds']} s). No model runs: scores",
        "and labels are the collected development rows.",
        "",
        "Per held-out set: the base calibrator is fitted on the other two sets'",
        "development rows; the held-out set is its development rows"
        + (" and its pool rows" if r.get("pool") else ";"),
        *(["(devsets/pool: the same sources, in no shipped fit);"] if r.get("pool") else []),
        f"each order splits it into {r.get('folds', 2)} folds; each fold is judged by a loop whose traffic",
        "is the other folds (drawn with replacement). The README policy plus audit routes",
        f"traffic with the calibrator running at the time; every {r['refit_every']} reviews",
        "(review.refit_every) and at each checkpoint it is refitted and swapped in.",
        "Reviewers answer from the labels; a repeat of an answer already judged is",
        "decided by the queue on arrival (a label, not a review), as the queue does.",
        "`ref.`: refits refused (too few of a class).",
        "",
        "All numbers are on answers the loop never labelled: median [10th, 90th",
        "percentile] over random orders. `floor`: the median ECE of a perfectly",
        "calibrated predictor with the same confidences (labels drawn from them; same n,",
        "10 bins), the estimator's own noise: an ECE near it is as good as this n can",
        "show. `reviews`: a person's decisions (each a distinct answer); `labels`: with",
        "the repeats the queue decided on arrival (traffic repeats questions).",
        "",
    ]
    for name, s in r["sets"].items():
        b = s["before"]
        lines += [
            f"## {name} ({s['n']} answers, {s['accuracy']:.0%} right; {s['audit_share']:.0%} of labels audited)",
            "",
            f"{s['n_dev']} development rows"
            + (f" and {s['n'] - s['n_dev']} pool rows." if s["n"] != s["n_dev"] else "."),
            "",
            f"Before any label: ECE {f(b['ece'])} (floor {f(b['floor'])}), coverage {f(b['coverage'])},",
            f"error among accepted {f(b['error'])}.",
            "",
            "| reviews |  labels | ECE                  | floor | cover. | err. acc. | ref. |",
            "|--------:|--------:|:---------------------|------:|-------:|----------:|-----:|",
        ]
        for n, row in s["after"].items():
            e = row["ece"]
            ece = f"{f(e[0])} [{f(e[1])}, {f(e[2])}]"
            lines.append(
                f"| {n:>7} | {row['labels']:>7.0f} | {ece:<20} | {f(row['floor'][0]):>5} "
                f"| {f(row['coverage'][0]):>6} | {f(row['error'][0]):>9} | {row['refused']:>4} |"
            )
        lines += [
            "",
            "Certified threshold's realised error above alpha on the judged fold (share of",
            "certifications; their count in brackets; - none certified):",
            "",
        ]
        lines.append("| reviews | " + " | ".join(f"alpha {a:<9}" for a in ALPHAS) + " |")
        lines.append("|--------:|" + "|".join("----------------:" for _ in ALPHAS) + "|")
        for n, row in s["after"].items():
            cells = []
            for a in ALPHAS:
                share, count, _ = row["exceed"][str(a)]
                cells.append(f"{f(share)} ({count})" if count else "-")
            lines.append(f"| {n:>7} | " + " | ".join(f"{c:>15}" for c in cells) + " |")
        bias = s["bias_at_200"]
        certs = [row["exceed"][str(a)] for row in s["after"].values() for a in ALPHAS]
        total, above = sum(c[1] for c in certs), sum(round((c[0] or 0) * c[1]) for c in certs)
        if total:
            lines += [
                "",
                f"In all, {above} of {total} certifications read above alpha on the judged fold; "
                f"{sum(c[2] for c in certs)} of",
                "them beyond its own noise (a one-sided binomial test of the judged errors at 10%).",
            ]
        lines += [
            "",
            f"Bias at 200 reviews (median ECE): audited and weighted {f(bias['audited_weighted'])},",
            f"audited unweighted {f(bias['audited_unweighted'])}, review band only "
            f"{f(bias['review_band_only'])}.",
            "",
        ]
    lines += [
        "## Against the target (ECE <= 0.10 after 50 reviews, <= 0.06 after 200)",
        "",
        "Median ECE on the unlabelled answers; `excess`: ECE minus its noise floor.",
        "",
        "| set        | ECE at 50 | met | ECE at 200 | met | floor | excess |  labels |",
        "|:-----------|----------:|:----|-----------:|:----|------:|-------:|--------:|",
    ]
    for name, s in r["sets"].items():
        at50, at200 = s["after"]["50"]["ece"][0], s["after"]["200"]["ece"][0]
        floor = s["after"]["200"]["floor"][0]
        lines.append(
            f"| {name:<10} | {f(at50):>9} | {'yes' if at50 <= 0.10 else 'no':<3} | {f(at200):>10} "
            f"| {'yes' if at200 <= 0.06 else 'no':<3} | {f(floor):>5} | {f(at200 - floor):>6} "
            f"| {s['after']['200']['labels']:>7.0f} |"
        )
    lines += [
        "",
        "## One refit, routed by the shipped calibrator (the README's three commands)",
        "",
        "The same orders, every label routed by the base calibrator and the checkpoint's",
        "calibrator the one refit on the labels so far. Median ECE [10th, 90th",
        "percentile]; `chosen at 200`: the refit's step over all folds of every order",
        "(i intercept, s slope+intercept, m monotone, f full).",
        "",
        "| set        | ECE at 50            | ECE at 200           | chosen at 200     |",
        "|:-----------|:---------------------|:---------------------|:------------------|",
    ]
    for name, s in r["sets"].items():
        if "one_refit" not in s:
            continue
        once = s["one_refit"]
        e50, e200 = once["50"]["ece"], once["200"]["ece"]
        short = {"intercept": "i", "slope+intercept": "s", "monotone": "m", "full": "f"}
        steps = " ".join(f"{short.get(k, k)} {v}" for k, v in once["200"]["steps"].items())
        lines.append(
            f"| {name:<10} | {f'{f(e50[0])} [{f(e50[1])}, {f(e50[2])}]':<20} "
            f"| {f'{f(e200[0])} [{f(e200[1])}, {f(e200[2])}]':<20} "
            f"| {steps:<17} |"
        )
    lines += ["", "![ECE against reviews](feedback_ece.png)", ""]
    return "\n".join(lines)


def plot(r: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, s in r["sets"].items():
        ns = [int(n) for n in s["after"]]
        med = [s["after"][n]["ece"][0] for n in s["after"]]
        lo = [s["after"][n]["ece"][1] for n in s["after"]]
        hi = [s["after"][n]["ece"][2] for n in s["after"]]
        floor = [s["after"][n]["floor"][0] for n in s["after"]]
        line = ax.plot([0, *ns], [s["before"]["ece"], *med], marker="o", label=name)[0]
        ax.fill_between(ns, lo, hi, alpha=0.15, color=line.get_color())
        ax.plot(ns, floor, ls="--", lw=1, color=line.get_color())
        if "one_refit" in s:
            ax.plot(
                ns, [s["one_refit"][n]["ece"][0] for n in s["after"]], ls="-.", lw=1, color=line.get_color()
            )
    ax.axhline(0.10, ls=":", c="grey")
    ax.axhline(0.06, ls=":", c="grey")
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("reviewed answers")
    ax.set_ylabel("ECE on unlabelled answers")
    ax.set_title("dash-dot: one refit, routed by the shipped calibrator; dashed: noise floor", fontsize=8)
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "feedback_ece.png", dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
