"""The records kept by every store."""

import attrs


@attrs.frozen
class UserRecord:
    """A registered user and the DevTools URL of their browser."""

    user_id: str
    browser_url: str
    metadata: dict = attrs.field(factory=dict, eq=False)
    registered_at: float = 0.0
    last_activity: float | None = None


@attrs.frozen
class TokenRecord:
    """An API token. Only the SHA-256 of its secret is kept."""

    token_id: str
    user_id: str
    secret_hash: str
    permissions: tuple[str, ...] = ()
    created_at: float = 0.0
    expires_at: float | None = None
    revoked_at: float | None = None
    last_used_at: float | None = None
    description: str = ""
    #: The token this one was minted from (a registration's session token): it never
    #: outlives that parent, and revoking the parent revokes it too.
    parent_id: str | None = None

    def is_valid_at(self, now: float) -> bool:
        """Neither revoked nor expired at ``now``."""
        if self.revoked_at is not None and self.revoked_at <= now:
            return False
        return self.expires_at is None or now < self.expires_at
