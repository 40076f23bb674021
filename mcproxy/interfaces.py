"""The swap points of mcproxy, as zope interfaces.

Every method that does I/O returns a Deferred (or is a coroutine function wrapped by
``Deferred.fromCoroutine`` at the call site). Records passed across these interfaces
are the attrs classes in `mcproxy.storage.records` and `mcproxy.auth.principal`.
"""

from zope.interface import Attribute, Interface


class IStore(Interface):
    """Durable state: users with their browser URL, API tokens and passwords (both hashed).

    Implementations: ``memory:``, ``sqlite:PATH``, ``redis://``; one contract test
    suite runs against all of them. A store is built without I/O (`store_for_url`) and
    made ready by `open`, so the daemon can wire its parts before the reactor runs.
    """

    def open():
        """Connect, or create the schema: Deferred[None]. Fails with `ConfigError` (naming
        ``store.url``) when the store cannot be used."""

    def save_user(user):
        """Insert or replace a `UserRecord`. Deferred[None]."""

    def get_user(user_id):
        """Deferred[UserRecord | None]."""

    def list_users():
        """Deferred[list[UserRecord]], ordered by user id."""

    def count_users():
        """Deferred[int]: how many users are registered (cheap: no records are loaded)."""

    def list_user_ids():
        """Deferred[list[str]]: the registered users' ids, ordered (cheap: no records are loaded)."""

    def delete_user(user_id):
        """Remove the user and revoke nothing else. Deferred[bool]: whether it existed."""

    def touch_user(user_id, when):
        """Set the user's ``last_activity`` to ``when`` (epoch seconds). Deferred[None]."""

    def save_token(token):
        """Insert or replace a `TokenRecord`. Deferred[None]."""

    def get_token(token_id):
        """Deferred[TokenRecord | None]."""

    def list_tokens(user_id=None):
        """Deferred[list[TokenRecord]] (all users when ``user_id`` is None), by creation time."""

    def revoke_token(token_id, when):
        """Mark a token revoked at ``when``. Deferred[bool]: whether it existed."""

    def touch_token(token_id, when):
        """Record the token's last use. Deferred[None]."""

    def hold_first_start(seconds):
        """Deferred[bool]: whether this process may create the first admin credential now:
        always with a store of one process; with a shared store (Redis), only for the first
        to ask within ``seconds``, so processes started together make one, not several."""

    def set_password(user_id, encoded):
        """Store a user's password hash (``mcproxy.auth.basic.hash_password``), replacing any. Deferred[None].

        Passwords live apart from the user record: a user may have one before registering
        a browser, and unregistering a browser keeps it.
        """

    def get_password(user_id):
        """Deferred[str | None]: the user's stored password hash."""

    def close():
        """Release connections. Deferred[None]."""


class IAuthenticator(Interface):
    """Turns the credentials of an HTTP request into a `Principal`.

    Several authenticators are chained; each handles one kind of credential
    (API token, JWT, Basic...). The transports only see the chain.
    """

    def authenticate(request):
        """Deferred[Principal | None] for a twisted.web request.

        None: the request carries no credential of this kind (let the next one try).
        Raise `mcproxy.errors.Unauthorized` for a credential of this kind that is bad.
        """


class IToolProvider(Interface):
    """What the MCP layer needs from the tools: a list and a way to call them."""

    def list_tools(principal):
        """list[mcp_types.Tool] this principal may call."""

    def call_tool(name, arguments, context):
        """Run a tool. Deferred[dict]: the ``tools/call`` result as it goes on the wire
        (``content`` blocks, ``isError``, ``structuredContent``; see
        `mcproxy.tools.call.Response.to_result`).

        ``context`` is a `mcproxy.calls.CallContext`. Cancelling the Deferred cancels
        the work in the browser. Unknown tools and refused permissions come back as
        ``isError`` results, never as exceptions.
        """


class IBrowserPool(Interface):
    """One Chrome DevTools connection per user, shared by all that user's sessions."""

    def browser_for(user_id, browser_url):
        """The `IUserBrowser` for this user, created (and connecting) on first use."""

    def check_room(user_id):
        """Raise ServerFull when taking on this user would pass the process's user limit."""

    def existing(user_id):
        """The user's `IUserBrowser` if the pool holds one, else None (nothing is created)."""

    def forget(user_id):
        """Close and drop the user's connection. Deferred[None]."""

    def connection_count():
        """How many users' browsers are connected now."""

    def close():
        """Close every connection. Deferred[None]."""


