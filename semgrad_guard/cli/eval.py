"""``semgrad-guard eval``: detection quality and cost of SemGrad and baselines on a QA file."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

from ._threads import add_threads_argument


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval",
        help="measure how well each uncertainty score detects wrong answers (AUROC, PRR, ...) and its cost",
        description=(
            "Generate greedy answers (cached in OUT), label them against the references, score them with "
            "SemGrad and its single-pass companions, run the sampling baselines, and write results.json, "
            "report.md and PNG plots to OUT. Rerunning reuses the cached generations and samples."
        ),
    )
    p.add_argument(
        "--model", default="default", help="'default' (embedded SmolLM2-135M-Instruct) or a local model dir"
    )
    p.add_argument("--gguf-file", default=None, help="GGUF file inside --model")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", default=None, help="torch dtype name (default: float32 on CPU)")
    p.add_argument(
        "--data", required=True, type=Path, help="JSONL: query/question and 'truthful answer'/answers"
    )
    p.add_argument("--out", required=True, type=Path, help="output and cache directory")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N questions")
    p.add_argument("--subset", type=int, default=None, help="evaluate a seeded random subset of N questions")
    p.add_argument(
        "--methods",
        default="all",
        help="comma-separated: semgrad,hybridgrad,exgrad,nll,mean_nll,mean_entropy,rauq,attention_score,"
        "semantic_entropy,lexical_similarity,num_meanings; 'all' or 'single-pass' (default: all)",
    )
    p.add_argument(
        "--samples", type=int, default=10, help="K samples per question for sampling baselines (default 10)"
    )
    p.add_argument(
        "--sample-subset",
        type=int,
        default=None,
        help="run sampling baselines on a seeded random subset of N",
    )
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="answer length limit (default 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rule", default="contains", help="correctness rule: contains, f1, rougeL or embedding")
    p.add_argument("--threshold", type=float, default=None, help="threshold of the rule (default per rule)")
    p.add_argument(
        "--labels",
        type=Path,
        default=None,
        help="labels file overriding the rule (JSONL id/correct, or JSON)",
    )
    p.add_argument(
        "--cluster-threshold", type=float, default=None, help="MiniLM cosine for 'same meaning' (0.8)"
    )
    p.add_argument(
        "--system-prompt", default=None, help="system prompt (default: a short-answer instruction)"
    )
    p.add_argument("--no-system-prompt", action="store_true", help="send no system message")
    p.add_argument("--user-template", default="{question}", help="user message template with {question}")
    p.add_argument(
        "--profile",
        default="auto",
        help="'auto' (stored profile, else the default rule), 'default' (the default rule), or a profile JSON",
    )
    p.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap resamples for 95%% intervals (default 1000)"
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    add_threads_argument(p)
    p.add_argument(
        "--sweep-anchor", action="store_true", help="AUROC per anchor offset and layer band, next to SPS"
    )
    p.add_argument("--sps-data", type=Path, default=None, help="paraphrase JSONL for the sweep's SPS")
    p.add_argument("--sps-groups", type=int, default=64, help="paraphrase groups for SPS (default 64)")
    p.add_argument(
        "--quiet", action="store_true", help="no progress (bars on a terminal, a line every 30 s in a log)"
    )
    p.set_defaults(func=run)


def _methods(value: str) -> list[str]:
    from ..eval.runner import ALL_METHODS, PEER_METHODS, SINGLE_PASS_METHODS

    if value == "all":
        return list(ALL_METHODS)
    if value == "single-pass":
        return list(SINGLE_PASS_METHODS + PEER_METHODS)
    return [m.strip() for m in value.split(",") if m.strip()]


def build_config(args: argparse.Namespace) -> Any:
    """The :class:`EvalConfig` for parsed arguments (ConfigurationError on bad values)."""
    from pydantic import ValidationError

    from ..errors import ConfigurationError
    from ..eval.data import DEFAULT_SYSTEM_PROMPT, PromptTemplate
    from ..eval.runner import EvalConfig

    system = None if args.no_system_prompt else (args.system_prompt or DEFAULT_SYSTEM_PROMPT)
    fields: dict[str, Any] = dict(
        methods=_methods(args.methods),
        samples=args.samples,
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        rule=args.rule,
        threshold=args.threshold,
        sample_subset=args.sample_subset,
        bootstrap=args.bootstrap,
        plots=not args.no_plots,
    )
    if args.cluster_threshold is not None:
        fields["cluster_threshold"] = args.cluster_threshold
    try:
        fields["template"] = PromptTemplate(system=system, user=args.user_template)
        return EvalConfig(**fields)
    except ValidationError as e:
        msgs = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
        raise ConfigurationError(f"invalid eval option(s): {msgs}") from e


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigurationError
    from ..eval.correctness import check_rule
    from ..eval.data import load_labels, load_questions
    from ..eval.runner import check_dependencies, choose_subset, run_eval

    config = build_config(args)
    check_dependencies(config)  # a missing extra is said before any model loads
    check_rule(config.rule, config.threshold)
    if args.limit is not None and args.limit < 1:
        raise ConfigurationError("--limit must be >= 1")
    if args.sweep_anchor and args.sps_data is None:
        raise ConfigurationError(
            "--sweep-anchor needs --sps-data (paraphrase JSONL of questions not evaluated)"
        )
    from ..eval.sweep import MAX_SPS_GROUPS, MIN_SPS_GROUPS

    if args.sweep_anchor and not MIN_SPS_GROUPS <= args.sps_groups <= MAX_SPS_GROUPS:
        raise ConfigurationError(
            f"--sps-groups must be between {MIN_SPS_GROUPS} and {MAX_SPS_GROUPS}, got {args.sps_groups}"
        )
    questions = load_questions(args.data, limit=args.limit)
    if args.subset is not None:
        questions = choose_subset(questions, args.subset, config.seed)
    labels = load_labels(args.labels) if args.labels else None

    from ..scoring.hf_scorer import SemGradScorer  # torch threads: set by the CLI from --threads

    scorer = SemGradScorer.from_pretrained(
        args.model, gguf_file=args.gguf_file, device=args.device, dtype=args.dtype
    )
    if args.profile == "default":
        scorer = scorer.with_profile(scorer.default_profile())
    elif args.profile != "auto":
        scorer = scorer.with_profile(args.profile)

    sweep = None
    if args.sweep_anchor:
        sweep = functools.partial(
            _sweep,
            scorer,
            questions,
            template=config.template,
            sps_data=args.sps_data,
            sps_groups=args.sps_groups,
            progress=not args.quiet,
        )
    results = run_eval(
        scorer,
        questions,
        args.out,
        config,
        labels=labels,
        progress=not args.quiet,
        data_name=args.data.name
        if args.data.parent.name in ("", ".")
        else f"{args.data.parent.name}/{args.data.name}",
        sweep=sweep,
    )
    _print_summary(results, args.out)
    return 0


def _sweep(scorer: Any, questions: Any, generations: Any, correct: Any, **kwargs: Any) -> Any:
    from ..eval.sweep import sweep_anchor

    return sweep_anchor(scorer, questions, generations, correct, **kwargs)


def _print_summary(results: dict[str, Any], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for name in ("main", "subset"):
        block = results.get(name)
        if not block:
            continue
        t = Table(title=f"{name}: n={block['n']}, accuracy={block['accuracy']:.3f}")
        for col in ("method", "AUROC", "AUPRC", "PRR", "AURC", "s/answer"):
            t.add_column(col, justify="left" if col == "method" else "right")
        for m, row in block["methods"].items():
            cells = []
            for k in ("auroc", "auprc", "prr", "aurc"):
                v = row[k].get("value")
                cells.append("undefined" if v is None else f"{v:.3f}")
            t.add_row(m, *cells, f"{row['cost']['seconds']:.2f}")
        console.print(t)
    console.print(f"report: {out / 'report.md'}")
