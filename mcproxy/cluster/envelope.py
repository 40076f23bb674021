"""The signed envelope of a forwarded request: the ``X-MCProxy-Forward`` header.

The edge authenticates the caller; the owner runs the request with the identity the envelope
carries instead of authenticating again. The MAC covers the exact JSON bytes sent, so neither
side needs a canonical form. It binds who (user, permissions, token, impersonator) to what
(method, path with query, body hash) and to one hop (from, to, time, nonce): a captured header
is worth nothing for another request, another node, later, or a second time.
"""

import base64
import hashlib
import hmac
import os
from collections import OrderedDict
from typing import Any

import attrs

from mcproxy import wirejson
from mcproxy.auth.principal import Principal
from mcproxy.errors import ServerFull, Unauthorized

HEADER = b"X-MCProxy-Forward"
"""The request header that carries the envelope."""

_VERSION = b"v1"


class ForgedForward(Unauthorized):
    """An envelope that does not check out. The client's message helps no forger; ``detail``
    says what was wrong, for the owner's log."""

    def __init__(self, detail: str):
        super().__init__("invalid forwarding envelope", reason="forged_forward", code="forged_forward")
        self.detail = detail


class DuplicateForward(Unauthorized):
    """A valid envelope whose nonce was already seen: a replay, or an edge retrying a request
    whose answer it lost. Either way it does not run again, and the edge learns it had started."""

    http_status = 409
    code = "duplicate"

    def __init__(self) -> None:
        super().__init__("this forwarded request was already received", reason="duplicate_forward")


@attrs.frozen
class Forwarded:
    """What the owner learns from a valid envelope."""

    principal: Principal
    #: The caller's address as the edge saw it (for audit; the edge checked ``net:`` rules).
    client: str | None
    rid: str
    #: The edge's node id.
    origin: str
    nonce: str
    #: The edge asks the owner to claim the user (it had no room itself).
    claim: bool = False


def new_nonce() -> str:
    """16 random bytes, base64url: the id of one forwarded request, kept across its retries."""
    return _b64(os.urandom(16)).decode("ascii")


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