class IUserBrowser(Interface):
    """One user's browser, as the tools see it."""

    user_id = Attribute("The owning user.")
    browser_url = Attribute("The registered DevTools URL.")
    status = Attribute('"connected" | "disconnected" | "reconnecting" | "failed"')
    last_error = Attribute("Human text of the last connection failure, or None.")

    def pages():
        """list[Page] currently open in this browser, in page-id order."""

    def page(page_id):
        """The `Page` with this id; raise ToolError when there is none."""

    def new_page(url, *, background=False, opener=None, timeout=None, isolated_context=None):
        """Open a tab, wait for it to load. Deferred[Page]. ``opener`` is the MCP session id;
        ``isolated_context`` names a browser context of its own (storage kept apart)."""

    def context_name(page):
        """The isolated context name ``page`` was opened in, or None."""

    def close_page(page_id):
        """Close a tab. Deferred[None]."""

    def remember(page):
        """Keep what a tool changed on ``page`` (its emulation) in the browser's page book."""

    def send(method, params=None, *, timeout=None):
        """A browser-level CDP call. Deferred[dict]; fails fast when disconnected."""


class IPageBook(Interface):
    """What must outlive one process's hold on a user's browser: page ids and the proxy's
    records of each page, and the named isolated contexts.

    `mcproxy.browser.book.MemoryPageBook` keeps them in the process (one process: nothing
    outlives it); `mcproxy.cluster.state.RedisPageBook` keeps them in Redis, so the next
    owner of the user numbers and flags the same tabs the same way. Only `load` may wait:
    every other method answers at once, and writes elsewhere happen in the background.
    """

    contexts = Attribute("Named isolated contexts: dict of name -> browserContextId.")

    def load():
        """Read what an earlier owner left, once, before the first pages attach. Deferred[None]."""

    def page_id(target_id):
        """The page id of a target new to this process: the one it had, else the next unused one."""

    def restore(page):
        """Give a page new to this process what its record says (flags, emulation), if any."""

    def record(page):
        """Keep the page's flags (``via_proxy``, ``opener``) and emulation."""

    def forget(target_id):
        """The target is gone for good (closed): drop its record."""

    def prune(alive):
        """Drop the records of targets not in ``alive`` (target ids Chrome has now)."""

    def context_made(name, context_id):
        """Keep the isolated context ``name`` (``browserContextId`` ``context_id``)."""


class ISessionRecords(Interface):
    """Records of Streamable HTTP sessions, so that a session outlives the process that
    served it: another process resumes it from its record.

    `mcproxy.session.records.NoSessionRecords` keeps none (one process: a session the
    registry does not know is gone); `mcproxy.cluster.state.RedisSessionRecords` keeps
    them in Redis. Writes happen in the background; only `load` waits.
    """

    def saved(session):
        """Record what changed in ``session`` (a `mcproxy.session.registry.Session` of the
        Streamable transport) since it was last saved; called after each of its requests."""

    def ended(session):
        """``session`` ended for good (closed by its client, idle, its token revoked): drop
        its record."""

    def load(user_id, session_id):
        """Deferred[`mcproxy.session.records.SessionRecord` | None]: the record of a session
        of ``user_id`` this process does not hold."""


class IArtifactIndex(Interface):
    """Which artifacts each user has, and which process holds each file.

    `mcproxy.artifacts.index.LocalIndex` is the artifact store's own (one process: every file
    is here); `mcproxy.cluster.artifacts.RedisArtifactIndex` keeps the records in Redis, so
    a user's artifacts stay listed and readable when the user moves to another process.
    `Artifact` records cross it (`mcproxy.artifacts.artifact`).
    """

    def add(artifact):
        """Record a saved artifact, replacing the user's artifact of the same name.
        Deferred[None]; fails with `ToolError` when it cannot be recorded."""

    def remove(artifact):
        """Forget an artifact (expired, or its file is gone), in the background."""

    def listed(user_id):
        """Deferred[list[Artifact]]: the user's live artifacts, oldest first."""

    def find(user_id, uri):
        """Deferred[Artifact | None]: the user's live artifact behind ``uri``."""

    def missing(artifacts):
        """Deferred[set[str]]: the ids of ``artifacts`` (held here) that the index no longer
        lists (replaced by a save elsewhere), whose files may go."""

    def fetch(artifact):
        """Deferred[bytes | None]: the file of an artifact another process holds, from that
        process; None when it cannot be had (the process is gone)."""
