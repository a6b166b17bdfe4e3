"""Settings of the scoring service. Plain configuration: no FastAPI, so the CLI validates before loading."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field

from ..config import TypedConfig

LOCAL_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def is_local_host(host: str) -> bool:
    """True for a loopback address (``127.0.0.0/8``, ``::1``) or ``localhost``.

    Example:
        >>> is_local_host("127.0.0.1"), is_local_host("0.0.0.0")
        (True, False)
    """
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ServeSettings(TypedConfig):
    """Limits and batching of ``semgrad-guard serve`` (and of :func:`semgrad_guard.serve.create_app`).

    Example:
        >>> ServeSettings(max_batch_size=4).max_wait_ms
        5.0
    """

    host: str = "127.0.0.1"
    """Address to bind; anything but loopback needs a bearer token."""
    port: int = Field(default=8000, ge=0, le=65535)
    """Port to bind (0: a free one)."""
    max_batch_size: int = Field(default=8, ge=1, le=1024)
    """Most (messages, answer) pairs scored in one pass of the worker."""
    max_wait_ms: float = Field(default=5.0, ge=0.0, le=10_000.0)
    """How long the first request of a batch waits for others to join it (milliseconds)."""
    max_queue: int = Field(default=256, ge=1)
    """Most requests waiting for the worker; more are answered 503 with Retry-After."""
    retry_after_s: int = Field(default=1, ge=1)
    """Seconds a client is told to wait (Retry-After) when the queue is full."""
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    """Largest request body accepted (bytes); larger ones get 413."""
    max_answer_chars: int = Field(default=32_000, ge=1)
    """Longest answer accepted for scoring (characters); longer ones get 413."""
    max_batch_items: int = Field(default=64, ge=1)
    """Most pairs in one /v1/score/batch request; more get 413."""
    max_new_tokens: int = Field(default=512, ge=1)
    """Most tokens one chat completion may generate; a larger max_tokens gets 400."""
    default_new_tokens: int = Field(default=256, ge=1)
    """Tokens generated when a chat completion request gives no max_tokens."""
    generate_unreviewed: bool | None = None
    """Whether ``/v1/generate`` hands out the model's answer unguarded. None (default): yes, unless the
    policy has rules that send answers to review (then only ``/v1/chat/completions``, which withholds them)."""
    body_timeout_s: float = Field(default=30.0, gt=0.0, le=3600.0)
    """Seconds a request body may take to arrive; a slower one gets 408 and its connection is closed."""
    stream_mode: Literal["observe", "gate", "hold"] | None = None
    """How ``stream=True`` chat completions stream when the request does not say (``semgrad.stream_mode``).
    None (default): ``observe`` (text as generated), unless the policy has rules that abstain, review,
    retry or raise, which can only keep their promise on a judged answer: then ``hold``."""
    model_aliases: list[str] = Field(default_factory=list)
    """Other names the served model answers to in requests' 'model' field (e.g. 'default')."""
