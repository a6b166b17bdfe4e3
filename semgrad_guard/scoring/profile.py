"""Model profiles: where SemGrad looks (anchor offset and layers). A profile is data.

Profiles are stored as JSON, found by model id and chat-template hash (see :func:`find_profile`).
The SPS computation that produces them lives in :mod:`semgrad_guard.scoring.sps` (it needs torch).
"""

from __future__ import annotations

import hashlib
import json
import logging
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator

from ..config import TypedConfig, format_validation_error
from ..errors import ProfileError

logger = logging.getLogger(__name__)


class ModelProfile(TypedConfig):
    """Anchor offset and layer set for one model and chat template.

    Example:
        >>> p = ModelProfile(anchor_offset=-4, layers=[15, 16])
        >>> p.anchor_offset, p.layers
        (-4, [15, 16])
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    config_error = ProfileError

    anchor_offset: int = Field(
        lt=0,
        description="Anchor position relative to the end of the prompt; < 0 (-1 is the prompt's last token).",
    )
    layers: list[int] = Field(
        min_length=1, description="Hugging Face hidden_states indices (0 = embeddings)."
    )
    exgrad_mode: Literal["logits", "weight"] = Field(
        default="logits", description="How exgrad is taken: 'logits' or 'weight' (docs/method.md)."
    )
    model_id: str | None = Field(default=None, description="Model the profile was computed for.")
    weights_sha256: str | None = Field(
        default=None,
        description="Fingerprint of the model's weights (semgrad_guard.scoring.identity): a shipped profile "
        "is found by it whatever path or name the model was loaded under.",
    )
    chat_template_hash: str | None = Field(default=None, description="sha256 of the chat template used.")
    data: str | None = Field(default=None, description="Data the SPS table was computed on.")
    created: str | None = Field(default=None, description="When it was computed (ISO 8601).")
    source: str = Field(
        default="user",
        description="'supervised' (chosen by cross-validated AUROC on labelled answers), 'sps' "
        "(label-free), 'default' (rule), or 'user'.",
    )
    sps_table: dict[str, list[float]] | None = Field(
        default=None, description="SPS(offset, layer): offset (as str) -> one value per hidden-state index."
    )
    selection: dict[str, Any] | None = Field(
        default=None,
        description="How a supervised profile was chosen: candidates, cross-validated AUROC and its "
        "interval, the SPS choice beside it (semgrad_guard.eval.profile_search).",
    )

    @field_validator("layers")
    @classmethod
    def _sorted_unique(cls, v: list[int]) -> list[int]:
        if any(layer < 0 for layer in v):
            raise ValueError("layers must be >= 0 (hidden_states indices; 0 is the embedding output)")
        return sorted(set(v))

    def check_fits(self, num_hidden_layers: int, prompt_tokens: int | None = None) -> None:
        """Raise :class:`ProfileError` if the layers or anchor do not exist in this model/prompt.

        Usable hidden-state indices are 0 .. num_hidden_layers - 1 (the last element of
        ``hidden_states``, after the final norm, is not used).
        """
        bad = [layer for layer in self.layers if layer >= num_hidden_layers]
        if bad:
            raise ProfileError(
                f"profile layers {bad} do not exist: this model has hidden-state indices "
                f"0..{num_hidden_layers - 1} ({num_hidden_layers} decoder layers)"
            )
        if prompt_tokens is not None and prompt_tokens + self.anchor_offset < 0:
            raise ProfileError(
                f"profile anchor_offset {self.anchor_offset} points before the start of a "
                f"{prompt_tokens}-token prompt"
            )

    @classmethod
    def load(cls, path: str | Path) -> ModelProfile:
        """Load a profile from a JSON file."""
        from .._files import read_config_text

        text = read_config_text(path, "profile")
        try:
            return cls.model_validate_json(text)
        except ValidationError as e:
            # Not str(e): pydantic quotes the input, and the file may be anything.
            raise ProfileError(f"profile file {path} is invalid: {format_validation_error(e)}") from None

    def save(self, path: str | Path) -> None:
        """Write the profile as JSON."""
        Path(path).write_text(self.model_dump_json(indent=2) + "\n")


def default_layers(num_hidden_layers: int) -> list[int]:
    """The upper half of the hidden-state indices: {L - floor(L/2), ..., L-1}."""
    n = num_hidden_layers
    return list(range(n - n // 2, n))


def chat_template_hash(template: str | None) -> str | None:
    """sha256 of a chat template string (None for no template)."""
    if template is None:
        return None
    return hashlib.sha256(template.encode()).hexdigest()


def _stored_profiles() -> list[ModelProfile]:
    out = []
    folder = resources.files("semgrad_guard") / "profiles"
    for entry in folder.iterdir():
        if entry.name.endswith(".json"):
            out.append(ModelProfile.model_validate(json.loads(entry.read_text())))
    return out


def find_profile(
    model_id: str | None, template_hash: str | None, weights_sha256: str | None = None
) -> ModelProfile | None:
    """Look up a shipped profile: the chat-template hash must match, and the weights fingerprint or
    (failing that) the model id.

    Matching on the template hash matters because the anchor is a position in the rendered prompt:
    the same weights under another template need another profile. The weights fingerprint
    (:func:`semgrad_guard.scoring.identity.weights_fingerprint`) finds the profile whatever path or name the
    model was loaded under.
    """
    stored = _stored_profiles()
    if weights_sha256 is not None:
        for p in stored:
            if p.weights_sha256 == weights_sha256 and (
                template_hash is None or p.chat_template_hash == template_hash
            ):
                return p
    for p in stored:
        if template_hash is None or p.chat_template_hash != template_hash:
            continue
        if p.model_id is not None and model_id is not None and p.model_id != model_id:
            continue
        return p
    return None


def profile_from_any(value: ModelProfile | dict[str, Any] | str | Path) -> ModelProfile:
    """Accept a profile, a dict, or a path to a JSON file."""
    if isinstance(value, ModelProfile):
        return value
    if isinstance(value, dict):
        try:
            return ModelProfile.model_validate(value)
        except ValidationError as e:
            raise ProfileError(f"invalid profile: {e}") from e
    return ModelProfile.load(value)
