"""Re-score the answers in ``sciq_smollm2_scored.jsonl`` with the scorer's current profile.

Answers are kept as generated; only the score fields change. Use it after the model's profile changes
(scores from different anchors are not comparable, and the calibrator refuses them). Answers cut by
``max_new_tokens`` are scored without an end-of-turn token, as `generate` scores them.

    python benchmarks/rescore_sciq.py && python benchmarks/bench_calibration.py --write-calibrator
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.progress import track

sys.path.insert(0, str(Path(__file__).parent))
from score_sciq import DEFAULT_OUT, sciq_messages  # noqa: E402

from semgrad_guard import SemGradScorer  # noqa: E402
from semgrad_guard.eval.runner import scoring_inputs  # noqa: E402


def main() -> None:
    rows = [json.loads(line) for line in DEFAULT_OUT.read_text().splitlines() if line.strip()]
    scorer = SemGradScorer.from_pretrained("default")
    examples = scoring_inputs(scorer, [sciq_messages(row["query"]) for row in rows], rows)
    results = []
    for start in track(range(0, len(examples), 8), description="re-scoring"):
        results += scorer.score_token_ids(examples[start : start + 8])
    with open(DEFAULT_OUT.with_suffix(".tmp"), "w") as f:
        for row, r in zip(rows, results, strict=True):
            row.update(r.model_dump(exclude={"model_id", "prompt_tokens", "answer_tokens"}))
            f.write(json.dumps(row) + "\n")
    DEFAULT_OUT.with_suffix(".tmp").replace(DEFAULT_OUT)
    print(
        f"re-scored {len(rows)} answers with anchor_offset={scorer.profile.anchor_offset}, layers={scorer.profile.layers}"
    )


if __name__ == "__main__":
    main()
