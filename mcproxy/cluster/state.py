"""What survives a change of a user's owner: the page book and the Streamable HTTP session
records, kept in Redis (design §3.7, §3.8).

Keys, under the prefix: ``pages:<user>`` (hash: ``#next``, the next page id; ``t:<targetId>``,
the page's record as compact JSON), ``ctx:<user>`` (hash: isolated context name ->
``browserContextId``), ``sess:<user>:<session id>`` (hash, expiring after the session's idle
timeout: see `RedisSessionRecords`).

Only the user's owner writes them, and every write carries the fencing token of its claim:
Redis drops a write whose token is no longer the owner record's (a process that lost the
user and does not know it yet). Writes never hold up a tool call: `FencedWriter` sends them
in the background, in order, batched per reactor turn. Reads happen when a process takes a
user on: the page book once before the user's pages attach, a session record when a request
names a session this process does not hold.
"""

import json
from collections.abc import Callable, Iterable

import attrs
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from zope.interface import implementer

from mcproxy.browser.emulation import Emulation, Viewport
from mcproxy.cluster.control import Control
from mcproxy.interfaces import IPageBook, ISessionRecords
from mcproxy.session.records import SessionRecord
from mcproxy.session.registry import Session

log = Logger()

#: Apply each group of changes only if ``owner:<user>`` still carries the group's token.
#: KEYS: for each group, ``owner:<user>`` then the keys it changes. ARGV[1]: JSON list of
#: groups ``[token, [change, ...]]``, one change per key: ``[drop, {field: value},
#: [deleted field, ...], expire ms (0: keep)]``, applied in that order (DEL first).
#: Returns the 1-based numbers of the groups refused.
FENCED_WRITE = """
local groups = cjson.decode(ARGV[1])
local k, refused = 1, {}
for g, group in ipairs(groups) do
  local mine = redis.call('HGET', KEYS[k], 'token') == group[1]
  k = k + 1
  if not mine then refused[#refused + 1] = g end
  for _, change in ipairs(group[2]) do
    local key = KEYS[k]
    k = k + 1
    if mine then
      if change[1] == 1 then redis.call('DEL', key) end
      for field, value in pairs(change[2]) do redis.call('HSET', key, field, value) end
      for _, field in ipairs(change[3]) do redis.call('HDEL', key, field) end
      if change[4] > 0 then redis.call('PEXPIRE', key, change[4]) end
    end
  end
end
return refused
"""

#: Every field of each key: one flat list ``[field, value, ...]`` per key, in one round trip.
READ_HASHES = """
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('HGETALL', key) end
return out
"""

#: Seconds between failed attempts to write (Redis away); a write is given up once its
#: user is no longer this node's with the same token.
RETRY_DELAY = 0.5


@attrs.define
class _Change:
    """What one write does to one hash: delete it first (``drop``), then set and delete
    fields, then set its expiry. Later changes merge into earlier ones: only the end state
    is sent."""

    drop: bool = False
    fields: dict[str, str] = attrs.Factory(dict)
    deleted: set[str] = attrs.Factory(set)
    expire_ms: int = 0

    def set(self, fields: dict[str, str]) -> None:
        self.fields.update(fields)
        self.deleted.difference_update(fields)

    def delete(self, names: Iterable[str]) -> None:
        for name in names:
            self.fields.pop(name, None)
            self.deleted.add(name)

    def delete_key(self) -> None:
        self.drop = True
        self.fields.clear()
        self.deleted.clear()
        self.expire_ms = 0

    def merge(self, newer: "_Change") -> None:
        if newer.drop:
            self.delete_key()
        self.set(newer.fields)
        self.delete(newer.deleted)
        if newer.expire_ms:
            self.expire_ms = newer.expire_ms

    def to_json(self) -> list:
        return [int(self.drop), self.fields or {}, sorted(self.deleted), self.expire_ms]


#: Changes waiting to be sent: (user, token) -> key -> change, in the order they were made.
_Batch = dict[tuple[str, str], dict[str, _Change]]


