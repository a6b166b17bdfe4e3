"""End-to-end quality of the guard's decisions on the development sets, held out from what is fitted.

Reads ``benchmarks/results/devsets/*.jsonl`` (``benchmarks/devsets/collect.py``: SciQ, TruthfulQA and
the fictional-facts RAG set answered by the embedded SmolLM2-135M-Instruct) and reports:

1. **Profile.** SemGrad AUROC (wrong answer = positive) of every anchor offset x layer band, the
   choice by the mean per-data-set AUROC with its 5-fold cross-validated estimate, and, per data
   set, the choice made on the *other two* sets (leave one data set out) next to the SPS profile
   shipped before and the default rule.
2. **exgrad modes.** AUROC of exgrad and hybridgrad with ``logits`` and ``weight`` exgrad.
3. **Default confidence.** The calibrator (features chosen leaving one data set out), judged
   (a) on each data set with the calibrator fitted on the other two, and (b) on random halves
   stratified by data set, fitted on the other half: AUROC of the confidence next to every single
   score, ECE of the calibrator shipped before and of the new one.
4. **The README policy** (bands over confidence) on held-out halves: coverage, error among accepted
   and overall; and the risk bound: ``select_threshold(alpha, delta)`` chosen on one quarter,
   realised error on another, exceedance rate over the splits.

``--write`` also writes the shipped profile and calibrator of the embedded model (fitted on all
development rows). Writes ``benchmarks/results/guard_quality.md`` and ``guard_quality.json``.

Usage: python benchmarks/bench_guard.py [--splits 100] [--write]
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

from benchmarks.devsets.devdata import MODEL_ID, NAMES, OFFSETS, DevSet, load  # noqa: E402
from semgrad_guard import Calibrator, GuardPolicy, ModelProfile, select_threshold  # noqa: E402
from semgrad_guard.eval.metrics import auroc  # noqa: E402
from semgrad_guard.eval.profile_search import layer_bands, select_from_window  # noqa: E402
from semgrad_guard.guard.calibration import expected_calibration_error  # noqa: E402
from semgrad_guard.results import SCORE_FIELDS  # noqa: E402

OUT_MD = ROOT / "benchmarks" / "results" / "guard_quality.md"
OUT_JSON = ROOT / "benchmarks" / "results" / "guard_quality.json"
PROFILE_PATH = ROOT / "semgrad_guard" / "profiles" / "smollm2-135m-instruct.json"
CALIBRATOR_PATH = ROOT / "semgrad_guard" / "calibrators" / "smollm2-135m-instruct.json"
README_POLICY = ROOT / "cookbook" / "policies" / "default.yaml"
NUM_LAYERS = 30
SPS_BEFORE = (-1, list(range(15, 30)))  # the SPS profile shipped before this benchmark
DEFAULT_RULE = (-4, list(range(15, 30)))  # first token of the generation prompt (<|im_start|>)
ALPHAS = (0.4, 0.5, 0.6)  # the model is wrong on ~3 answers in 4: lower targets cannot be certified here
DELTA = 0.1


def _auroc(scores, correct) -> float:
    return auroc(np.asarray(scores, dtype=float), ~np.asarray(correct, dtype=bool))


def _per_set(values, data: DevSet) -> dict[str, float]:
    return {n: _auroc(np.asarray(values)[data.groups == n], data.correct[data.groups == n]) for n in NAMES}


def profile_part(data: DevSet) -> dict:
    bands = layer_bands(NUM_LAYERS)
    best, table, cv, folds = select_from_window(
        data.window, ~data.correct, offsets=OFFSETS, bands=bands, groups=data.groups, folds=5
    )
    lodo = {}
    for held in NAMES:
        tr = data.groups != held
        b, _, _, _ = select_from_window(
            data.window[tr], ~data.correct[tr], offsets=OFFSETS, bands=bands, groups=data.groups[tr], folds=5
        )
        sem = data.subset(np.flatnonzero(~tr)).results(b.offset, b.layers)
        lodo[held] = {
            "offset": b.offset,
            "band": b.band,
            "auroc": _auroc([r.semgrad for r in sem], data.correct[~tr]),
        }
    named = {}
    for label, (off, layers) in {"SPS (shipped before)": SPS_BEFORE, "default rule": DEFAULT_RULE}.items():
        sem = [r.semgrad for r in data.results(off, layers)]
        named[label] = {"offset": off, "layers": layers, **_per_set(sem, data)}
    return {
        "best": {"offset": best.offset, "band": best.band, "layers": best.layers},
        "cv_auroc": cv,
        "folds": folds,
        "table": table,
        "lodo": lodo,
        "named": named,
    }


def exgrad_part(data: DevSet, offset: int, layers: list[int]) -> dict:
    out = {}
    for mode in ("logits", "weight"):
        res = data.results(offset, layers, mode)
        out[mode] = {
            "exgrad": _per_set([r.exgrad for r in res], data),
            "hybridgrad": _per_set([r.hybridgrad for r in res], data),
        }
    return out


def _fit(results, correct, groups) -> Calibrator:
    g = list(groups) if len(set(groups)) >= 2 else None
    return Calibrator.fit(results, correct, groups=g)


def calibration_part(data: DevSet, results, splits: int, seed: int) -> dict:
    old = Calibrator.load(CALIBRATOR_PATH) if CALIBRATOR_PATH.exists() else None
    lodo = {}
    for held in NAMES:
        tr, te = np.flatnonzero(data.groups != held), np.flatnonzero(data.groups == held)
        cal = _fit([results[i] for i in tr], data.correct[tr], data.groups[tr])
        conf = cal.predict([results[i] for i in te], check=False)
        y = data.correct[te]
        row = {
            "n": len(te),
            "accuracy": float(y.mean()),
            "features": f"{cal.method}:{'+'.join(cal.features)}",
            "confidence": _auroc(-conf, y),
            "ece": expected_calibration_error(conf, y),
            "mean_confidence": float(conf.mean()),
            **{f: _auroc([getattr(results[i], f) for i in te], y) for f in SCORE_FIELDS},
        }
        if old is not None:
            row["ece_before"] = expected_calibration_error(
                old.predict_scores([results[i].scores() for i in te]), y
            )
        lodo[held] = row
    # Random halves stratified by data set and label.
    rng = np.random.default_rng(seed)
    acc = {"confidence": [], "ece": [], "ece_before": [], **{f: [] for f in SCORE_FIELDS}}
    per_set = {n: {"confidence": [], "ece": [], **{f: [] for f in SCORE_FIELDS}} for n in NAMES}
    for _ in range(splits):
        a, b = data.halves(rng)
        cal = _fit([results[i] for i in a], data.correct[a], data.groups[a])
        conf = cal.predict([results[i] for i in b], check=False)
        y, g = data.correct[b], data.groups[b]
        acc["confidence"].append(np.mean([_auroc(-conf[g == n], y[g == n]) for n in NAMES]))
        acc["ece"].append(expected_calibration_error(conf, y))
        if old is not None:
            acc["ece_before"].append(
                expected_calibration_error(old.predict_scores([results[i].scores() for i in b]), y)
            )
        for f in SCORE_FIELDS:
            v = np.asarray([getattr(results[i], f) for i in b])
            acc[f].append(np.mean([_auroc(v[g == n], y[g == n]) for n in NAMES]))
            for n in NAMES:
                per_set[n][f].append(_auroc(v[g == n], y[g == n]))
        for n in NAMES:
            per_set[n]["confidence"].append(_auroc(-conf[g == n], y[g == n]))
            per_set[n]["ece"].append(expected_calibration_error(conf[g == n], y[g == n]))
    return {
        "lodo": lodo,
        "halves": {k: float(np.mean(v)) for k, v in acc.items() if v},
        "halves_per_set": {n: {k: float(np.mean(v)) for k, v in d.items()} for n, d in per_set.items()},
        "ece_before_shipped": old is not None,
    }


def policy_part(data: DevSet, results, policy: GuardPolicy, splits: int, seed: int) -> dict:
    rng = np.random.default_rng(seed + 1)
    actions: dict[str, list[float]] = {}
    cov, err_acc, err_all, per_set = (
        [],
        [],
        [],
        {n: {"coverage": [], "err_acc": [], "err_all": []} for n in NAMES},
    )
    risk = {a: {"feasible": 0, "exceed": 0, "coverage": [], "error": []} for a in ALPHAS}
    for _ in range(splits):
        a, b = data.halves(rng)
        cal = _fit([results[i] for i in a], data.correct[a], data.groups[a])
        conf = cal.predict([results[i] for i in b], check=False)
        y, g = data.correct[b], data.groups[b]
        decided = [policy.decide(results[i], float(c)).action.value for i, c in zip(b, conf, strict=True)]
        for act in set(decided) | set(actions):
            actions.setdefault(act, []).append(float(np.mean([d == act for d in decided])))
        accepted = np.asarray([d == "accept" for d in decided])
        cov.append(accepted.mean())
        err_all.append(1 - y.mean())
        if accepted.any():
            err_acc.append(1 - y[accepted].mean())
        for n in NAMES:
            m = g == n
            per_set[n]["coverage"].append(accepted[m].mean())
            per_set[n]["err_all"].append(1 - y[m].mean())
            if accepted[m].any():
                per_set[n]["err_acc"].append(1 - y[m & accepted].mean())
        # Risk control: threshold on one half of b, realised on the other.
        half = len(b) // 2
        perm = rng.permutation(len(b))
        c1, c2 = perm[:half], perm[half:]
        for alpha in ALPHAS:
            sel = select_threshold(conf[c1], y[c1], alpha=alpha, delta=DELTA, strict=False)
            st = risk[alpha]
            if not sel.feasible or sel.threshold is None:
                st["coverage"].append(0.0)
                continue
            st["feasible"] += 1
            acc2 = conf[c2] >= sel.threshold
            st["coverage"].append(float(acc2.mean()))
            if acc2.any():
                e = float(1 - y[c2][acc2].mean())
                st["error"].append(e)
                st["exceed"] += e > alpha
    return {
        "actions": {k: float(np.mean(v)) for k, v in actions.items()},
        "coverage": float(np.mean(cov)),
        "error_accepted": float(np.mean(err_acc)) if err_acc else float("nan"),
        "error_overall": float(np.mean(err_all)),
        "per_set": {
            n: {k: float(np.mean(v)) if v else float("nan") for k, v in d.items()} for n, d in per_set.items()
        },
        "risk": {
            str(a): {
                "feasible": st["feasible"],
                "exceedances": st["exceed"],
                "exceed_rate": st["exceed"] / splits,
                "coverage": float(np.mean(st["coverage"])),
                "error": float(np.mean(st["error"])) if st["error"] else float("nan"),
            }
            for a, st in risk.items()
        },
    }


def derived_thresholds(data: DevSet, results) -> dict[str, float | None]:
    """``select_threshold`` per alpha on out-of-fold confidences of all development answers.

    What the policy files' accept bands are read from: each answer's confidence comes from a
    calibrator fitted without its fold (the shipped recipe), so the threshold is chosen on data the
    calibrator was not fitted on.
    """
    from sklearn.model_selection import StratifiedKFold

    conf = np.zeros(len(data))
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=0).split(np.zeros(len(data)), data.strata):
        cal = _fit([results[i] for i in tr], data.correct[tr], data.groups[tr])
        conf[te] = cal.predict([results[i] for i in te], check=False)
    out: dict[str, float | None] = {}
    for a in ALPHAS:
        sel = select_threshold(conf, data.correct, alpha=a, delta=DELTA, strict=False)
        out[str(a)] = sel.threshold if sel.feasible else None
        out[f"{a} coverage"] = sel.coverage
    return out


def write_shipped(
    data: DevSet, offset: int, layers: list[int], band: str, mode: str, prof_part: dict
) -> None:
    from semgrad_guard import SemGradScorer
    from semgrad_guard.scoring.identity import weights_fingerprint

    old = json.loads(PROFILE_PATH.read_text())
    scorer = SemGradScorer.from_pretrained("default")
    counts = {n: int((data.groups == n).sum()) for n in NAMES}
    profile = ModelProfile(
        anchor_offset=offset,
        layers=layers,
        exgrad_mode=mode,
        model_id=MODEL_ID,
        weights_sha256=weights_fingerprint(scorer.model),
        chat_template_hash=old["chat_template_hash"],
        data="development sets answered by the model (benchmarks/devsets): "
        + ", ".join(f"{n} {c}" for n, c in counts.items()),
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        source="supervised",
        sps_table=old.get("sps_table"),
        selection={
            "criterion": "mean over data sets of semgrad AUROC for wrong answers; 5-fold cross-validated",
            "band": band,
            "cv_auroc": prof_part["cv_auroc"],
            "leave_one_data_set_out": prof_part["lodo"],
            "sps": {
                "offset": SPS_BEFORE[0],
                "layers": SPS_BEFORE[1],
                **prof_part["named"]["SPS (shipped before)"],
            },
            "report": "benchmarks/results/guard_quality.md",
        },
    )
    profile.save(PROFILE_PATH)
    results = data.results(offset, layers, mode)
    cal = Calibrator.fit(
        results,
        data.correct,
        groups=list(data.groups),
        profile=profile,
        data="development sets (benchmarks/devsets; labels in benchmarks/devsets/collect.py): "
        + ", ".join(f"{n} {c}" for n, c in counts.items())
        + "; features chosen leaving one data set out (Brier)",
    )
    cal.save(CALIBRATOR_PATH)
    print(
        f"wrote {PROFILE_PATH.relative_to(ROOT)} and {CALIBRATOR_PATH.relative_to(ROOT)} ({cal.method}:{cal.features})"
    )


def fmt(v: float) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="write the shipped profile and calibrator")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    data = load()
    prof = profile_part(data)
    offset, band, layers = prof["best"]["offset"], prof["best"]["band"], prof["best"]["layers"]
    ex = exgrad_part(data, offset, layers)
    mean_ex = {m: np.mean(list(ex[m]["exgrad"].values())) for m in ex}
    mode = max(mean_ex, key=lambda m: mean_ex[m])
    if args.write:
        write_shipped(data, offset, layers, band, mode, prof)
    results = data.results(offset, layers, mode)
    calib = calibration_part(data, results, args.splits, args.seed)
    policy = GuardPolicy.from_yaml(README_POLICY)
    pol = policy_part(data, results, policy, args.splits, args.seed)
    pol["derived"] = derived_thresholds(data, results)
    report = {
        "profile": prof,
        "exgrad": ex,
        "exgrad_mode": mode,
        "calibration": calib,
        "policy": pol,
        "n": {n: int((data.groups == n).sum()) for n in NAMES},
        "accuracy": {n: float(data.correct[data.groups == n].mean()) for n in NAMES},
    }
    OUT_JSON.write_text(json.dumps(report, indent=1, default=float) + "\n")
    OUT_MD.write_text(render(report, args, time.perf_counter() - t0))
    print(OUT_MD.read_text())
    return 0


def render(r: dict, args, elapsed: float) -> str:
    p, c, pol = r["profile"], r["calibration"], r["policy"]
    L = [
        "# Guard quality on the development sets (held out from what is fitted)",
        "",
        f"Model: {MODEL_ID} (embedded, float32, CPU). Data: "
        + ", ".join(f"{n} {r['n'][n]} answers (accuracy {r['accuracy'][n]:.2f})" for n in NAMES)
        + " - greedy answers and labels from `benchmarks/devsets/collect.py` (SciQ: a reference occurs in the "
        "answer; TruthfulQA: MiniLM cosine with a reference >= 0.8, a noisy label (see benchmarks/devsets/README.md); RAG: the fact for answerable questions, "
        '"I don\'t know" for unanswerable ones). AUROC: wrong answer = positive, higher score = more likely wrong; '
        "for confidence, lower = more likely wrong.",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}; "
        f"{args.splits} random splits (seed {args.seed}); this report took {elapsed:.0f} s (no model run: scores "
        "were collected once).",
        "",
        "## 1. Where SemGrad looks: profile",
        "",
        f"Chosen by mean per-data-set AUROC: offset **{p['best']['offset']}**, layers **{p['best']['band']}** "
        f"({p['best']['layers'][0]}..{p['best']['layers'][-1]}); 5-fold cross-validated AUROC of this choice "
        f"procedure: **{p['cv_auroc']:.3f}** (folds: {', '.join(f['chosen'] + ' ' + fmt(f['held_out_auroc']) for f in p['folds'])}).",
        "",
        "| data set | choice made on the other two sets | its AUROC here | SPS (-1, upper half), shipped before | default rule (-4, upper half) |",
        "|---|---|---|---|---|",
    ]
    for n in NAMES:
        lo = p["lodo"][n]
        L.append(
            f"| {n} | {lo['offset']} / {lo['band']} | {fmt(lo['auroc'])} | {fmt(p['named']['SPS (shipped before)'][n])} | {fmt(p['named']['default rule'][n])} |"
        )
    L += ["", "Mean AUROC over data sets, every candidate (rows: offset; columns: layer band):", ""]
    bands = list(dict.fromkeys(t["band"] for t in p["table"]))
    L.append("| offset | " + " | ".join(bands) + " |")
    L.append("|---" * (len(bands) + 1) + "|")
    for off in OFFSETS:
        vals = [next(t["auroc"] for t in p["table"] if t["offset"] == off and t["band"] == b) for b in bands]
        L.append(f"| {off} | " + " | ".join(fmt(v) for v in vals) + " |")
    L += [
        "",
        "## 2. exgrad: `logits` or `weight` (the research code's)",
        "",
        "| mode | "
        + " | ".join(f"exgrad {n}" for n in NAMES)
        + " | "
        + " | ".join(f"hybridgrad {n}" for n in NAMES)
        + " |",
        "|---" * (2 * len(NAMES) + 1) + "|",
    ]
    for m in ("logits", "weight"):
        L.append(
            f"| {m} | "
            + " | ".join(fmt(r["exgrad"][m]["exgrad"][n]) for n in NAMES)
            + " | "
            + " | ".join(fmt(r["exgrad"][m]["hybridgrad"][n]) for n in NAMES)
            + " |"
        )
    L += [
        "",
        f"Default chosen: **{r['exgrad_mode']}** (higher mean exgrad AUROC).",
        "",
        "## 3. Default confidence (the shipped calibrator's recipe)",
        "",
        "Each data set judged by a calibrator fitted on the other two (features chosen leaving one data set out):",
        "",
        "| held-out set | n | accuracy | features | AUROC confidence | "
        + " | ".join(f"AUROC {f}" for f in SCORE_FIELDS)
        + " | ECE | mean confidence | ECE, calibrator shipped before |",
        "|---" * (9 + len(SCORE_FIELDS)) + "|",
    ]
    for n in NAMES:
        lo = c["lodo"][n]
        L.append(
            f"| {n} | {lo['n']} | {lo['accuracy']:.3f} | {lo['features']} | **{fmt(lo['confidence'])}** | "
            + " | ".join(fmt(lo[f]) for f in SCORE_FIELDS)
            + f" | {fmt(lo['ece'])} | {fmt(lo['mean_confidence'])} | {fmt(lo.get('ece_before'))} |"
        )
    h = c["halves"]
    L += [
        "",
        f"Random halves stratified by data set (fit on one half, judge the other; mean over {args.splits} splits; "
        "AUROC = mean of the per-set AUROCs):",
        "",
        "| | AUROC confidence | "
        + " | ".join(f"AUROC {f}" for f in SCORE_FIELDS)
        + " | ECE (pooled) | ECE, calibrator shipped before |",
        "|---" * (4 + len(SCORE_FIELDS)) + "|",
        f"| all | **{fmt(h['confidence'])}** | "
        + " | ".join(fmt(h[f]) for f in SCORE_FIELDS)
        + f" | **{fmt(h['ece'])}** | {fmt(h.get('ece_before'))} |",
    ]
    for n in NAMES:
        s = c["halves_per_set"][n]
        L.append(
            f"| {n} | {fmt(s['confidence'])} | "
            + " | ".join(fmt(s[f]) for f in SCORE_FIELDS)
            + f" | {fmt(s['ece'])} | |"
        )
    L += [
        "",
        f"## 4. The README policy (`{README_POLICY.relative_to(ROOT)}`) on held-out halves",
        "",
        "Actions (share of answers): " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(pol["actions"].items())),
        "",
        "| | coverage (accepted) | error among accepted | error overall |",
        "|---|---|---|---|",
        f"| all | {fmt(pol['coverage'])} | {fmt(pol['error_accepted'])} | {fmt(pol['error_overall'])} |",
    ]
    for n in NAMES:
        s = pol["per_set"][n]
        L.append(f"| {n} | {fmt(s['coverage'])} | {fmt(s['err_acc'])} | {fmt(s['err_all'])} |")
    der = pol["derived"]
    certified = [
        f"alpha {a}: {fmt(der[str(a)])} (coverage {der[f'{a} coverage']:.3f})" for a in ALPHAS if der[str(a)]
    ]
    L += [
        "",
        "`select_threshold(alpha, delta=0.1)` on out-of-fold confidences of all 600 development answers (5 folds, "
        "the calibrator refitted without each fold) certifies "
        + ("; ".join(certified) if certified else f"no threshold at alpha {', '.join(map(str, ALPHAS))}")
        + ". Where it certifies none, the bands of the policy files are read off the held-out table above "
        "(their promise is tested in tests/unit/test_shipped_policies.py), not risk-controlled.",
        "",
        f"Risk control (`select_threshold(alpha, delta={DELTA})` on one quarter of the data, error realised on another):",
        "",
        "| alpha | splits with a threshold | exceedances | exceedance rate (all splits) | mean coverage | mean realised error |",
        "|---|---|---|---|---|---|",
    ]
    for a, st in pol["risk"].items():
        L.append(
            f"| {a} | {st['feasible']}/{args.splits} | {st['exceedances']} | {st['exceed_rate']:.3f} | {fmt(st['coverage'])} | {fmt(st['error'])} |"
        )
    L += [
        "",
        "These are development numbers on a 135M-parameter model and three small sets; they say nothing about "
        "larger models, which this machine cannot run.",
        "",
    ]
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
