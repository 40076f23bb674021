"""The admin API's tokens: create, list, revoke (with the tokens made from them), rotate."""

from twisted.logger import Logger

from mcproxy.auth.principal import ADMIN
from mcproxy.auth.tokens import adopt_children, create_token, revoke_token_tree
from mcproxy.errors import BadRequest, Conflict, NotFound
from mcproxy.web.admin import AdminDependencies, check_user_id, iso8601, json_body
from mcproxy.web.routes import Route

log = Logger()

DEFAULT_ROTATION_GRACE = 60.0
MAX_ROTATION_GRACE = 7 * 86400.0


class TokensAPI:
    """``/api/tokens``: API tokens, for admins (and rotation for a token's own user)."""

    def __init__(self, deps: AdminDependencies):
        self.deps = deps

    def routes(self) -> tuple[Route, ...]:
        return (
            Route(b"POST", r"/api/tokens/?", self.create_token, auth="admin", permission=ADMIN, audit=True),
            Route(b"GET", r"/api/tokens/?", self.list_tokens, auth="admin", permission=ADMIN),
            Route(
                b"DELETE",
                r"/api/tokens/(?P<token_id>[^/]+)/?",
                self.revoke_token,
                auth="admin",
                permission=ADMIN,
                audit=True,
            ),
            Route(b"POST", r"/api/tokens/(?P<token_id>[^/]+)/rotate/?", self.rotate_token, auth="admin", audit=True),
        )

    async def create_token(self, request):
        body = json_body(self.deps, request)
        user_id = check_user_id(body.get("userId"))
        permissions = body.get("permissions", [])
        if not isinstance(permissions, list) or not all(isinstance(p, str) for p in permissions):
            raise BadRequest('"permissions" must be a list of strings')
        ttl = body.get("ttlSeconds")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl <= 0):
            raise BadRequest('"ttlSeconds" must be a positive number')
        token, record = await create_token(self.deps.store, user_id, permissions, ttl, self.deps.clock)
        log.info("Token {token_id} created for user {user_id}", token_id=record.token_id, user_id=user_id)
        return 201, _token_answer(token, record)

    async def list_tokens(self, request):
        records = await self.deps.store.list_tokens()
        return 200, {"tokens": [_token_summary(r) for r in records]}

    async def revoke_token(self, request, token_id: str):
        """Revoke the token and every token minted from it (registration session tokens)."""
        revoked = await revoke_token_tree(self.deps.store, token_id, self.deps.clock.seconds())
        if not revoked:
            raise NotFound(f"no token with id {token_id!r}")
        for revoked_id in revoked:
            await self.deps.token_revoked(revoked_id)
        log.info("Token {token_id} revoked, with {children} made from it", token_id=token_id, children=len(revoked) - 1)
        return 204, None

    async def rotate_token(self, request, token_id: str):
        """A new token with the same user, permissions and expiry; the old one works until
        ``graceSeconds`` (default 60) have passed, so clients can switch without a gap.

        Only an admin or the token's own user, signed in as itself (never through
        ``impersonate``), may rotate; tokens made from the old one move to the new one."""
        principal = request.principal
        record = await self.deps.store.get_token(token_id)
        now = self.deps.clock.seconds()
        mine = (
            record is not None
            and principal.user_id == record.user_id
            and principal.token_id is not None
            and principal.impersonator is None
        )
        if record is None or not (principal.is_admin or mine):
            raise NotFound(f"no token with id {token_id!r}")
        if record.revoked_at is not None and record.revoked_at <= now:
            raise Conflict(f"token {token_id} is revoked; create a new token instead", code="token_revoked")
        body = json_body(self.deps, request, optional=True)
        grace = body.get("graceSeconds", DEFAULT_ROTATION_GRACE)
        if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not 0 <= grace <= MAX_ROTATION_GRACE:
            raise BadRequest(f'"graceSeconds" must be a number from 0 to {MAX_ROTATION_GRACE}')
        ttl = None
        if record.expires_at is not None:
            ttl = record.expires_at - now
            if ttl <= 0:
                raise Conflict(f"token {token_id} has expired; create a new token instead", code="token_expired")
        token, new = await create_token(
            self.deps.store,
            record.user_id,
            record.permissions,
            ttl,
            self.deps.clock,
            f"rotated from {token_id}",
            parent_id=record.parent_id,
        )
        await adopt_children(self.deps.store, token_id, new.token_id)
        ends = now + grace
        await self.deps.store.revoke_token(token_id, ends)  # keeps an earlier revocation
        await self.deps.token_revoked(token_id)
        log.info(
            "Token {token_id} rotated to {new_id}; the old one works for {grace} s more",
            token_id=token_id,
            new_id=new.token_id,
            grace=grace,
        )
        return 201, {**_token_answer(token, new), "replaces": token_id, "previousValidUntil": iso8601(ends)}


def _token_summary(record) -> dict:
    return {
        "tokenId": record.token_id,
        "userId": record.user_id,
        "permissions": list(record.permissions),
        "expiresAt": iso8601(record.expires_at),
        "revoked": record.revoked_at is not None,
        "lastUsedAt": iso8601(record.last_used_at),
    }


def _token_answer(token: str, record) -> dict:
    return {
        "token": token,
        "tokenId": record.token_id,
        "userId": record.user_id,
        "permissions": list(record.permissions),
        "expiresAt": iso8601(record.expires_at),
    }
