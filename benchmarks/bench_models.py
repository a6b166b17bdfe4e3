"""One table across models, on development answers held out from every choice that is scored.

Reads the rows ``benchmarks/devsets/collect.py`` wrote (``results/devsets/*.jsonl`` for the embedded
model, ``results/devsets/<registry name>/*.jsonl`` for the others); needs no model. Per model and
development set, leaving that set out of every choice: the SemGrad profile (anchor offset x layer
band, by mean per-set AUROC on the other two sets) and the default confidence (the calibrator fitted
on the other two sets, its features chosen leaving one of those out, as the shipped ones are). Then:
accuracy, AUROC and PRR (wrong answer = positive) of every single score, of the single-pass peers
(RAUQ, LLM-Check's attention score: ``semgrad_guard.eval.single_pass``) and of the confidence, the
confidence's ECE, seconds per answer (generation) and the profile score's overhead over it.

Beside it, how the profile is chosen: the default rule, SPS for a fixed band (upper half), SPS
choosing the band too, and the supervised choice (5-fold cross-validated), each by the mean of the
per-set AUROCs of its SemGrad. SPS tables: the shipped profile's (embedded model) or
``results/sps/<name>.json`` (``benchmarks/sps_table.py``).

``--write NAME`` also writes NAME's shipped profile and calibrator, fitted on all its rows.

Usage: python benchmarks/bench_models.py [--write qwen2.5-coder-0.5b]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.devsets.devdata import DEVSETS, NAMES, OFFSETS, DevSet, load  # noqa: E402
from semgrad_guard import Calibrator, ModelProfile  # noqa: E402
from semgrad_guard.eval.metrics import auroc, prr  # noqa: E402
from semgrad_guard.eval.profile_search import layer_bands, select_from_window  # noqa: E402
from semgrad_guard.eval.single_pass import attention_score, middle_layers, rauq  # noqa: E402
from semgrad_guard.guard.calibration import expected_calibration_error  # noqa: E402
from semgrad_guard.scoring.sps import best_cell  # noqa: E402

OUT_MD = ROOT / "benchmarks" / "results" / "models.md"
OUT_JSON = ROOT / "benchmarks" / "results" / "models.json"
SPS_DIR = ROOT / "benchmarks" / "results" / "sps"
PACKAGE = ROOT / "semgrad_guard"
# label, registry name, rows, shipped file stem
MODELS = [
    ("SmolLM2-135M", "default", DEVSETS, "smollm2-135m-instruct"),
    ("Qwen-0.5B", "qwen2.5-coder-0.5b", DEVSETS / "qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct"),
    ("Qwen-1.5B", "qwen2.5-coder-1.5b", DEVSETS / "qwen2.5-coder-1.5b", "qwen2.5-coder-1.5b-instruct"),
]
# How each model's shipped calibrator chooses its features. The embedded model's (28 November) picks by
# AUROC leaving one data set out; the Qwen calibrators are Platt on the features with the lowest
# 5-fold Brier score on all three sets pooled: the choice that measured best on held-out questions
# for them (models.md), where leave-one-set-out picked features that rank worse on every model.
RECIPE = {"default": "leave one set out", "qwen2.5-coder-0.5b": "pooled", "qwen2.5-coder-1.5b": "pooled"}
SINGLE = ("nll", "mean_nll", "mean_entropy", "exgrad", "semgrad", "hybridgrad")
SEEDS = (0, 1, 2)  # repeats of the 5-fold split of the held-out-questions evaluation
N_BOOT = 1000
PEERS = ("rauq", "attention_score")
DEFAULT_RULE = -3  # offset of the default rule, over the upper half of the layers


def _model_id(name: str) -> str:
    from semgrad_guard.scoring.registry import get_model

    return get_model(name).model_id


def _auroc(scores: np.ndarray, correct: np.ndarray) -> float:
    s = np.asarray(scores, dtype=float)
    if correct.all() or not correct.any() or not np.isfinite(s).all():
        return math.nan
    return float(auroc(s, ~correct))


def _prr(scores: np.ndarray, correct: np.ndarray) -> float:
    s = np.asarray(scores, dtype=float)
    if correct.all() or not correct.any() or not np.isfinite(s).all():
        return math.nan
    return float(prr(s, ~correct))


def peer_scores(rows: list[dict]) -> dict[str, np.ndarray]:
    """RAUQ (middle third of the layers, alpha 0.5) and the attention score (middle layer) per row."""
    out: dict[str, list[float]] = {p: [] for p in PEERS}
    for r in rows:
        if "rauq_attention" not in r:
            out["rauq"].append(math.nan)
            out["attention_score"].append(math.nan)
            continue
        n = len(r["rauq_attention"])
        out["rauq"].append(rauq(r["token_logprobs"], r["rauq_attention"], layers=middle_layers(n)))
        out["attention_score"].append(attention_score(r["attention_logdiag"], layer=n // 2))
    return {k: np.asarray(v) for k, v in out.items()}


def choose_profile(data: DevSet) -> tuple[int, str, list[int], float]:
    """Supervised choice: (offset, band, layers, 5-fold CV estimate of the mean per-set AUROC)."""
    bands = layer_bands(data.window.shape[2])
    best, _, cv, _ = select_from_window(
        data.window, ~data.correct, offsets=OFFSETS, bands=bands, groups=data.groups, folds=5, n_boot=0
    )
    return best.offset, best.band, best.layers, float(cv)


def _fit(dev: DevSet, offset: int, layers: list[int], recipe: str, **kwargs: Any) -> Calibrator:
    """The model's calibrator recipe (``RECIPE``) on ``dev``'s rows under a profile."""
    if recipe == "pooled":
        return Calibrator.fit(dev.results(offset, layers), dev.correct, method="platt", **kwargs)
    groups = list(dev.groups) if len(set(dev.groups)) >= 2 else None
    return Calibrator.fit(dev.results(offset, layers), dev.correct, groups=groups, **kwargs)


def held_out(data: DevSet, held: str, recipe: str) -> dict[str, Any]:
    """Every number of one set, with the profile and the calibrator chosen on the other sets."""
    tr, te = np.flatnonzero(data.groups != held), np.flatnonzero(data.groups == held)
    train, test = data.subset(tr), data.subset(te)
    offset, band, layers, _ = choose_profile(train)
    cal = _fit(train, offset, layers, recipe)
    results = test.results(offset, layers)
    conf = cal.predict(results, check=False)
    y = test.correct
    scores = {f: np.asarray([getattr(r, f) for r in results]) for f in SINGLE}
    scores.update(peer_scores(test.rows))
    scores["confidence"] = -conf
    gen = [r["generate_s"] for r in test.rows if "score_s" in r]
    score_s = [r["score_s"] for r in test.rows if "score_s" in r]
    return {
        "n": len(te),
        "accuracy": float(y.mean()),
        "profile": {"offset": offset, "band": band},
        "features": f"{cal.method}:{'+'.join(cal.features)}",
        "auroc": {k: _auroc(v, y) for k, v in scores.items()},
        "prr": {k: _prr(v, y) for k, v in scores.items()},
        "ece": float(expected_calibration_error(conf, y)),
        "generate_s": float(np.mean(gen)) if gen else None,
        "score_s": float(np.mean(score_s)) if score_s else None,
    }


def _folds(strata: np.ndarray, k: int, seed: int) -> np.ndarray:
    """A fold number per row, every stratum (data set and label) dealt evenly over the k folds."""
    rng, fold = np.random.default_rng(seed), np.zeros(len(strata), dtype=int)
    for s in np.unique(strata):
        idx = rng.permutation(np.flatnonzero(strata == s))
        fold[idx] = np.arange(len(idx)) % k
    return fold


def _singles_at(fixed: dict[str, np.ndarray], idx: np.ndarray, results: list[Any]) -> dict[str, np.ndarray]:
    """Every single score of the rows ``idx`` (the gradient ones from their ``results``)."""
    return {
        **{f: v[idx] for f, v in fixed.items()},
        "semgrad": np.asarray([r.semgrad for r in results]),
        "hybridgrad": np.asarray([r.hybridgrad for r in results]),
    }


def held_out_questions(data: DevSet, recipe: str, folds: int = 5) -> dict[str, Any]:
    """The shipped recipe judged on questions it was not fitted on: nested k-fold over all sets.

    Per fold the whole recipe (profile search, feature choice, fit) sees only the other folds; the
    held-out confidences are pooled over the three sets (the mixture the shipped file is fitted on)
    and compared with every single score on the same rows, the best of them picked two ways: on the
    held-out rows themselves (an oracle, optimistic) and on each fold's training rows (what a user
    could pick). Repeated over ``SEEDS`` splits; the paired bootstrap is over the first split's rows.
    """
    y, peers = data.correct, peer_scores(data.rows)
    fixed = {
        f: np.asarray([r[f] for r in data.rows], dtype=float) for f in ("nll", "mean_nll", "mean_entropy")
    }
    fixed["exgrad"] = np.asarray([r["exgrad_logits"] for r in data.rows], dtype=float)
    runs = []
    for seed in SEEDS:
        fold = _folds(data.strata, folds, seed)
        conf, picked = np.zeros(len(y)), np.zeros(len(y))
        sg, hg = np.zeros(len(y)), np.zeros(len(y))
        chosen = []
        for k in range(folds):
            tr, te = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
            train, test = data.subset(tr), data.subset(te)
            offset, _, layers, _ = choose_profile(train)
            cal = _fit(train, offset, layers, recipe)
            chosen.append("+".join(cal.features))
            res = test.results(offset, layers)
            conf[te] = cal.predict(res, check=False)
            held = _singles_at(fixed, te, res)
            sg[te], hg[te] = held["semgrad"], held["hybridgrad"]
            # the single score a user would pick on this fold's training rows; folds may pick
            # different scores, so their training quantiles put them on one scale
            own = _singles_at(fixed, tr, train.results(offset, layers))
            best = max(own, key=lambda f: _auroc(own[f], train.correct))
            picked[te] = np.searchsorted(np.sort(own[best]), held[best]) / len(tr)
        singles = {**fixed, "semgrad": sg, "hybridgrad": hg, **peers}
        aurocs = {f: _auroc(v, y) for f, v in singles.items()}
        oracle = max((f for f in aurocs if not math.isnan(aurocs[f])), key=lambda f: aurocs[f])
        runs.append(
            {
                "conf": conf,
                "auroc": {**aurocs, "confidence": _auroc(-conf, y), "picked single": _auroc(picked, y)},
                "oracle": oracle,
                "ece": float(expected_calibration_error(conf, y)),
                "per_set": {
                    g: {
                        "accuracy": float(y[m].mean()),
                        "mean_confidence": float(conf[m].mean()),
                        "auroc": _auroc(-conf[m], y[m]),
                        "ece": float(expected_calibration_error(conf[m], y[m])),
                    }
                    for g in NAMES
                    for m in [data.groups == g]
                },
                "features": sorted(set(chosen)),
                "oracle_scores": singles[oracle],
            }
        )
    # paired bootstrap of AUROC(confidence) - AUROC(oracle single), first split
    first = runs[0]
    rng = np.random.default_rng(0)
    diffs = []
    for _ in range(N_BOOT):
        i = rng.integers(0, len(y), len(y))
        if y[i].all() or not y[i].any():
            continue
        diffs.append(_auroc(-first["conf"][i], y[i]) - _auroc(first["oracle_scores"][i], y[i]))
    keys = runs[0]["auroc"].keys()
    return {
        "n": len(y),
        "accuracy": float(y.mean()),
        "splits": len(SEEDS),
        "auroc": {k: float(np.mean([r["auroc"][k] for r in runs])) for k in keys},
        "oracle": sorted({r["oracle"] for r in runs}),
        "oracle_auroc": float(np.mean([r["auroc"][r["oracle"]] for r in runs])),
        "ece": float(np.mean([r["ece"] for r in runs])),
        "ece_max": float(np.max([r["ece"] for r in runs])),
        "diff_interval": [float(np.quantile(diffs, 0.05)), float(np.quantile(diffs, 0.95))],
        "per_set": {
            g: {k: float(np.mean([r["per_set"][g][k] for r in runs])) for k in runs[0]["per_set"][g]}
            for g in NAMES
        },
        "features": sorted({f for r in runs for f in r["features"]}),
    }


def sps_table(name: str, stem: str) -> dict[int, list[float]] | None:
    path = SPS_DIR / f"{name}.json"
    if path.exists():
        raw = json.loads(path.read_text())["table"]
    else:
        shipped = PACKAGE / "profiles" / f"{stem}.json"
        raw = json.loads(shipped.read_text()).get("sps_table") if shipped.exists() else None
    return None if raw is None else {int(k): v for k, v in raw.items()}


def profile_choices(data: DevSet, table: dict[int, list[float]] | None) -> dict[str, Any]:
    """Mean per-set AUROC of SemGrad where the default rule, SPS and the supervised search look."""
    n_layers = data.window.shape[2]
    bands = layer_bands(n_layers)

    def mean_auroc(offset: int, layers: list[int]) -> float:
        sem = data.window[:, OFFSETS.index(offset), layers].mean(axis=1)
        vals = [_auroc(sem[data.groups == g], data.correct[data.groups == g]) for g in NAMES]
        return float(np.nanmean(vals))

    out: dict[str, Any] = {}
    out["default rule"] = {"offset": DEFAULT_RULE, "band": "upper half"}
    if table is not None:
        upper = bands["upper half"]
        o = max(table, key=lambda k: np.mean([table[k][i] for i in upper]))
        out["SPS, upper half"] = {
            "offset": o,
            "band": "upper half",
            "sps": float(np.mean([table[o][i] for i in upper])),
        }
        o, b, _, s = best_cell(table, bands)
        out["SPS, band too"] = {"offset": o, "band": b, "sps": float(s)}
    offset, band, _, cv = choose_profile(data)
    out["supervised (CV)"] = {"offset": offset, "band": band, "cv_auroc": cv}
    for v in out.values():
        v["auroc"] = mean_auroc(v["offset"], bands[v["band"]])
    return out


def evaluate(label: str, name: str, folder: Path, stem: str) -> dict[str, Any] | None:
    names = tuple(n for n in NAMES if (folder / f"{n}.jsonl").exists())
    if len(names) < len(NAMES):
        return None
    data = load(names, folder, model_id=_model_id(name))
    return {
        "label": label,
        "name": name,
        "recipe": RECIPE[name],
        "held_out_questions": held_out_questions(data, RECIPE[name]),
        "sets": {held: held_out(data, held, RECIPE[name]) for held in NAMES},
        "choices": profile_choices(data, sps_table(name, stem)),
    }


def write_shipped(name: str, stem: str, folder: Path) -> str:
    """Fit NAME's profile (supervised) and calibrator on all its rows; write them into the package."""
    from semgrad_guard import SemGradScorer
    from semgrad_guard.scoring.identity import weights_fingerprint
    from semgrad_guard.scoring.profile import chat_template_hash

    data = load(NAMES, folder, model_id=_model_id(name))
    offset, band, layers, cv = choose_profile(data)
    path = PACKAGE / "profiles" / f"{stem}.json"
    if path.exists():  # a refit: the model's identity is the one already shipped (no load needed)
        old = ModelProfile.load(path)
        weights, template = old.weights_sha256, old.chat_template_hash
    else:
        scorer = SemGradScorer.from_pretrained(name)
        weights, template = weights_fingerprint(scorer.model), chat_template_hash(scorer.chat_template)
    counts = ", ".join(f"{n} {int((data.groups == n).sum())}" for n in NAMES)
    table = sps_table(name, stem)
    choices = profile_choices(data, table)
    lodo = {}
    for held in NAMES:
        o, b, _, _ = choose_profile(data.subset(np.flatnonzero(data.groups != held)))
        lodo[held] = {"offset": o, "band": b}
    profile = ModelProfile(
        anchor_offset=offset,
        layers=layers,
        exgrad_mode="logits",
        model_id=data.model_id,
        weights_sha256=weights,
        chat_template_hash=template,
        data=f"development sets answered by the model (benchmarks/devsets, {name}): {counts}",
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        source="supervised",
        sps_table={str(k): v for k, v in table.items()} if table else None,
        selection={
            "criterion": "mean over data sets of semgrad AUROC for wrong answers; 5-fold cross-validated",
            "band": band,
            "cv_auroc": cv,
            "leave_one_data_set_out": lodo,
            "beside": choices,
            "report": "benchmarks/results/models.md",
        },
    )
    profile.save(path)
    how = "by 5-fold Brier score, sets pooled" if RECIPE[name] == "pooled" else "leaving one data set out"
    cal = _fit(
        data,
        offset,
        layers,
        RECIPE[name],
        profile=profile,
        data=f"development sets (benchmarks/devsets, {name}; labels in benchmarks/devsets/README.md): "
        f"{counts}; features chosen {how}; held-out numbers: benchmarks/results/models.md",
    )
    cal.save(PACKAGE / "calibrators" / f"{stem}.json")
    return f"wrote profiles/{stem}.json ({offset}, {band}) and calibrators/{stem}.json ({cal.method}:{cal.features})"


