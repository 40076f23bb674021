"""Who is calling, and what they may do."""

import attrs

ADMIN = "admin"
REGISTER = "register"
IMPERSONATE = "impersonate"
METRICS = "metrics"
ALL_TOOLS = "tools:*"


@attrs.frozen
class Principal:
    """An authenticated caller: a user id and the permissions of its credential."""

    user_id: str
    permissions: frozenset[str] = frozenset()
    token_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.permissions

    def has(self, permission: str) -> bool:
        """True when the credential carries ``permission`` (admin carries everything)."""
        return self.is_admin or permission in self.permissions

    def may_call_tool(self, name: str, category: str) -> bool:
        """Tool permission: ``tools:*``, ``tools:<name>`` or ``tools:category:<category>``."""
        return (
            self.is_admin
            or ALL_TOOLS in self.permissions
            or f"tools:{name}" in self.permissions
            or f"tools:category:{category}" in self.permissions
        )

    def may_act_for(self, user_id: str) -> bool:
        """Whether this principal may act as (or manage) ``user_id``."""
        return user_id == self.user_id or self.is_admin or IMPERSONATE in self.permissions
