"""Semantic Preservation Score (SPS): choosing the anchor offset and layers for a model (docs/method.md).

For groups of semantically equivalent questions, rendered exactly as in deployment, SPS(o, l) is how
much more alike (centred cosine) the hidden states ``h_l[len(x)+o]`` are within a group than across
groups. The profile's anchor is the offset whose mean SPS over the layer set is highest.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ConfigurationError
from .paraphrases import read_paraphrase_groups
from .profile import ModelProfile, chat_template_hash, default_layers

if TYPE_CHECKING:
    from .hf_scorer import SemGradScorer


@dataclass
class SPSResult:
    """The SPS table and the profile chosen from it."""

    table: dict[int, list[float]]
    """offset -> SPS per hidden-state index (0 .. L-1)."""
    profile: ModelProfile
    anchor_tokens: dict[int, str]
    """offset -> the token at that offset in the first rendered prompt (the template's tail)."""
    n_groups: int
    n_prompts: int

    def mean_over(self, layers: Sequence[int]) -> dict[int, float]:
        """Mean SPS over ``layers`` for every offset."""
        return {o: sum(row[layer] for layer in layers) / len(layers) for o, row in self.table.items()}


def load_paraphrase_groups(
    path: str | Path, *, limit: int | None = None, per_group: int | None = None, skip: int = 0
) -> list[list[str]]:
    """Read JSONL with ``query`` (or ``question``) and ``paraphrases``; one group = original + paraphrases."""
    groups = read_paraphrase_groups(path, limit=limit, per_group=per_group, skip=skip)
    if len(groups) < 2:
        raise ConfigurationError(f"{path}: SPS needs at least 2 groups of >= 2 equivalent questions")
    return groups


def best_cell(
    table: Mapping[int, Sequence[float]], bands: Mapping[str, Sequence[int]]
) -> tuple[int, str, list[int], float]:
    """The (offset, band) cell of an SPS table with the highest mean SPS over the band's layers.

    Returns ``(offset, band name, layers, mean SPS)``; ties go to the offset nearer the end, then the
    band listed first.

    Example:
        >>> best_cell({-1: [0.0, 0.2, 0.6], -2: [0.0, 0.5, 0.5]}, {"top": [2], "upper": [1, 2]})
        (-1, 'top', [2], 0.6)
    """
    if not table or not bands or any(not layers for layers in bands.values()):
        raise ConfigurationError("choosing an SPS cell needs a non-empty table and non-empty layer bands")
    cells = []
    for rank, (name, layers) in enumerate(bands.items()):
        for offset, row in table.items():
            if any(not 0 <= layer < len(row) for layer in layers):
                raise ConfigurationError(f"band {name!r} has layers outside the table's {len(row)}")
            cells.append(
                (sum(row[layer] for layer in layers) / len(layers), offset, -rank, name, list(layers))
            )
    sps, offset, _, name, layers = max(cells)
    return offset, name, layers, sps


@torch.no_grad()
def compute_sps(
    scorer: SemGradScorer,
    groups: Sequence[Sequence[str]],
    *,
    window: int = 8,
    system_prompt: str | None = None,
    user_template: str = "{question}",
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    data: str | None = None,
    progress: Callable[[int], Any] | None = None,
    bands: Mapping[str, Sequence[int]] | None = None,
) -> SPSResult:
    """Compute SPS(o, l) for o in -1..-window and every hidden-state index, and the resulting profile.

    Args:
        scorer: the scorer whose model and chat template are profiled.
        groups: lists of equivalent questions (an original and >= 1 paraphrase).
        window: number of candidate offsets.
        system_prompt / user_template: how a question is rendered in deployment.
        layers: the layer set S the anchor is chosen for (default: the upper half).
        progress: called with the number of prompts done after each batch.
        bands: candidate layer sets by name (``semgrad_guard.eval.profile_search.layer_bands``): SPS
            then chooses the band too, the (offset, band) cell of highest mean SPS (:func:`best_cell`),
            and ``layers`` is ignored. Off by default: on the development sets it lowered SemGrad's
            AUROC on the embedded model (0.552 vs 0.586) and left it as it was on
            Qwen2.5-Coder-0.5B (0.667 vs 0.665; benchmarks/results/models.md).
    """
    if len(groups) < 2 or any(len(g) < 2 for g in groups):
        raise ConfigurationError("SPS needs at least 2 groups, each of at least 2 equivalent questions")
    model = scorer.model
    device = next(model.parameters()).device
    prompts: list[list[int]] = []
    group_of: list[int] = []
    for gi, group in enumerate(groups):
        for q in group:
            chat: list[dict[str, str]] = []
            if system_prompt:
                chat.append({"role": "system", "content": system_prompt})
            chat.append({"role": "user", "content": user_template.format(question=q)})
            prompts.append(scorer.prompt_ids(chat))
            group_of.append(gi)
    num_layers = scorer.adapter.num_layers
    shortest = min(len(p) for p in prompts)
    window = min(window, shortest)
    # vectors[o][l]: (N, d) hidden states at offset o, hidden-state index l
    vectors: dict[int, list[list[torch.Tensor]]] = {
        -o: [[] for _ in range(num_layers)] for o in range(1, window + 1)
    }
    pad = scorer.eos_token_ids[0]
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        n = max(len(p) for p in batch)
        ids = torch.full((len(batch), n), pad, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        pos = torch.zeros_like(ids)
        for i, p in enumerate(batch):  # left padding: offset -o is column n - o in every row
            ids[i, n - len(p) :] = torch.tensor(p)
            mask[i, n - len(p) :] = 1
            pos[i, n - len(p) :] = torch.arange(len(p))
        out = scorer.adapter.base(
            input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True, use_cache=False
        )
        hs = out.hidden_states
        for o in range(1, window + 1):
            for layer in range(num_layers):
                vectors[-o][layer].append(hs[layer][:, n - o].float().cpu())
        if progress is not None:
            progress(len(batch))

    groups_t = torch.tensor(group_of)
    same = groups_t[:, None] == groups_t[None, :]
    off_diag = ~torch.eye(len(group_of), dtype=torch.bool)
    same_pairs, diff_pairs = same & off_diag, ~same
    table: dict[int, list[float]] = {}
    for o, per_layer in vectors.items():
        row = []
        for chunks in per_layer:
            v = torch.cat(chunks)
            v = v - v.mean(0, keepdim=True)  # hidden states are anisotropic: centre before cosines
            v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
            cos = v @ v.T
            row.append(float(cos[same_pairs].mean() - cos[diff_pairs].mean()))
        table[o] = row
    layer_set = list(layers) if layers is not None else default_layers(num_layers)
    if bands is not None:
        best, _, layer_set, _ = best_cell(table, bands)
    else:
        means = {o: sum(row[layer] for layer in layer_set) / len(layer_set) for o, row in table.items()}
        best = max(means, key=lambda o: means[o])
    first = prompts[0]
    anchor_tokens = {o: scorer.tokenizer.decode([first[len(first) + o]]) for o in table}
    profile = ModelProfile(
        anchor_offset=best,
        layers=layer_set,
        model_id=scorer.model_id,
        chat_template_hash=chat_template_hash(scorer.chat_template),
        data=data,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        source="sps",
        sps_table={str(o): [round(v, 6) for v in row] for o, row in table.items()},
    )
    return SPSResult(
        table=table,
        profile=profile,
        anchor_tokens=anchor_tokens,
        n_groups=len(groups),
        n_prompts=len(prompts),
    )
