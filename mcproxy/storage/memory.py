"""The ``memory:`` store: dicts in this process, for tests and throw-away runs."""

import attrs
from twisted.internet.defer import succeed
from zope.interface import implementer

from mcproxy.interfaces import IStore
from mcproxy.storage import token_order
from mcproxy.storage.records import TokenRecord, UserRecord


def later(current: float | None, when: float) -> float:
    """A touch never moves a timestamp backwards (several processes may race)."""
    return when if current is None else max(current, when)


def earlier(current: float | None, when: float) -> float:
    """A revocation only ever moves earlier: an immediate revoke ends a rotation's grace."""
    return when if current is None else min(current, when)


@implementer(IStore)
class MemoryStore:
    """`IStore` over dicts; every method answers with an already-fired Deferred."""

    def __init__(self):
        self._users: dict[str, UserRecord] = {}
        self._tokens: dict[str, TokenRecord] = {}
        self._passwords: dict[str, str] = {}

    def open(self):
        return succeed(None)

    def save_user(self, user):
        self._users[user.user_id] = user
        return succeed(None)

    def get_user(self, user_id):
        return succeed(self._users.get(user_id))

    def list_users(self):
        return succeed([self._users[key] for key in sorted(self._users)])

    def count_users(self):
        return succeed(len(self._users))

    def list_user_ids(self):
        return succeed(sorted(self._users))

    def delete_user(self, user_id):
        return succeed(self._users.pop(user_id, None) is not None)

    def touch_user(self, user_id, when):
        user = self._users.get(user_id)
        if user is not None:
            self._users[user_id] = attrs.evolve(user, last_activity=later(user.last_activity, when))
        return succeed(None)

    def save_token(self, token):
        self._tokens[token.token_id] = token
        return succeed(None)

    def get_token(self, token_id):
        return succeed(self._tokens.get(token_id))

    def list_tokens(self, user_id=None):
        tokens = [t for t in self._tokens.values() if user_id is None or t.user_id == user_id]
        return succeed(sorted(tokens, key=token_order))

    def revoke_token(self, token_id, when):
        token = self._tokens.get(token_id)
        if token is None:
            return succeed(False)
        self._tokens[token_id] = attrs.evolve(token, revoked_at=earlier(token.revoked_at, when))
        return succeed(True)

    def touch_token(self, token_id, when):
        token = self._tokens.get(token_id)
        if token is not None:
            self._tokens[token_id] = attrs.evolve(token, last_used_at=later(token.last_used_at, when))
        return succeed(None)

    def hold_first_start(self, seconds):
        return succeed(True)

    def set_password(self, user_id, encoded):
        self._passwords[user_id] = encoded
        return succeed(None)

    def get_password(self, user_id):
        return succeed(self._passwords.get(user_id))

    def close(self):
        return succeed(None)
