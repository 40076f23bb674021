"""Admission of an authenticated caller: the authentication chain, the credential's own
address rule, the per-user rate limit, and the count of refusals, in that order."""

from collections.abc import Awaitable, Callable

import attrs

from mcproxy.auth.principal import Principal
from mcproxy.errors import Forbidden, Unauthorized


@attrs.frozen
class Admission:
    """Says who calls, or refuses (401, 403, 429), for one endpoint class ("mcp", "admin").

    ``chain`` is ``async (request) -> Principal`` (`mcproxy.auth.chain.AuthenticationChain`);
    ``check_user(user_id, endpoint_class)`` raises `RateLimited`
    (`mcproxy.auth.ratelimit.RequestLimits.check_user`), or returns an awaitable that does
    when the buckets live elsewhere (a cluster's, `mcproxy.cluster.limits.SharedLimits`);
    ``refused(reason)`` hears every refusal of the chain (the ``mcproxy_auth_failures_total``
    counter).
    """

    chain: Callable[[object], Awaitable[Principal]]
    check_user: Callable[[str, str], Awaitable[None] | None] = lambda user_id, endpoint_class: None
    refused: Callable[[str], None] = lambda reason: None

    async def authenticate(self, request, endpoint_class: str) -> Principal:
        """The caller of ``request`` to an endpoint of ``endpoint_class``."""
        try:
            principal = await self.chain(request)
        except Unauthorized as e:
            self.refused(e.reason)
            raise
        except Forbidden:
            self.refused("forbidden")
            raise
        if not principal.may_connect_from(request.client_address):
            raise Forbidden("this credential may not be used from your address", code="address_denied")
        checking = self.check_user(principal.user_id, endpoint_class)
        if checking is not None:
            await checking
        return principal
