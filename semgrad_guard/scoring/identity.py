"""Recognising a model by what it is, not by the name or path it was loaded under.

A shipped profile and calibrator belong to a set of weights. Users load the embedded model by
``"default"``, by the directory ``semgrad-guard fetch-default-model`` prints (what ``ChatHuggingFace``
and LlamaIndex users pass), or from the GGUF file; each gives another ``name_or_path``. The
fingerprint below is the same for all of them: a SHA-256 over the input embedding's shape and a
fixed sample of its rows in float32 (at most 1,024 rows, so it costs milliseconds even for large
vocabularies and never copies the whole matrix).
"""

from __future__ import annotations

import hashlib
from typing import Any

SAMPLE_ROWS = 1024


def weights_fingerprint(model: Any) -> str:
    """SHA-256 fingerprint of a model's input embedding (shape + an evenly spaced sample of rows)."""
    import torch

    weight = model.get_input_embeddings().weight
    rows = weight.shape[0]
    step = max(1, rows // SAMPLE_ROWS)
    with torch.no_grad():
        sample = weight[::step][:SAMPLE_ROWS].detach().to("cpu", torch.float32).contiguous()
    h = hashlib.sha256()
    h.update(f"{tuple(weight.shape)}|{step}".encode())
    h.update(sample.numpy().tobytes())
    return h.hexdigest()
