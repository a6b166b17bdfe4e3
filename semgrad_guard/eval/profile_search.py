"""Choosing a profile by what it is for: cross-validated error-detection AUROC on labelled answers.

SPS (:mod:`semgrad_guard.scoring.sps`) picks the anchor whose hidden states best keep a question's meaning
across paraphrases: label-free, but on the embedded model it picked the worst anchor for detection
(docs/method.md). When labelled answers exist, choose where SemGrad looks by what it must do:

1. one teacher-forced pass per answer with the anchor at ``-window`` and gradients from hidden-state
   index 0 gives SemGrad at every candidate offset and every layer (``score_ids(window=True)``);
2. every (offset, layer band) candidate is scored by AUROC for telling wrong answers from right ones;
3. the choice is cross-validated: in each of ``folds`` stratified folds the candidate best on the
   other folds is measured on the held-out fold; the mean of those is the honest estimate
   (``cv_auroc``), since the best of 40 candidates on all data is optimistic;
4. the profile is the candidate best on all data, with the whole table, the fold results, the
   bootstrap interval and (when given) the SPS choice's AUROC beside it stored in ``selection``.

Torch is only needed by :func:`select_profile`; :func:`select_from_window` works on arrays.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigurationError, MetricError
from ..messages import Messages
from ..scoring.profile import ModelProfile, chat_template_hash
from .metrics import auroc, bootstrap

DEFAULT_WINDOW = 8


def layer_bands(num_layers: int) -> dict[str, list[int]]:
    """Candidate layer sets over hidden-state indices 0..num_layers-1."""
    n = num_layers
    return {
        "upper half": list(range(n - n // 2, n)),
        "top quarter": list(range(n - max(1, n // 4), n)),
        "middle half": list(range(n // 4, n - n // 4)) or [0],
        "lower half": list(range(1, n - n // 2)) or [0],
        "all": list(range(1, n)) or [0],
    }


@dataclass
class Candidate:
    """One place SemGrad can look: an anchor offset and a layer band."""

    offset: int
    band: str
    layers: list[int]

    @property
    def key(self) -> str:
        return f"{self.offset}/{self.band}"


@dataclass
class ProfileSelection:
    """The chosen profile and the evidence for it."""

    profile: ModelProfile
    chosen: Candidate
    table: list[dict[str, Any]]
    """Every candidate: offset, band, auroc with its bootstrap interval (all data)."""
    cv_auroc: float
    """Mean held-out-fold AUROC of the candidate chosen on the other folds (the honest estimate)."""
    cv_folds: list[dict[str, Any]] = field(default_factory=list)
    n: int = 0
    n_errors: int = 0
    sps: dict[str, Any] | None = None
    """The SPS choice (offset, layers) and its AUROC on the same answers, when an SPS profile was given."""


def candidates(offsets: Sequence[int], bands: dict[str, list[int]]) -> list[Candidate]:
    return [Candidate(o, b, list(layers)) for o in offsets for b, layers in bands.items()]


def candidate_values(window: np.ndarray, offsets: Sequence[int], cand: Candidate) -> np.ndarray:
    """SemGrad of one candidate for every answer: the mean of its layers at its offset.

    ``window[i, j, l]`` is answer i's SemGrad at offset ``offsets[j]`` and hidden-state index l.
    """
    j = list(offsets).index(cand.offset)
    return np.asarray(window[:, j, cand.layers].mean(axis=1))


def _safe_auroc(values: np.ndarray, errors: np.ndarray, groups: np.ndarray | None = None) -> float:
    """AUROC, or the mean of the per-group AUROCs when ``groups`` is given (NaN when undefined)."""
    if groups is None:
        try:
            return auroc(values, errors)
        except MetricError:
            return float("nan")
    per = [_safe_auroc(values[groups == g], errors[groups == g]) for g in np.unique(groups)]
    per = [v for v in per if not np.isnan(v)]
    return float(np.mean(per)) if per else float("nan")


def select_from_window(
    window: np.ndarray,
    errors: Sequence[bool] | np.ndarray,
    *,
    offsets: Sequence[int],
    bands: dict[str, list[int]],
    folds: int = 5,
    seed: int = 0,
    n_boot: int = 1000,
    groups: Sequence[str] | np.ndarray | None = None,
) -> tuple[Candidate, list[dict[str, Any]], float, list[dict[str, Any]]]:
    """Choose (offset, band) by AUROC with a cross-validated estimate. Returns (choice, table, cv, folds).

    With ``groups`` (the data set of each answer) the criterion is the mean of the per-group AUROCs:
    a pooled AUROC would reward a score for telling the data sets apart.
    """
    from sklearn.model_selection import StratifiedKFold

    e = np.asarray(errors, dtype=bool)
    g = None if groups is None else np.asarray(groups)
    n_err = int(e.sum())
    if n_err < 2 or len(e) - n_err < 2:
        raise ConfigurationError(
            f"choosing a profile needs at least 2 right and 2 wrong answers; got {len(e) - n_err} right, "
            f"{n_err} wrong"
        )
    cands = candidates(offsets, bands)
    values = {c.key: candidate_values(window, offsets, c) for c in cands}
    table = []
    for c in cands:
        row: dict[str, Any] = {"offset": c.offset, "band": c.band, "auroc": _safe_auroc(values[c.key], e, g)}
        if g is None:
            iv = bootstrap(auroc, values[c.key], e, n_resamples=n_boot, seed=seed)
            row.update(low=iv.low, high=iv.high)
        else:
            for name in np.unique(g):
                row[f"auroc[{name}]"] = _safe_auroc(values[c.key][g == name], e[g == name])
        table.append(row)
    best = max(cands, key=lambda c: np.nan_to_num(_safe_auroc(values[c.key], e, g), nan=-1))
    strata = e.astype(int) if g is None else np.asarray([f"{a}|{b}" for a, b in zip(g, e, strict=True)])
    k = max(2, min(folds, int(np.unique(strata, return_counts=True)[1].min())))
    fold_results = []
    for train, test in StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(e)), strata):
        g_train = None if g is None else g[train]
        g_test = None if g is None else g[test]
        pick = max(
            cands, key=lambda c: np.nan_to_num(_safe_auroc(values[c.key][train], e[train], g_train), nan=-1)
        )
        fold_results.append(
            {"chosen": pick.key, "held_out_auroc": _safe_auroc(values[pick.key][test], e[test], g_test)}
        )
    cv = float(np.nanmean([f["held_out_auroc"] for f in fold_results]))
    return best, table, cv, fold_results


def select_profile(
    scorer: Any,
    labelled: Sequence[tuple[Messages, str, bool]],
    *,
    window: int = DEFAULT_WINDOW,
    bands: dict[str, list[int]] | None = None,
    folds: int = 5,
    seed: int = 0,
    sps_profile: ModelProfile | None = None,
    data: str | None = None,
    batch_size: int = 8,
    progress: Callable[[int], Any] | None = None,
) -> ProfileSelection:
    """Choose anchor and layers for ``scorer``'s model from labelled answers (messages, answer, correct).

    Label the answers as they will be judged in deployment, rendered with the deployment prompt.
    The anchor offsets tried are -1..-window (capped by the shortest prompt).
    """
    from ..scoring.fastpath import ScoringInput, score_ids

    if len(labelled) < 10:
        raise ConfigurationError(
            f"choosing a profile needs at least 10 labelled answers, got {len(labelled)}"
        )
    examples, errors = [], []
    for i, item in enumerate(labelled):
        if len(item) != 3:
            raise ConfigurationError(
                f"labelled[{i}] must be (messages, answer, correct), got {len(item)} items"
            )
        messages, answer, correct = item
        if not isinstance(correct, bool):
            raise ConfigurationError(f"labelled[{i}]: correct must be true or false, got {correct!r}")
        x = scorer.prompt_ids(messages)
        examples.append(ScoringInput(x, scorer.answer_ids(messages, answer, prompt_ids=x)))
        errors.append(not correct)
    num_layers = scorer.adapter.num_layers
    w = min(window, min(len(e.prompt_ids) for e in examples))
    offsets = list(range(-w, 0))
    all_layers = list(range(num_layers))
    rows: list[list[list[float]]] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        raws = score_ids(scorer.adapter, chunk, anchor_offset=-w, layers=all_layers, window=True)
        rows += [r.window_semgrad for r in raws]
        if progress is not None:
            progress(len(chunk))
    win = np.asarray(rows, dtype=float)  # (N, w, L)
    bands = bands or layer_bands(num_layers)
    best, table, cv, fold_results = select_from_window(
        win, errors, offsets=offsets, bands=bands, folds=folds, seed=seed
    )
    sps_info = None
    if sps_profile is not None and sps_profile.anchor_offset in offsets:
        sps_c = Candidate(sps_profile.anchor_offset, "sps layers", list(sps_profile.layers))
        v = candidate_values(win, offsets, sps_c)
        iv = bootstrap(auroc, v, np.asarray(errors), seed=seed)
        sps_info = {
            "offset": sps_c.offset,
            "layers": sps_c.layers,
            "auroc": iv.value,
            "low": iv.low,
            "high": iv.high,
        }
    e = np.asarray(errors)
    profile = ModelProfile(
        anchor_offset=best.offset,
        layers=best.layers,
        exgrad_mode=scorer.exgrad_mode,
        model_id=scorer.model_id,
        chat_template_hash=chat_template_hash(scorer.chat_template),
        data=data,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        source="supervised",
        selection={
            "criterion": f"semgrad AUROC for wrong answers, {len(fold_results)}-fold cross-validated choice",
            "band": best.band,
            "n": len(e),
            "n_wrong": int(e.sum()),
            "cv_auroc": cv,
            "folds": fold_results,
            "table": table,
            "sps": sps_info,
        },
    )
    return ProfileSelection(
        profile=profile,
        chosen=best,
        table=table,
        cv_auroc=cv,
        cv_folds=fold_results,
        n=len(e),
        n_errors=int(e.sum()),
        sps=sps_info,
    )
