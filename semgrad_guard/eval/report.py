"""``results.json``, ``examples.jsonl`` and ``report.md`` (with the PNG plots) for one evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .baselines import SAMPLING_METHODS

METHOD_NOTES: dict[str, str] = {
    "semgrad": "gradient w.r.t. the anchor's hidden states (1 forward + 1 backward)",
    "hybridgrad": "entropy-weighted mix of exgrad and semgrad",
    "exgrad": "gradient w.r.t. the output projection",
    "nll": "sum of the answer's token NLLs",
    "mean_nll": "NLL per answer token",
    "mean_entropy": "mean predictive entropy over the answer",
    "rauq": "RAUQ: token probabilities carried through previous-token attention (1 eager forward)",
    "attention_score": "LLM-Check: minus the mean log-diagonal of the middle layer's attention",
    "semantic_entropy": "entropy of meaning clusters of K samples (MiniLM clustering)",
    "lexical_similarity": "1 - mean pairwise ROUGE-L of K samples",
    "num_meanings": "number of meaning clusters among K samples",
}

PLOTS: tuple[tuple[str, str], ...] = (
    ("roc", "ROC curves"),
    ("risk_coverage", "Risk-coverage curves"),
    ("histograms", "Scores of right vs wrong answers"),
    ("cost_vs_auroc", "Cost vs AUROC"),
)


def _fmt(cell: dict[str, Any], digits: int = 3) -> str:
    v = cell.get("value")
    if v is None:
        return "undefined"
    if cell.get("low") is None:
        return f"{v:.{digits}f}"
    return f"{v:.{digits}f} [{cell['low']:.{digits}f}, {cell['high']:.{digits}f}]"


def _table(block: dict[str, Any]) -> list[str]:
    lines = [
        "| method | AUROC ↑ | AUPRC ↑ | PRR ↑ | AURC ↓ | s / answer | extra s | fwd passes | bwd | gen. tokens |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = sorted(block["methods"].items(), key=lambda kv: -(kv[1]["auroc"].get("value") or -1))
    for m, row in rows:
        c = row["cost"]
        extra = "—" if c["extra_seconds"] is None else f"{c['extra_seconds']:.2f}"
        lines.append(
            f"| {m} | {_fmt(row['auroc'])} | {_fmt(row['auprc'])} | {_fmt(row['prr'])} | {_fmt(row['aurc'])} "
            f"| {c['seconds']:.2f} | {extra} | {c['forward_passes']:.1f} | {c['backward_passes']:.0f} "
            f"| {c['generated_tokens']:.1f} |"
        )
    return lines


def _block_scores(
    results: dict[str, Any], block: dict[str, Any]
) -> tuple[dict[str, list[float]], list[bool]]:
    by_id = {ex["id"]: ex for ex in results["examples"]}
    ids = block["ids"]
    scores = {m: [by_id[i]["scores"][m] for i in ids] for m in block["methods"]}
    errors = [not by_id[i]["correct"] for i in ids]
    return scores, errors


def write_plots(results: dict[str, Any], out: Path) -> dict[str, list[str]]:
    """Write the PNGs of each block; returns block name -> file names."""
    from .plots import plot_cost, plot_histograms, plot_risk_coverage, plot_roc

    written: dict[str, list[str]] = {}
    for name in ("main", "subset"):
        block = results.get(name)
        if not block:
            continue
        scores, errors = _block_scores(results, block)
        label = f"{results.get('model_id')} on {results.get('data') or 'data'}, n={block['n']}"
        files = []
        if 0 < sum(errors) < len(errors):
            plot_roc(block, scores, errors, out / f"{name}_roc.png", label)
            plot_risk_coverage(scores, errors, out / f"{name}_risk_coverage.png", label)
            plot_histograms(scores, errors, out / f"{name}_histograms.png", label)
            plot_cost(block, out / f"{name}_cost_vs_auroc.png", label)
            files = [f"{name}_{p}.png" for p, _ in PLOTS]
        written[name] = files
    return written


def _sweep_lines(sweep: dict[str, Any]) -> list[str]:
    lines = [
        "## Anchor and layer sweep (`--sweep-anchor`)",
        "",
        f"SPS computed on {sweep['sps_groups']} paraphrase groups from `{sweep['sps_data']}` "
        f"({sweep['sps_source']}); none of them is among the {sweep['n']} evaluated questions. "
        f"SPS picked offset **{sweep['sps_offset']}**, layers {sweep['sps_layers']}. "
        "AUROC of semgrad for each candidate (higher is better), next to the SPS of that offset "
        "(mean over the band's layers):",
        "",
        "| offset | "
        + " | ".join(f"AUROC {b}" for b in sweep["bands"])
        + " | "
        + " | ".join(f"SPS {b}" for b in sweep["bands"])
        + " |",
        "|---|" + "---|" * (2 * len(sweep["bands"])),
    ]
    for row in sweep["rows"]:
        auc = [("—" if row["auroc"].get(b) is None else f"{row['auroc'][b]:.3f}") for b in sweep["bands"]]
        sps = [("—" if row["sps"].get(b) is None else f"{row['sps'][b]:.3f}") for b in sweep["bands"]]
        mark = " (SPS pick)" if row["offset"] == sweep["sps_offset"] else ""
        lines.append(f"| {row['offset']}{mark} | " + " | ".join(auc) + " | " + " | ".join(sps) + " |")
    lines += ["", "Bands: " + "; ".join(f"{b} = layers {ls}" for b, ls in sweep["band_layers"].items()), ""]
    return lines


def write_report(results: dict[str, Any], out: Path, *, plots: bool = True) -> None:
    """Write results.json, examples.jsonl, the plots (optional) and report.md."""
    plot_files = write_plots(results, out) if plots else {}
    results["plots"] = plot_files
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    with (out / "examples.jsonl").open("w") as f:
        for ex in results["examples"]:
            f.write(json.dumps(ex) + "\n")
    (out / "report.md").write_text(render_markdown(results, plot_files) + "\n")


def render_markdown(results: dict[str, Any], plot_files: dict[str, list[str]] | None = None) -> str:
    cfg = results["config"]
    corr = results["correctness"]
    prof = results.get("profile") or {}
    lines = [
        f"# Evaluation: {results.get('model_id')} on {results.get('data') or 'data'}",
        "",
        "Error detection: each method's score should be higher for wrong answers. AUROC and AUPRC "
        "(wrong answer = positive), PRR (1 = oracle order, 0 = random) and AURC (area under the "
        "risk-coverage curve, lower is better), with 95% bootstrap intervals "
        f"({cfg['bootstrap']} resamples). Costs are means per answer on this machine "
        f"({results['machine']['platform']}); 's / answer' includes generating the greedy answer; "
        "'extra s' is what the sampling baselines add on top; a batched sampling call over K "
        "sequences counts as one forward pass per step.",
        "",
        f"- Answers: greedy, at most {cfg['max_new_tokens']} new tokens; system prompt: "
        f"{cfg['template']['system']!r}; user template: {cfg['template']['user']!r}.",
        f"- Correctness rule: **{corr['rule']}** at threshold {corr['threshold']}"
        + (f"; {corr['labels_from_file']} labels from a labels file" if corr["labels_from_file"] else "")
        + ". All rules' values are in `examples.jsonl`.",
        f"- SemGrad profile: anchor offset {prof.get('anchor_offset')}, layers {prof.get('layers')} "
        f"(source: {prof.get('source')}{', data: ' + prof['data'] if prof.get('data') else ''}).",
    ]
    if any(m in SAMPLING_METHODS for m in cfg["methods"]):
        lines.append(
            f"- Sampling baselines: K={cfg['samples']} samples at temperature {cfg['temperature']} "
            f"(no top-k/top-p), seed {cfg['seed']}. Meaning clusters use MiniLM cosine >= "
            f"{cfg['cluster_threshold']} (bidirectional similarity), standing in for the NLI model "
            "of the original semantic entropy; semantic entropy is the discrete (cluster-frequency) variant."
        )
    for name, heading in (
        ("main", "All questions"),
        ("subset", "Sampling subset: all methods on the same questions"),
    ):
        block = results.get(name)
        if not block:
            continue
        lines += [
            "",
            f"## {heading}",
            "",
            f"n = {block['n']} questions, model accuracy {block['accuracy']:.3f} "
            f"({round(block['accuracy'] * block['n'])} right, {block['n'] - round(block['accuracy'] * block['n'])} wrong).",
        ]
        if name == "subset" and results.get("main") and block["n"] < results["main"]["n"]:
            lines.append(
                f"The sampling baselines ran on a seeded random subset of {block['n']} of the "
                f"{results['main']['n']} questions (seed {cfg['seed']}); this table compares every method on that subset."
            )
        lines += [""] + _table(block) + [""]
        for f in (plot_files or {}).get(name, []):
            title = dict(PLOTS).get(f[len(name) + 1 : -4], f)
            lines += [f"![{title}]({f})", ""]
    if results.get("sweep"):
        lines += [""] + _sweep_lines(results["sweep"])
    lines += ["", "## Methods", ""] + [f"- **{m}**: {METHOD_NOTES[m]}" for m in cfg["methods"]]
    return "\n".join(lines)
