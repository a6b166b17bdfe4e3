"""Who may use the review pages: one shared token, or named reviewer tokens read from a file.

Plain code (no FastAPI), so the CLI checks the configuration before a server starts.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import ConfigurationError


@dataclass(frozen=True)
class ReviewerTokens:
    """The tokens that open the review pages and the reviewer each one names.

    ``shared`` is one token everyone uses (the reviewer then types a name at login);
    ``named`` maps a reviewer's name to their own token. Both empty: the pages are open (local only).

    Example:
        >>> t = ReviewerTokens(named={"ana": "s3cret-ana"})
        >>> t.reviewer_for("s3cret-ana"), t.reviewer_for("wrong")
        ('ana', None)
    """

    shared: str | None = None
    named: dict[str, str] = field(default_factory=dict)

    @property
    def required(self) -> bool:
        """True when a token is needed to see any page."""
        return bool(self.shared or self.named)

    def reviewer_for(self, token: str) -> str | None:
        """The reviewer a token names: their name, ``""`` for the shared token, None for a wrong one."""
        given = token.strip().encode()
        found: str | None = None
        # Compare with every token (constant time each), so timing does not say which name is close.
        for name, secret in self.named.items():
            if hmac.compare_digest(given, secret.encode()):
                found = name
        if self.shared and hmac.compare_digest(given, self.shared.encode()) and found is None:
            found = ""
        return found

    @classmethod
    def from_file(cls, path: str | Path, *, shared: str | None = None) -> ReviewerTokens:
        """Named tokens from a file of ``name: token`` lines (``#`` starts a comment).

        Raises:
            ConfigurationError: The file cannot be read, a line is not ``name: token``, a name or a
                token appears twice, or a token is shorter than 16 characters.
        """
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigurationError(f"cannot read the reviewers file {path}: {e}") from e
        named: dict[str, str] = {}
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            name, sep, token = (s.strip() for s in line.partition(":"))
            if not sep or not name or not token:
                raise ConfigurationError(
                    f"{path}:{n}: expected 'name: token' (one reviewer per line), got {line[:40]!r}"
                )
            if len(token) < 16:
                raise ConfigurationError(
                    f"{path}:{n}: the token of {name!r} is {len(token)} characters; use 16 or more "
                    "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))')"
                )
            if name in named:
                raise ConfigurationError(f"{path}:{n}: reviewer {name!r} is listed twice")
            if token in named.values() or token == shared:
                raise ConfigurationError(f"{path}:{n}: the token of {name!r} is also someone else's")
            named[name] = token
        if not named:
            raise ConfigurationError(f"the reviewers file {path} lists no reviewer; add 'name: token' lines")
        return cls(shared=shared, named=named)