def _f(v: float | None, digits: int = 2) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


COLS = [
    ("nll", "nll"),
    ("mean_nll", "mnll"),
    ("mean_entropy", "ment"),
    ("exgrad", "exgr"),
    ("semgrad", "sg"),
    ("rauq", "rauq"),
    ("attention_score", "attn"),
    ("confidence", "conf"),
]


def render(models: list[dict[str, Any]], skipped: list[str], machine: str) -> str:
    lines = [
        "# One table across models (development sets, held out from the choices scored on them)",
        "",
        "Made by `python benchmarks/bench_models.py` from the rows `benchmarks/devsets/collect.py --model NAME`",
        "wrote (labels as in [devsets/README.md](../devsets/README.md)). Two held-out views: new questions",
        "of the kinds the shipped files were fitted on (nested 5-fold over all three sets), and a kind of",
        "task never seen (each set left out of every choice in turn).",
        "",
        "## New questions: the shipped recipe on questions it was not fitted on",
        "",
        "Per fold, the SemGrad profile search, the calibrator's feature choice and its fit see only the",
        f"other four folds; {len(SEEDS)} random splits, averaged. `conf` is the default confidence's AUROC",
        "for wrong answers over all held-out answers; `best single` is the best of every single score",
        "(peers included) picked on the held-out rows themselves (an oracle), `picked` the single score",
        "chosen on each fold's training rows; `conf - best` is a paired bootstrap 90% interval (first",
        "split). ECE over 10 bins on all held-out answers (mean of the splits, worst in brackets), then",
        "per set: a set's base rate differs from the mixture's, which the review loop corrects",
        "([docs/feedback.md](../../docs/feedback.md)).",
        "",
        "| model | n | acc | conf | best single | picked | conf - best | ECE | ECE sciq / tqa / rag |",
        "|---|--:|--:|--:|---|--:|---|---|---|",
    ]
    for m in models:
        h = m["held_out_questions"]
        lo, hi = h["diff_interval"]
        per = " / ".join(f"{h['per_set'][g]['ece']:.2f}" for g in NAMES)
        lines.append(
            f"| {m['label']} | {h['n']} | {h['accuracy']:.2f} | {h['auroc']['confidence']:.3f} | "
            f"{h['oracle_auroc']:.3f} ({', '.join(h['oracle'])}) | {h['auroc']['picked single']:.3f} | "
            f"{lo:+.3f} .. {hi:+.3f} | {h['ece']:.3f} ({h['ece_max']:.3f}) | {per} |"
        )
    lines += ["", "| model | recipe | features chosen in the folds |", "|---|---|---|"]
    for m in models:
        feats = "; ".join(m["held_out_questions"]["features"])
        lines.append(f"| {m['label']} | {m['recipe']} | {feats} |")
    lines += [
        "",
        "## A kind of task never seen: each set held out of every choice",
        "",
        "For each set, the SemGrad profile and the calibrator behind `conf` were chosen on the other two",
        "sets only. ECE here measures how far one set's base rate is from the others': what audit and",
        "review labels fix on the deployment's own data ([docs/feedback.md](../../docs/feedback.md)).",
        "",
        "### AUROC for wrong answers",
        "",
        "| model | set | n | acc | " + " | ".join(c for _, c in COLS) + " |",
        "|---|---|--:|--:|" + "--:|" * len(COLS),
    ]
    for m in models:
        for s, r in m["sets"].items():
            lines.append(
                f"| {m['label']} | {s} | {r['n']} | {r['accuracy']:.2f} | "
                + " | ".join(_f(r["auroc"].get(k)) for k, _ in COLS)
                + " |"
            )
    lines += ["", "### PRR (prediction rejection ratio) and calibration", ""]
    lines += [
        "| model | set | " + " | ".join(c for _, c in COLS) + " | ECE |",
        "|---|---|" + "--:|" * (len(COLS) + 1),
    ]
    for m in models:
        for s, r in m["sets"].items():
            lines.append(
                f"| {m['label']} | {s} | "
                + " | ".join(_f(r["prr"].get(k)) for k, _ in COLS)
                + f" | {_f(r['ece'], 3)} |"
            )
    lines += ["", "### Cost and what was chosen", ""]
    lines += [
        "| model | set | gen s/ans | score s | overhead | profile | confidence features |",
        "|---|---|--:|--:|--:|---|---|",
    ]
    for m in models:
        for s, r in m["sets"].items():
            g, sc = r["generate_s"], r["score_s"]
            over = f"{100 * sc / g:.0f}%" if g and sc is not None else "-"
            lines.append(
                f"| {m['label']} | {s} | {_f(g, 1)} | {_f(sc, 1)} | {over} | "
                f"{r['profile']['offset']} / {r['profile']['band']} | {r['features']} |"
            )
    lines += ["", "## Where SemGrad looks: default rule, SPS, supervised", ""]
    lines += ["| model | choice | offset / band | SPS | mean AUROC |", "|---|---|---|--:|--:|"]
    for m in models:
        for label, c in m["choices"].items():
            sps = _f(c.get("sps"), 3)
            lines.append(
                f"| {m['label']} | {label} | {c['offset']} / {c['band']} | {sps} | {_f(c['auroc'], 3)} |"
            )
    lines += [
        "",
        "Columns: nll, mean_nll (mnll), mean_entropy (ment), exgrad (exgr), SemGrad at the held-out",
        "profile (sg), RAUQ (middle third of the layers, alpha 0.5), the attention score (attn, middle",
        "layer) and the default confidence (conf); `-` where a set has one class or a score is missing.",
        "ECE over 10 bins of the held-out confidence. `gen s/ans` is generation alone, `score s` the",
        "profile score `generate()` adds (from generation's own cache): the scoring overhead.",
        "SmolLM2-135M's development answers were collected before these timings existed (`-`); its",
        "scoring overhead is measured in [scoring_cpu.md](scoring_cpu.md) (one quiet run: the pass adds",
        "10.6% to generation at a 110-token prompt and 7.7% at 1,012 tokens, 41-token answers).",
        "Mean AUROC is over the three sets, on all rows; SPS is label-free (its AUROC is held out), the",
        "supervised cell is chosen on the same rows (its 5-fold estimate is in models.json).",
        "",
        f"Machine: {machine}.",
    ]
    lines += [f"{s}: not run on this machine (no development answers collected)." for s in skipped]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--write", default=None, help="write this registry name's shipped profile and calibrator"
    )
    parser.add_argument("--machine", default=f"{platform.machine()} CPU, {platform.system()}")
    args = parser.parse_args(argv)
    logging.getLogger("semgrad_guard").setLevel(logging.ERROR)  # drift notices of held-out predictions
    if args.write:
        spec = next(m for m in MODELS if m[1] == args.write)
        print(write_shipped(args.write, spec[3], spec[2]))
    models, skipped = [], []
    for label, name, folder, stem in MODELS:
        r = evaluate(label, name, folder, stem)
        if r is None:
            skipped.append(label)
        else:
            models.append(r)
    OUT_JSON.write_text(json.dumps({"models": models, "skipped": skipped}, indent=1, default=float) + "\n")
    OUT_MD.write_text(render(models, skipped, args.machine))
    print(OUT_MD.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
