"""The feedback loop on each development set held out in turn: review labels -> recalibration.

For each development set H (``benchmarks/results/devsets``, no model needed): the base calibrator is
fitted on the *other two* sets (what a user of the shipped calibrator faces on data it never saw).
A deployment stream draws H's answers at random (with replacement: traffic repeats questions); the
README policy (``cookbook/policies/default.yaml``) with ``audit: {rate}`` routes each one: the review
band goes to the queue (inclusion probability 1), a random ``rate`` share of the rest is audited
(probability ``rate``). Reviewers answer from H's labels. After 10, 20, 50, 100 and 200 reviews,
``recalibrate`` (the code ``calibrate --from-reviews`` runs) refits the base on the weighted labels;
reported on all of H's answers: ECE, and under the policy coverage and error among accepted; and
for each alpha, whether the threshold ``select_threshold`` certified on the labels has a realised
error above alpha on H. Intervals: 10th-90th percentile over ``--orders`` random streams.

The bias of unaudited labels: at 200 reviews, the same refit on review-band labels only (no audit)
and on the audited labels without their weights.

Usage: python benchmarks/bench_feedback.py [--orders 20] [--audit-rate 0.1]
Writes ``benchmarks/results/feedback.md``, ``feedback.json`` and ``feedback_ece.png``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.devsets.devdata import NAMES, load  # noqa: E402
from semgrad_guard import Calibrator, GuardPolicy  # noqa: E402
from semgrad_guard.guard.calibration import expected_calibration_error  # noqa: E402
from semgrad_guard.guard.recalibrate import recalibrate  # noqa: E402
from semgrad_guard.review.labels import LabelledExample  # noqa: E402

OUT = ROOT / "benchmarks" / "results"
PROFILE = json.loads((ROOT / "semgrad_guard" / "profiles" / "smollm2-135m-instruct.json").read_text())
POLICY = ROOT / "cookbook" / "policies" / "default.yaml"
CHECKPOINTS = (10, 20, 50, 100, 200)
ALPHAS = (0.4, 0.5, 0.6)  # the model is wrong on most answers: lower targets cannot be certified here
DELTA = 0.1


def _policy_metrics(policy: GuardPolicy, conf: np.ndarray, results, y: np.ndarray) -> tuple[float, float]:
    acc = np.asarray(
        [
            policy.decide(r, float(c)).action.value in ("accept", "annotate")
            for r, c in zip(results, conf, strict=True)
        ]
    )
    cov = float(acc.mean())
    err = float((~y[acc]).mean()) if acc.any() else float("nan")
    return cov, err


def one_stream(
    held: str, data, results, base: Calibrator, policy: GuardPolicy, rate: float, seed: int
) -> dict:
    rng = np.random.default_rng(seed)
    idx = np.flatnonzero(data.groups == held)
    y_all = data.correct[idx]
    res_h = [results[i] for i in idx]
    conf_base = base.predict(res_h, check=False)
    actions = np.asarray(
        [policy.decide(r, float(c)).action.value for r, c in zip(res_h, conf_base, strict=True)]
    )
    labels: list[LabelledExample] = []
    out: dict = {"checkpoints": {}}
    k = 0
    while len(labels) < CHECKPOINTS[-1]:
        j = int(rng.integers(len(idx)))
        if actions[j] == "review":
            p, kind = 1.0, "review"
        elif rng.random() < rate:
            p, kind = rate, "audit"
        else:
            continue
        labels.append(
            LabelledExample(
                item_id=k,
                result=res_h[j],
                correct=bool(y_all[j]),
                weight=1.0 / p,
                kind=kind,
                inclusion_probability=p,
                status="approved" if y_all[j] else "rejected",
                created_at="",
            )
        )
        k += 1
        if len(labels) in CHECKPOINTS:
            out["checkpoints"][len(labels)] = _evaluate(base, labels, res_h, y_all, policy)
    reviewed = [lab for lab in labels if lab.kind == "review"]
    out["band_only"] = _ece_of(base, reviewed, res_h, y_all)
    out["unweighted"] = _ece_of(
        base, [lab.model_copy(update={"weight": 1.0}) for lab in labels], res_h, y_all
    )
    out["audit_share"] = float(np.mean([lab.kind == "audit" for lab in labels]))
    return out


def _ece_of(base: Calibrator, labels, res_h, y_all) -> float | None:
    try:
        rec = recalibrate(base, labels, alphas=ALPHAS, delta=DELTA)
    except Exception:  # too few of one class in the band: no refit possible
        return None
    return expected_calibration_error(rec.calibrator.predict(res_h, check=False), y_all)


def _evaluate(base: Calibrator, labels, res_h, y_all, policy: GuardPolicy) -> dict:
    try:
        rec = recalibrate(base, labels, alphas=ALPHAS, delta=DELTA)
    except Exception as e:  # e.g. all ten labels right: the refusal is what a user sees too
        return {"refused": f"{type(e).__name__}"}
    conf = rec.calibrator.predict(res_h, check=False)
    cov, err = _policy_metrics(policy, conf, res_h, y_all)
    exceed = {}
    for sel in rec.thresholds:
        if sel.feasible and sel.threshold is not None:
            acc = conf >= sel.threshold
            realised = float((~y_all[acc]).mean()) if acc.any() else 0.0
            exceed[str(sel.alpha)] = bool(realised > sel.alpha)
    return {
        "ece": expected_calibration_error(conf, y_all),
        "coverage": cov,
        "error": err,
        "step": rec.chosen,
        "exceed": exceed,
    }


def _q(values: list[float]) -> tuple[float, float, float]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if not len(v):
        return (float("nan"),) * 3
    return float(np.median(v)), float(np.quantile(v, 0.1)), float(np.quantile(v, 0.9))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=20)
    parser.add_argument("--audit-rate", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--render", action="store_true", help="only rewrite feedback.md from feedback.json")
    args = parser.parse_args(argv)
    if args.render:
        (OUT / "feedback.md").write_text(render(json.loads((OUT / "feedback.json").read_text())))
        return 0
    t0 = time.perf_counter()
    data = load()
    results = data.results(PROFILE["anchor_offset"], PROFILE["layers"], PROFILE["exgrad_mode"])
    policy = GuardPolicy.from_yaml(POLICY)
    report: dict = {"audit_rate": args.audit_rate, "orders": args.orders, "sets": {}}
    for held in NAMES:
        tr = np.flatnonzero(data.groups != held)
        base = Calibrator.fit([results[i] for i in tr], list(data.correct[tr]), groups=list(data.groups[tr]))
        te = np.flatnonzero(data.groups == held)
        res_h, y_h = [results[i] for i in te], data.correct[te]
        conf0 = base.predict(res_h, check=False)
        cov0, err0 = _policy_metrics(policy, conf0, res_h, y_h)
        streams = [
            one_stream(held, data, results, base, policy, args.audit_rate, args.seed + 1000 * o)
            for o in range(args.orders)
        ]
        rows = {}
        for n in CHECKPOINTS:
            cps = [s["checkpoints"][n] for s in streams]
            ok = [c for c in cps if "ece" in c]
            rows[n] = {
                "ece": _q([c["ece"] for c in ok]),
                "coverage": _q([c["coverage"] for c in ok]),
                "error": _q([c["error"] for c in ok]),
                "refused": len(cps) - len(ok),
                "exceed": {
                    str(a): float(np.mean([c["exceed"][str(a)] for c in ok if str(a) in c["exceed"]]))
                    if any(str(a) in c["exceed"] for c in ok)
                    else None
                    for a in ALPHAS
                },
                "steps": sorted({c["step"] for c in ok}),
            }
        report["sets"][held] = {
            "n": len(te),
            "accuracy": float(y_h.mean()),
            "before": {"ece": expected_calibration_error(conf0, y_h), "coverage": cov0, "error": err0},
            "after": rows,
            "bias_at_200": {
                "audited_weighted": rows[200]["ece"][0],
                "audited_unweighted": _q([s["unweighted"] for s in streams])[0],
                "review_band_only": _q([s["band_only"] for s in streams])[0],
            },
            "audit_share": float(np.mean([s["audit_share"] for s in streams])),
        }
        print(held, json.dumps(report["sets"][held]["after"][200]["ece"]), flush=True)
    elapsed = time.perf_counter() - t0
    report["machine"] = {
        "date": str(dt.date.today()),
        "cpu": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "load": round(os.getloadavg()[0], 1),
        "seconds": round(elapsed),
    }
    (OUT / "feedback.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
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
        f"`python benchmarks/bench_feedback.py --orders {r['orders']} --audit-rate {r['audit_rate']}`",
        f"({m['date']}, {m['cpu']}, load average {m['load']} on the shared machine; {m['seconds']} s).",
        "No model runs: scores and labels are the collected development rows. Per held-out set:",
        "the base calibrator is fitted on the other two sets; the README policy plus audit routes a",
        "stream drawn from the set (with replacement); reviewers answer from its labels. ECE,",
        "coverage and error among accepted are measured on all of the set's 200 answers (the",
        "labelled ones among them); median [10th, 90th percentile] over random review orders.",
        "",
    ]
    for name, s in r["sets"].items():
        b = s["before"]
        lines += [
            f"## {name} ({s['n']} answers, {s['accuracy']:.0%} right; {s['audit_share']:.0%} of labels audited)",
            "",
            f"Before any label: ECE {f(b['ece'])}, coverage {f(b['coverage'])}, error among accepted "
            f"{f(b['error'])}.",
            "",
            "| reviews | ECE                  | coverage | error accepted | refused |",
            "|--------:|:---------------------|---------:|---------------:|--------:|",
        ]
        for n, row in s["after"].items():
            e = row["ece"]
            ece = f"{f(e[0])} [{f(e[1])}, {f(e[2])}]"
            lines.append(
                f"| {n:>7} | {ece:<20} | {f(row['coverage'][0]):>8} | {f(row['error'][0]):>14} | {row['refused']:>7} |"
            )
        lines += [
            "",
            "Certified threshold's realised error above alpha (share of orders; - none certified):",
            "",
        ]
        lines.append("| reviews | " + " | ".join(f"alpha {a}" for a in ALPHAS) + " |")
        lines.append("|--------:|" + "|".join("----------:" for _ in ALPHAS) + "|")
        for n, row in s["after"].items():
            lines.append(f"| {n:>7} | " + " | ".join(f"{f(row['exceed'][str(a)]):>9}" for a in ALPHAS) + " |")
        bias = s["bias_at_200"]
        lines += [
            "",
            f"Bias at 200 reviews (median ECE): audited and weighted {f(bias['audited_weighted'])}, "
            f"audited unweighted {f(bias['audited_unweighted'])}, review band only "
            f"{f(bias['review_band_only'])}.",
            "",
        ]
    lines += ["![ECE against reviews](feedback_ece.png)", ""]
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
        line = ax.plot([0, *ns], [s["before"]["ece"], *med], marker="o", label=name)[0]
        ax.fill_between(ns, lo, hi, alpha=0.15, color=line.get_color())
    ax.axhline(0.10, ls=":", c="grey")
    ax.axhline(0.06, ls=":", c="grey")
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("reviewed answers")
    ax.set_ylabel("ECE on the held-out set")
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "feedback_ece.png", dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
