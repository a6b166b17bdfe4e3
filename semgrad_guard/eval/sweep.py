"""``--sweep-anchor``: AUROC of semgrad for every candidate anchor offset and layer band, next to SPS.

SPS is computed on paraphrase groups whose questions are *not* among the evaluated ones (matched
on normalised question text), so the table shows whether SPS would have picked well on held-out
data. The cached greedy answers are re-scored (teacher-forced) under each candidate profile.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError, MetricError
from ..progress import progress_display
from ..scoring.paraphrases import read_paraphrase_groups
from ..scoring.profile import ModelProfile
from .correctness import normalize
from .data import PromptTemplate, Question
from .metrics import auroc
from .runner import scoring_inputs


def layer_bands(num_layers: int) -> dict[str, list[int]]:
    """Candidate layer sets: lower half, upper half (the default), top quarter, all but the embeddings."""
    n = num_layers
    upper = list(range(n - n // 2, n))
    return {
        "lower half": list(range(1, n - n // 2)) or [0],
        "upper half": upper,
        "top quarter": list(range(n - max(1, n // 4), n)),
        "all": list(range(1, n)) or [0],
    }


DEFAULT_SPS_GROUPS = 64
"""Paraphrase groups the sweep's SPS uses unless told otherwise (x 5 questions = 320 prompts)."""
MIN_SPS_GROUPS, MAX_SPS_GROUPS = 2, 1024


def held_out_groups(
    path: str | Path, evaluated: Sequence[Question], *, limit: int, per_group: int | None = None
) -> list[list[str]]:
    """Paraphrase groups from ``path`` whose original question is not among ``evaluated``."""
    seen = {normalize(q.question) for q in evaluated}
    groups = read_paraphrase_groups(
        path, limit=limit, per_group=per_group, exclude=lambda q: normalize(q) in seen
    )
    p = Path(path)
    if len(groups) < 2:
        raise ConfigurationError(
            f"{p}: fewer than 2 paraphrase groups outside the evaluated questions; evaluate a part of the "
            "data (--limit) and leave the rest for SPS"
        )
    return groups


def sweep_anchor(
    scorer: Any,
    questions: Sequence[Question],
    generations: dict[str, dict[str, Any]],
    correct: dict[str, bool],
    *,
    template: PromptTemplate,
    sps_data: str | Path,
    sps_groups: int = DEFAULT_SPS_GROUPS,
    per_group: int | None = 5,
    window: int = 8,
    bands: dict[str, list[int]] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """SPS table on held-out paraphrases and semgrad AUROC per (offset, band) on ``questions``."""
    from ..scoring.sps import compute_sps

    if not MIN_SPS_GROUPS <= sps_groups <= MAX_SPS_GROUPS:
        raise ConfigurationError(
            f"sps_groups must be between {MIN_SPS_GROUPS} and {MAX_SPS_GROUPS}, got {sps_groups}; "
            f"SPS settles with a few dozen groups (default {DEFAULT_SPS_GROUPS})"
        )
    groups = held_out_groups(sps_data, questions, limit=sps_groups, per_group=per_group)
    with progress_display(progress) as sps_bar:
        sps_task = sps_bar.add_task(
            f"SPS on {len(groups)} held-out paraphrase groups", total=sum(len(g) for g in groups)
        )
        sps = compute_sps(
            scorer,
            groups,
            window=window,
            system_prompt=template.system,
            user_template=template.user,
            data=str(sps_data),
            progress=lambda n: sps_bar.advance(sps_task, n),
        )
    num_layers = len(next(iter(sps.table.values())))
    bands = bands or layer_bands(num_layers)
    # One pass per offset over the union of the bands' layers: a band's semgrad is the mean of its
    # layers' values (SemGradScorer.semgrad_by_layer), identical to scoring each band on its own.
    union = sorted({layer for layers in bands.values() for layer in layers})
    examples = scoring_inputs(
        scorer, [template.messages(q.question) for q in questions], [generations[q.id] for q in questions]
    )
    errors = [not correct[q.id] for q in questions]
    offsets = sorted(sps.table, reverse=True)
    bar = progress_display(progress)
    task = bar.add_task(
        f"sweep {len(offsets)} anchors x {len(examples)} answers", total=len(offsets) * len(examples)
    )
    rows = []
    with bar:  # stops the bar on errors too
        for offset in offsets:
            row: dict[str, Any] = {
                "offset": offset,
                "token": sps.anchor_tokens.get(offset),
                "auroc": {},
                "sps": {},
            }
            means = {b: sps.mean_over(layers)[offset] for b, layers in bands.items()}
            candidate = scorer.with_profile(ModelProfile(anchor_offset=offset, layers=union, source="user"))
            by_layer: list[dict[int, float]] = []
            for start in range(0, len(examples), 32):
                chunk = examples[start : start + 32]
                by_layer += candidate.semgrad_by_layer(chunk)
                bar.advance(task, len(chunk))
            for band, layers in bands.items():
                values = [sum(v[layer] for layer in layers) / len(layers) for v in by_layer]
                try:
                    row["auroc"][band] = auroc(values, errors)
                except MetricError:
                    row["auroc"][band] = None
                row["sps"][band] = means[band]
            rows.append(row)
    return {
        "n": len(questions),
        "sps_data": str(sps_data),
        "sps_groups": len(groups),
        "sps_source": f"{len(groups)} groups of up to {per_group} questions, none evaluated",
        "sps_offset": sps.profile.anchor_offset,
        "sps_layers": sps.profile.layers,
        "bands": list(bands),
        "band_layers": bands,
        "rows": rows,
        "sps_table": {str(o): v for o, v in sps.table.items()},
    }
