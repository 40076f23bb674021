"""``mcproxy-admin``: manage API tokens and Basic-auth passwords directly in the configured store.

Works whether the daemon runs or not (SQLite in WAL mode and Redis both allow a second
client). Only `main` touches the global reactor, through `twisted.internet.task.react`.
"""

import getpass
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.python import usage

from mcproxy.auth.basic import hash_password
from mcproxy.auth.tokens import create_token, is_valid_token_id, is_valid_user_id, parse_token, revoke_token_tree
from mcproxy.config import ConfigError, load
from mcproxy.errors import MCProxyError, NotFound
from mcproxy.storage import open_store

DEFAULT_PERMISSIONS = ("tools:*", "register")


def _seconds(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"--ttl expects a number of seconds, got {value!r}") from None


class CreateOptions(usage.Options):
    """``tokens create``: print a new token (and nothing else) on stdout."""

    optParameters = [
        ["user", "u", None, "The user the token acts as (required)."],
        ["ttl", None, None, "Seconds until the token expires (default: never).", _seconds],
        ["description", None, "", "A note shown by 'tokens list'."],
    ]

    def __init__(self):
        super().__init__()
        self["permissions"] = []

    def opt_permission(self, permission):
        self["permissions"].append(permission)

    # The option's --help text (a docstring would keep its line breaks and indentation).
    opt_permission.__doc__ = (
        "A permission (repeatable): tools:*, tools:<name>, tools:category:<cat>, register,"
        " admin, impersonate, metrics. Default: tools:* and register."
    )

    opt_p = opt_permission

    def postOptions(self):
        if not self["user"]:
            raise usage.UsageError("tokens create needs --user USER")


class ListOptions(usage.Options):
    """``tokens list``: a table of tokens, never their secrets."""

    optParameters = [["user", "u", None, "Only this user's tokens."]]


class RevokeOptions(usage.Options):
    """``tokens revoke TOKEN_ID``: the token stops working now."""

    def getSynopsis(self):
        return super().getSynopsis() + " TOKEN_ID"

    def parseArgs(self, token_id):  # type: ignore[override]  # usage.Options passes the positional arguments
        self["token_id"] = parse_token(token_id) or token_id
        if not is_valid_token_id(self["token_id"]):
            raise usage.UsageError(f"{token_id!r} is not a token id (16 hex digits, as 'tokens list' shows)")


class TokensOptions(usage.Options):
    """``tokens``: create, list and revoke API tokens."""

    subCommands = [
        ["create", None, CreateOptions, "Create a token; prints it on stdout."],
        ["list", None, ListOptions, "List tokens."],
        ["revoke", None, RevokeOptions, "Revoke a token."],
    ]

    def postOptions(self):
        if self.subCommand is None:
            raise usage.UsageError("choose one of: tokens create, tokens list, tokens revoke")


class SetPasswordOptions(usage.Options):
    """``users set-password USER``: the password comes from stdin (one line) or a prompt."""

    def getSynopsis(self):
        return super().getSynopsis() + " USER"

    def parseArgs(self, user_id):  # type: ignore[override]  # usage.Options passes the positional arguments
        if not is_valid_user_id(user_id):
            raise usage.UsageError(f"{user_id!r} is not a user id (1-128 of A-Z a-z 0-9 . _ @ -)")
        self["user"] = user_id


class UsersOptions(usage.Options):
    """``users``: per-user settings (Basic-auth passwords)."""

    subCommands = [
        ["set-password", None, SetPasswordOptions, "Set a user's password for Authorization: Basic."],
    ]

    def postOptions(self):
        if self.subCommand is None:
            raise usage.UsageError("choose one of: users set-password USER")


class Options(usage.Options):
    """Command line of ``mcproxy-admin``."""

    synopsis = "Usage: mcproxy-admin [--config PATH]"
    optParameters = [["config", "c", None, "The mcproxy TOML configuration file (env overrides apply)."]]
    subCommands = [
        ["tokens", None, TokensOptions, "Manage API tokens."],
        ["users", None, UsersOptions, "Manage users' passwords."],
    ]

    def postOptions(self):
        if self.subCommand is None:
            raise usage.UsageError("no command given; try: tokens list")


