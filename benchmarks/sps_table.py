"""The SPS table of a registry model on paraphrase groups that are not development questions.

SPS (label-free, ``semgrad_guard.scoring.sps``) from SciQ paraphrase groups of questions 200 on (the
development sets use questions 0-199), rendered with the development sets' QA system prompt. Writes
``benchmarks/results/sps/<name>.json``, which ``bench_models.py`` reads.

Usage: python benchmarks/sps_table.py qwen2.5-coder-0.5b [--groups 64] [--per-group 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.devsets.collect import QA_SYSTEM, SHARED  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "sps"
SKIP = 200  # the development sets' questions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("--groups", type=int, default=64)
    parser.add_argument("--per-group", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    from semgrad_guard import SemGradScorer
    from semgrad_guard.scoring.sps import compute_sps, load_paraphrase_groups

    torch.set_num_threads(args.threads)
    scorer = SemGradScorer.from_pretrained(args.name)
    path = SHARED / "sciq" / "paraphrase.jsonl"
    groups = load_paraphrase_groups(path, limit=args.groups, per_group=args.per_group, skip=SKIP)
    t0 = time.perf_counter()
    res = compute_sps(scorer, groups, system_prompt=QA_SYSTEM, batch_size=8)
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f"{args.name}.json"
    out.write_text(
        json.dumps(
            {
                "model": args.name,
                "data": f"sciq/paraphrase.jsonl groups {SKIP}..{SKIP + args.groups - 1}, "
                f"{args.per_group} paraphrases each, QA system prompt",
                "n_groups": res.n_groups,
                "n_prompts": res.n_prompts,
                "seconds": round(time.perf_counter() - t0, 1),
                "anchor_tokens": {str(k): v for k, v in res.anchor_tokens.items()},
                "table": {str(k): [round(v, 6) for v in row] for k, row in res.table.items()},
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