class Envelope:
    """Seals and opens envelopes between the nodes that share ``secret``; this node is ``node_id``.

    ``clock.seconds()`` is wall time: nodes compare timestamps, allowing ``skew`` seconds
    either way. Nonces are remembered for ``nonce_ttl`` seconds (at least twice the skew, the
    longest an envelope stays fresh) and at most ``max_nonces`` at once.
    """

    def __init__(
        self,
        secret: bytes,
        node_id: str,
        clock,
        *,
        skew: float = 30.0,
        nonce_ttl: float = 120.0,
        max_nonces: int = 131072,
    ):
        if nonce_ttl < 2 * skew:
            raise ValueError(f"nonce_ttl ({nonce_ttl:g} s) must cover twice the skew ({skew:g} s)")
        # Keyed once: a copy per message skips looking the digest up and keying it again,
        # which a one-shot HMAC does every time.
        self._keyed = hmac.new(secret, digestmod=hashlib.sha256)
        self.node_id = node_id
        self._clock = clock
        self.skew = skew
        self.nonce_ttl = nonce_ttl
        self.max_nonces = max_nonces
        self._nonces: OrderedDict[str, float] = OrderedDict()  # nonce -> when it may be forgotten

    def __repr__(self) -> str:
        return f"<Envelope of {self.node_id}>"  # never the secret

    @property
    def remembered(self) -> int:
        """How many nonces are held now."""
        return len(self._nonces)

    def seal(
        self,
        *,
        to: str,
        principal: Principal,
        client: str | None,
        method: bytes,
        path: bytes,
        body: bytes,
        rid: str,
        nonce: str | None = None,
        claim: bool = False,
    ) -> bytes:
        """The header value for forwarding this request to node ``to``; ``path`` is the path and
        query exactly as sent. A retry passes the first attempt's ``nonce``."""
        fields = {
            "v": 1,
            "from": self.node_id,
            "to": to,
            "ts": int(self._clock.seconds() * 1000),
            "nonce": nonce or new_nonce(),
            "rid": rid,
            "hop": 1,
            "user": principal.user_id,
            "tok": principal.token_id,
            "perms": sorted(principal.permissions),
            "imp": principal.impersonator,
            "client": client,
            "m": method.decode("latin-1"),
            "path": path.decode("latin-1"),
            "bh": hashlib.sha256(body).hexdigest(),
            "claim": claim,
        }
        payload = _b64(wirejson.dumps(fields))
        return b"%s.%s.%s" % (_VERSION, payload, self._mac(payload))

    def open(self, value: bytes, *, method: bytes, path: bytes, body: bytes) -> Forwarded:
        """The identity and origin of the request this envelope came with.

        Raises `ForgedForward` unless the MAC is ours, the envelope is for this node, fresh,
        on its first hop and for this very method, path and body; `DuplicateForward` when its
        nonce was seen; `ServerFull` when more nonces arrived within twice the skew than it
        can hold (forgetting one then could let its envelope be replayed).
        """
        fields = self._verified(value)
        if _get(fields, "v", int) != 1:
            raise ForgedForward("unknown version")
        if _get(fields, "to", str) != self.node_id:
            raise ForgedForward("addressed to another node")
        if _get(fields, "hop", int) != 1:
            raise ForgedForward("forwarded more than once")
        now = self._clock.seconds()
        if abs(now * 1000 - _get(fields, "ts", int)) > self.skew * 1000:
            raise ForgedForward("timestamp outside the allowed skew")
        if (
            _get(fields, "m", str) != method.decode("latin-1")
            or _get(fields, "path", str) != path.decode("latin-1")
            or _get(fields, "bh", str) != hashlib.sha256(body).hexdigest()
        ):
            raise ForgedForward("sealed for another request")
        perms = _get(fields, "perms", list)
        if not all(type(p) is str for p in perms):
            raise ForgedForward("permissions are not strings")
        user = _get(fields, "user", str)
        if not user:
            raise ForgedForward("no user")
        forwarded = Forwarded(
            principal=Principal(
                user_id=user,
                permissions=perms,
                token_id=_optional(fields, "tok"),
                impersonator=_optional(fields, "imp"),
            ),
            client=_optional(fields, "client"),
            rid=_get(fields, "rid", str),
            origin=_get(fields, "from", str),
            nonce=_get(fields, "nonce", str),
            claim=_get(fields, "claim", bool),
        )
        self._remember(forwarded.nonce, now)
        return forwarded

    def _mac(self, payload: bytes) -> bytes:
        mac = self._keyed.copy()
        mac.update(payload)
        return _b64(mac.digest())

    def _verified(self, value: bytes) -> dict:
        parts = value.split(b".")
        if len(parts) != 3 or parts[0] != _VERSION:
            raise ForgedForward("malformed")
        payload = parts[1]
        if not hmac.compare_digest(self._mac(payload), parts[2]):
            raise ForgedForward("bad MAC")
        try:
            fields = wirejson.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))
        except (ValueError, RecursionError):  # binascii.Error and UnicodeDecodeError are ValueErrors
            raise ForgedForward("payload is not base64url JSON") from None
        if not isinstance(fields, dict):
            raise ForgedForward("payload is not a JSON object")
        return fields

    def _remember(self, nonce: str, now: float) -> None:
        nonces = self._nonces
        while nonces and next(iter(nonces.values())) <= now:
            nonces.popitem(last=False)
        if nonce in nonces:
            raise DuplicateForward()
        if len(nonces) >= self.max_nonces:
            seen = next(iter(nonces.values())) - self.nonce_ttl
            if now < seen + 2 * self.skew:  # its envelope may still be fresh
                raise ServerFull("too many forwarded requests arrived within a minute; try again shortly")
            nonces.popitem(last=False)
        nonces[nonce] = now + self.nonce_ttl


def _get(fields: dict, name: str, kind: type) -> Any:
    value = fields.get(name)
    if type(value) is not kind:  # not isinstance: a JSON true is no hop count
        raise ForgedForward(f"{name} is missing or not a {kind.__name__}")
    return value


def _optional(fields: dict, name: str) -> str | None:
    value = fields.get(name)
    if value is not None and type(value) is not str:
        raise ForgedForward(f"{name} is not a string")
    return value