def _when(seconds: float | None, missing: str) -> str:
    if seconds is None:
        return missing
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def format_table(tokens) -> str:
    """The ``tokens list`` table: one row per token, columns aligned."""
    rows = [("ID", "USER", "PERMISSIONS", "EXPIRES", "REVOKED", "LAST USED")]
    for t in tokens:
        rows.append(
            (
                t.token_id,
                t.user_id,
                ",".join(t.permissions) or "-",
                _when(t.expires_at, "never"),
                _when(t.revoked_at, "no"),
                _when(t.last_used_at, "never"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n" for row in rows
    )


async def _create(store, options, clock, out) -> None:
    token, _ = await create_token(
        store,
        options["user"],
        options["permissions"] or DEFAULT_PERMISSIONS,
        options["ttl"],
        clock,
        description=options["description"],
    )
    out.write(token + "\n")


async def _list(store, options, clock, out) -> None:
    out.write(format_table(await store.list_tokens(options["user"])))


async def _revoke(store, options, clock, out) -> list[str]:
    token_id = options["token_id"]
    revoked = await revoke_token_tree(store, token_id, clock.seconds())
    if not revoked:
        raise NotFound(f"no token with id {token_id}")
    out.write(f"revoked {token_id}\n")
    for child_id in revoked[1:]:
        out.write(f"revoked {child_id} (made from it)\n")
    return revoked


async def tell_cluster(reactor, config, revoked: list[str], err) -> None:
    """Tell the running processes of a cluster (``cluster.enabled``) that tokens were
    revoked, so they end those tokens' sessions at once rather than at their next poll."""
    from mcproxy.cluster.control import open_control
    from mcproxy.cluster.events import TOKEN_REVOKED, publish

    control = await open_control(reactor, config.store.url)
    try:
        for token_id in revoked:
            if not await publish(control, TOKEN_REVOKED, "mcproxy-admin", token=token_id):
                err.write("mcproxy-admin: the cluster was not told; its processes notice within seconds\n")
                return
    finally:
        await control.close()


def read_password(stdin) -> str:
    """The new password: typed twice at a terminal, else the first line of ``stdin``."""
    if stdin.isatty():
        password = getpass.getpass("New password: ")
        if getpass.getpass("Repeat it: ") != password:
            raise MCProxyError("the two passwords differ; nothing was changed", code="bad_password")
    else:
        password = stdin.readline().rstrip("\r\n")
    if not password:
        raise MCProxyError("the password is empty; nothing was changed", code="bad_password")
    return password


async def _set_password(store, options, clock, out) -> None:
    try:
        encoded = hash_password(read_password(sys.stdin))
    except ValueError as e:
        raise MCProxyError(f"{e}; nothing was changed", code="bad_password") from None
    await store.set_password(options["user"], encoded)
    out.write(f"password set for {options['user']}\n")


#: The commands; what one returns is its outcome (``revoke``: the revoked token ids).
_COMMANDS: dict[str, Callable[..., Awaitable[Any]]] = {
    "create": _create,
    "list": _list,
    "revoke": _revoke,
    "set-password": _set_password,
}


async def run(reactor, options: Options, config, out=None, err=None) -> None:
    """Carry out the parsed command against the configured store; SystemExit(1) on failure."""
    out, err = out or sys.stdout, err or sys.stderr
    group = options.subOptions
    command = _COMMANDS[group.subCommand]
    try:
        store = await open_store(config.store.url, reactor)
        try:
            done = await command(store, group.subOptions, reactor, out)
        finally:
            await store.close()
        if group.subCommand == "revoke" and config.cluster.enabled:
            await tell_cluster(reactor, config, done, err)
    except CancelledError:
        raise
    except (ConfigError, MCProxyError) as e:
        err.write(f"mcproxy-admin: {e}\n")
        raise SystemExit(1) from None
    except Exception as e:
        err.write(f"mcproxy-admin: unexpected error: {type(e).__name__}: {e}\n")
        raise SystemExit(1) from None


def main(argv=None) -> None:
    """Console-script entry point."""
    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        sys.stderr.write(f"mcproxy-admin: {e}\nRun 'mcproxy-admin --help' for usage.\n")
        raise SystemExit(2) from None
    try:
        config = load(options["config"])
    except ConfigError as e:
        sys.stderr.write(f"mcproxy-admin: {e}\n")
        raise SystemExit(1) from None

    from twisted.internet.task import react

    react(lambda reactor: Deferred.fromCoroutine(run(reactor, options, config)))
