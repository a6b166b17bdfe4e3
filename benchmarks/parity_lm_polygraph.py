"""Parity of semgrad_guard.eval.single_pass with LM-Polygraph's own RAUQ and AttentionScore estimators.

On a tiny random Qwen2-architecture model (the test tokenizer, no download), LM-Polygraph generates
greedily and computes its statistics (``GreedyProbsCalculator``: log-likelihoods and the attention
maps of every generation step; ``AttentionForwardPassCalculator``: one forward over prompt + answer)
and its estimators score them; ours read the same prompt and answer ids with one teacher-forced
pass (:func:`~semgrad_guard.eval.single_pass.attention_features`). Writes the comparison to
``benchmarks/results/parity_lm_polygraph.json`` and exits non-zero on a mismatch.

LM-Polygraph pulls in much (spaCy, datasets, fschat, bitsandbytes...), so it is not a test dependency:
run this in a virtualenv that has it, beside the project's packages (the ``parity`` extra):

    python -m venv /tmp/lmp && /tmp/lmp/bin/pip install -e '.[parity]'
    /tmp/lmp/bin/python benchmarks/parity_lm_polygraph.py
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "parity_lm_polygraph.json"
PROMPTS = [
    "Name a colour.",
    "What is the capital of France?",
    "Say something about the sea.",
    "Two plus two is",
    "Who wrote Hamlet?",
    "List three fruits.",
]
REL = 1e-4


def main() -> int:
    import torch
    from lm_polygraph import WhiteboxModel
    from lm_polygraph.estimators import RAUQ, AttentionScore
    from lm_polygraph.stat_calculators import AttentionForwardPassCalculator, GreedyProbsCalculator
    from lm_polygraph.utils.generation_parameters import GenerationParameters

    from semgrad_guard.eval.single_pass import attention_features, attention_score, middle_layers, rauq
    from semgrad_guard.testing import tiny_chat_model

    torch.set_num_threads(1)
    rows = []
    for arch, layers in (("qwen2", 4), ("qwen2", 7), ("llama", 6)):
        model, tok = tiny_chat_model(arch, num_hidden_layers=layers)
        model.set_attn_implementation("eager")  # LM-Polygraph reads generation's attention maps
        lmp = WhiteboxModel(
            model, tok, model_path=f"tiny-{arch}", generation_parameters=GenerationParameters()
        )
        n_heads = model.config.num_attention_heads
        rauq_est = RAUQ(n_layers=layers, n_heads=n_heads, instruct=True)
        score_est = AttentionScore(layer=layers // 2)
        score_est.layer = layers // 2  # 0.7.0's __call__ reads .layer, which __init__ never sets
        for text in PROMPTS:
            stats: dict = {"model": lmp}
            stats.update(GreedyProbsCalculator()(stats, [text], lmp, max_new_tokens=10))
            stats.update(AttentionForwardPassCalculator()(stats, [text], lmp, max_new_tokens=10))
            theirs_rauq = float(rauq_est(stats)[0])
            theirs_score = float(score_est(stats)[0])
            x = lmp.tokenize([text])["input_ids"][0].tolist()
            y = list(stats["greedy_tokens"][0])
            f = attention_features(model, x, y)
            ours_rauq = rauq(f["token_logprobs"], f["rauq_attention"], layers=middle_layers(layers))
            ours_score = attention_score(f["attention_logdiag"], layer=layers // 2)
            rows.append(
                {
                    "model": f"tiny-random-{arch}-{layers}-layers",
                    "prompt": text,
                    "answer_tokens": len(y),
                    "rauq": [theirs_rauq, ours_rauq],
                    "attention_score": [theirs_score, ours_score],
                    "log_likelihoods_max_abs_diff": float(
                        np.max(np.abs(np.asarray(stats["greedy_log_likelihoods"][0]) - f["token_logprobs"]))
                    ),
                }
            )
    worst = {
        m: max(abs(r[m][0] - r[m][1]) / max(abs(r[m][0]), 1e-9) for r in rows)
        for m in ("rauq", "attention_score")
    }
    ok = all(v <= REL for v in worst.values())
    result = {
        "lm_polygraph": version("lm-polygraph"),
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "tolerance_rel": REL,
        "worst_rel_diff": worst,
        "parity": ok,
        "rows": rows,
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