class FencedWriter:
    """Writes to per-user hashes, each checked in Redis against the user's fencing token
    (``token_of(user)``, None when this node does not own the user: nothing is written).

    Callers do not wait: changes made in one reactor turn go out together in one script
    call, one call at a time, so they reach Redis in the order they were made (the control
    pool would spread independent calls over its connections). A call that fails is
    retried with what came after it, while the user is still this node's.
    """

    def __init__(self, clock: IReactorTime, token_of: Callable[[str], int | None]):
        self.clock = clock
        self.token_of = token_of
        self.control: Control | None = None
        #: Writes Redis refused because another node owns the user now.
        self.refused = 0
        self._pending: _Batch = {}
        self._flushing = False
        self._scheduled: IDelayedCall | None = None
        self._idle: list[Deferred] = []
        self._told_refused: set[tuple[str, str]] = set()
        self._failing = False
        self._stopped = False

    def start(self, control: Control) -> None:
        """Write through ``control`` from now on."""
        self.control = control

    def stop(self) -> Deferred:
        """Take no more changes; Deferred[None] once those already made were sent or given up."""
        self._stopped = True
        return self.flushed()

    # -- changes ----------------------------------------------------------------------

    def set_fields(self, user: str, key: str, fields: dict[str, str]) -> None:
        """HSET ``fields`` in ``key``."""
        change = self._change(user, key)
        if change is not None:
            change.set(fields)

    def delete_fields(self, user: str, key: str, names: Iterable[str]) -> None:
        """HDEL ``names`` from ``key``."""
        change = self._change(user, key)
        if change is not None:
            change.delete(names)

    def delete_key(self, user: str, key: str) -> None:
        """DEL ``key``."""
        change = self._change(user, key)
        if change is not None:
            change.delete_key()

    def expire(self, user: str, key: str, seconds: float) -> None:
        """PEXPIRE ``key`` in ``seconds``."""
        change = self._change(user, key)
        if change is not None:
            change.expire_ms = max(1, int(seconds * 1000))

    def flushed(self) -> Deferred:
        """Deferred[None] that fires once every change made so far was sent (or given up)."""
        if not self._pending and not self._flushing:
            return succeed(None)
        waiter: Deferred = Deferred(lambda d: self._idle.remove(d) if d in self._idle else None)
        self._idle.append(waiter)
        return waiter

    def _change(self, user: str, key: str) -> _Change | None:
        token = self.token_of(user)
        if token is None or self._stopped or self.control is None:
            log.debug("Not writing {key}: this node does not own user {user}", key=key, user=user)
            return None
        changes = self._pending.setdefault((user, str(token)), {})
        change = changes.get(key)
        if change is None:
            change = changes[key] = _Change()
        if not self._flushing and self._scheduled is None:
            self._scheduled = self.clock.callLater(0, self._flush)
        return change

    # -- sending ----------------------------------------------------------------------

    def _flush(self) -> None:
        self._scheduled = None
        self._flushing = True
        Deferred.fromCoroutine(self._send_all()).addErrback(
            lambda failure: log.failure("Cluster state writes stopped", failure)
        )

    async def _send_all(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, {}
                await self._send_until_done(batch)
        finally:
            self._flushing = False
            idle, self._idle = self._idle, []
            for waiter in idle:
                waiter.callback(None)

    async def _send_until_done(self, batch: _Batch) -> None:
        """Send ``batch``; while Redis does not answer, try again with the changes made
        since merged in, as long as some of its users are still this node's."""
        while True:
            try:
                refused = await self._send(batch)
            except CancelledError:
                raise
            except Exception as e:
                if not self._failing:
                    log.warn("Cluster state writes failed ({error}); retrying", error=e)
                self._failing = True
                if self._stopped:
                    log.warn("Cluster state writes for {users} given up: stopping", users=sorted({u for u, _ in batch}))
                    return
                await deferLater(self.clock, RETRY_DELAY)
                batch = self._still_mine(self._merge(batch, self._pending))
                self._pending = {}
                if not batch:
                    return
                continue
            if self._failing:
                log.info("Cluster state writes go through again")
            self._failing = False
            self._note_refused([group for number, group in enumerate(batch, 1) if number in refused])
            return

    async def _send(self, batch: _Batch) -> set[int]:
        assert self.control is not None
        keys: list[str] = []
        groups = []
        for (user, token), changes in batch.items():
            keys.append(self.control.key("owner", user))
            keys.extend(changes)
            groups.append([token, [change.to_json() for change in changes.values()]])
        refused = await self.control.eval(FENCED_WRITE, keys, [json.dumps(groups, separators=(",", ":"))])
        return {int(number) for number in refused}

    @staticmethod
    def _merge(older: _Batch, newer: _Batch) -> _Batch:
        """``older`` with ``newer`` applied on top, for sending both in one call."""
        for group, changes in newer.items():
            merged = older.setdefault(group, {})
            for key, change in changes.items():
                if key in merged:
                    merged[key].merge(change)
                else:
                    merged[key] = change
        return older

    def _still_mine(self, batch: _Batch) -> _Batch:
        """The groups whose user this node still owns with their token (others would be refused)."""
        return {group: changes for group, changes in batch.items() if str(self.token_of(group[0])) == group[1]}

    def _note_refused(self, groups: list[tuple[str, str]]) -> None:
        for user, token in groups:
            self.refused += 1
            if (user, token) not in self._told_refused:
                self._told_refused.add((user, token))
                log.warn(
                    "Cluster: a write for user {user} with token {token} was refused: another node owns the user now",
                    user=user,
                    token=token,
                )


async def read_hashes(control: Control, keys: list[str]) -> list[dict[str, str]]:
    """Every field of each of ``keys`` (an empty dict for a missing key), in one round trip."""
    rows = await control.eval(READ_HASHES, keys, [])
    return [dict(zip(row[::2], row[1::2], strict=True)) for row in rows]


def emulation_record(emulation: Emulation) -> dict:
    """``emulation`` as JSON for a page record."""
    return attrs.asdict(emulation)


def emulation_from_record(record: dict) -> Emulation:
    """The `Emulation` a page record keeps (fields this version does not know are left out)."""
    known = attrs.fields_dict(Emulation)
    values = {name: value for name, value in record.items() if name in known}
    if values.get("viewport"):
        values["viewport"] = Viewport(**values["viewport"])
    if values.get("geolocation"):
        values["geolocation"] = tuple(values["geolocation"])
    return Emulation(**values)


@implementer(IPageBook)
class RedisPageBook:
    """One user's page book in Redis (``pages:<user>``, ``ctx:<user>``), written through
    ``writer``. Loaded once; from then on this process numbers the pages itself and only
    writes (it is the user's only owner while its token is valid)."""

    def __init__(self, writer: FencedWriter, user_id: str):
        assert writer.control is not None, "the writer starts with the cluster node, before any browser"
        self.contexts: dict[str, str] = {}
        self._writer = writer
        self._control = writer.control
        self._user = user_id
        self._pages_key = self._control.key("pages", user_id)
        self._contexts_key = self._control.key("ctx", user_id)
        self._records: dict[str, dict] = {}
        self._next = 1
        self._loaded = False

    def load(self) -> Deferred:
        if self._loaded:
            return succeed(None)
        return Deferred.fromCoroutine(self._load())

    async def _load(self) -> None:
        await self._writer.flushed()  # an earlier book of this user in this process may still be writing
        pages, contexts = await read_hashes(self._control, [self._pages_key, self._contexts_key])
        if self._loaded:
            return
        counter = int(pages.pop("#next", "1"))
        for field, value in pages.items():
            try:
                record = json.loads(value)
                if record.get("emu"):
                    emulation_from_record(record["emu"])
                page_id = int(record["id"])
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                log.warn(
                    "Page record {field} of user {user} is unreadable: {error}", field=field, user=self._user, error=e
                )
                continue
            self._records[field.removeprefix("t:")] = record
            counter = max(counter, page_id + 1)  # never hand out an id a record holds
        self._next = counter
        self.contexts.update(contexts)
        self._loaded = True
        log.info(
            "Page book of user {user} loaded: {pages} pages, {contexts} isolated contexts, next page id {next}",
            user=self._user,
            pages=len(self._records),
            contexts=len(self.contexts),
            next=self._next,
        )

    def page_id(self, target_id: str) -> int:
        record = self._records.get(target_id)
        if record is not None:
            return int(record["id"])
        page_id, self._next = self._next, self._next + 1
        self._records[target_id] = record = {"id": page_id}
        self._writer.set_fields(
            self._user, self._pages_key, {"#next": str(self._next), _field(target_id): _dumps(record)}
        )
        return page_id

    def restore(self, page) -> None:
        record = self._records.get(page.target_id)
        if record is None:
            return
        page.via_proxy = bool(record.get("via"))
        page.opener = record.get("op")
        if record.get("emu"):
            page.state.emulation = emulation_from_record(record["emu"])

    def record(self, page) -> None:
        record: dict = {"id": page.page_id}
        if page.via_proxy:
            record["via"] = 1
        if page.opener is not None:
            record["op"] = page.opener
        emulation = page.state.emulation
        if emulation is not None and emulation != Emulation():
            record["emu"] = emulation_record(emulation)
        if self._records.get(page.target_id) != record:
            self._records[page.target_id] = record
            self._writer.set_fields(self._user, self._pages_key, {_field(page.target_id): _dumps(record)})

    def forget(self, target_id: str) -> None:
        if self._records.pop(target_id, None) is not None:
            self._writer.delete_fields(self._user, self._pages_key, [_field(target_id)])

    def prune(self, alive) -> None:
        for target_id in [t for t in self._records if t not in alive]:
            self.forget(target_id)

    def context_made(self, name: str, context_id: str) -> None:
        self.contexts[name] = context_id
        self._writer.set_fields(self._user, self._contexts_key, {name: context_id})


def _field(target_id: str) -> str:
    return "t:" + target_id


def _dumps(value) -> str:
    return json.dumps(value, separators=(",", ":"))


#: Seconds between refreshes of the expiry of the records of sessions in use (at most).
REFRESH_INTERVAL = 30.0


@implementer(ISessionRecords)
class RedisSessionRecords:
    """Streamable HTTP session records ``sess:<user>:<session id>``, written through
    ``writer`` (fenced) and expiring after ``sessions.idle_timeout`` unless in use.

    Fields: ``tok`` (token id, for revocation), ``pv`` (protocol version), ``ci`` (the
    ``initialize`` params JSON), ``lvl`` (log level), ``sel`` (selected page id), ``op``
    (ids of the pages the session opened, JSON), ``c`` (created, epoch seconds). A session
    is written in full when this process first saves it, then only what changed; the
    expiry of those in use is pushed back every `REFRESH_INTERVAL` seconds.
    """

    def __init__(self, writer: FencedWriter, sessions, clock: IReactorTime):
        self.writer = writer
        self.sessions = sessions
        self.clock = clock
        self._written: dict[str, tuple] = {}  # session id -> (level, selected, opened) last written
        self._in_use: dict[str, Session] = {}  # session id -> session, saved since the last refresh
        self._refresh = LoopingCall(self._refresh_in_use)
        self._refresh.clock = clock

    def start(self) -> None:
        """Refresh the expiry of sessions in use from now on (with the cluster node)."""
        self._refresh.start(max(1.0, min(REFRESH_INTERVAL, self.sessions.idle_timeout / 3)), now=False)

    def stop(self) -> None:
        if self._refresh.running:
            self._refresh.stop()

    def _key(self, user_id: str, session_id: str) -> str:
        assert self.writer.control is not None
        return self.writer.control.key("sess", user_id, session_id)

    def saved(self, session) -> None:
        if session.closed:
            return
        mcp, session_id, user = session.state, session.id, session.user_id
        view = mcp.view
        now = (mcp.log_level, view.selected_page_id, frozenset(view.opened_page_ids))
        self._in_use[session_id] = session
        last = self._written.get(session_id)
        if last == now:
            return
        fields: dict[str, str] = {}
        if last is None:
            session.on_close(lambda: self._forget(session_id))
            fields.update(pv=mcp.protocol_version, c=repr(session.created_at))
            fields["ci"] = _dumps(mcp.client_params.model_dump(by_alias=True, mode="json", exclude_none=True))
            if session.token_id is not None:
                fields["tok"] = session.token_id
        before = last or (None, None, None)
        if last is None or now[2] != before[2]:
            fields["op"] = _dumps(sorted(now[2]))
        gone = []
        for name, value, old in (("lvl", now[0], before[0]), ("sel", now[1], before[1])):
            if value is not None and value != old:
                fields[name] = str(value)
            elif value is None and old is not None:
                gone.append(name)
        key = self._key(user, session_id)
        self.writer.set_fields(user, key, fields)
        if gone:
            self.writer.delete_fields(user, key, gone)
        self.writer.expire(user, key, self.sessions.idle_timeout)
        self._written[session_id] = now

    def ended(self, session) -> None:
        if session.transport == "streamable":
            self.writer.delete_key(session.user_id, self._key(session.user_id, session.id))

    def _forget(self, session_id: str) -> None:
        self._written.pop(session_id, None)
        self._in_use.pop(session_id, None)

    def _refresh_in_use(self) -> None:
        in_use, self._in_use = self._in_use, {}
        for session in in_use.values():
            self.writer.expire(session.user_id, self._key(session.user_id, session.id), self.sessions.idle_timeout)

    def load(self, user_id: str, session_id: str) -> Deferred:
        return Deferred.fromCoroutine(self._load(user_id, session_id))

    async def _load(self, user_id: str, session_id: str) -> SessionRecord | None:
        assert self.writer.control is not None
        (fields,) = await read_hashes(self.writer.control, [self._key(user_id, session_id)])
        if not fields:
            return None
        try:
            return SessionRecord(
                session_id=session_id,
                user_id=user_id,
                token_id=fields.get("tok"),
                protocol_version=fields["pv"],
                client=json.loads(fields["ci"]),
                log_level=fields.get("lvl"),
                selected_page_id=int(fields["sel"]) if "sel" in fields else None,
                opened_page_ids=frozenset(int(i) for i in json.loads(fields.get("op", "[]"))),
                created=float(fields.get("c", "0")),
            )
        except (KeyError, ValueError, TypeError) as e:
            log.warn(
                "The record of session {session_id} of user {user_id} is unreadable: {error}",
                session_id=session_id,
                user_id=user_id,
                error=e,
            )
            return None
