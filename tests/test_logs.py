"""Log output: JSON lines, readable text, request ids, and secrets that never reach the stream."""

import contextvars
import io
import json
import time

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.logger import Logger, LogPublisher
from twisted.python import usage
from twisted.scripts.twistd import ServerOptions

from mcproxy import logs
from mcproxy.testing.fuzz import fuzz_settings
from mcproxy.testing.tool_calls import sleep

API_TOKEN = "mcpx_0123456789abcdef_" + "S3cr3tS3cr3tS3cr3tS3cr3tS3cr3tS3cr3tS3cr3tx"
JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNlY3JldA"
BASIC = "YWxpY2U6aHVudGVyMi1wYXNzd29yZA=="  # alice:hunter2-password


class Terminal(io.StringIO):
    def isatty(self):
        return True


def logged(stream, json_mode=None):
    """A Logger publishing only to an observer on ``stream``."""
    publisher = LogPublisher(logs.make_observer(stream, json_mode))
    return Logger(namespace="mcproxy.test", observer=publisher)


def records(stream) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_time_level_namespace_message_and_fields():
    stream = io.StringIO()  # not a terminal: JSON
    log = logged(stream)
    log.info("User {user_id} called {tool}", user_id="alice", tool="click", request_id="r-1", count=3)
    log.warn("second {n}", n=2)
    first, second = records(stream)
    assert first["message"] == "User alice called click"
    assert first["level"] == "info" and second["level"] == "warn"
    assert first["namespace"] == "mcproxy.test"
    assert first["time"].endswith("Z") and first["time"][:4].isdigit() and "T" in first["time"]
    assert (first["user_id"], first["tool"], first["request_id"], first["count"]) == ("alice", "click", "r-1", 3)
    assert "log_format" not in first and "log_logger" not in first


def test_objects_in_fields_are_left_out_of_json():
    stream = io.StringIO()
    logged(stream).info("with an object", thing=object(), name="x")
    (record,) = records(stream)
    assert "thing" not in record and record["name"] == "x"


def test_failures_come_with_a_redacted_traceback():
    stream = io.StringIO()
    log = logged(stream)
    try:
        raise RuntimeError(f"boom with {API_TOKEN}")
    except RuntimeError:
        log.failure("It broke")
    (record,) = records(stream)
    assert record["level"] == "critical" and record["message"] == "It broke"
    assert "RuntimeError: boom with mcpx_0123456789abcdef_[REDACTED]" in record["traceback"]
    assert "S3cr3t" not in stream.getvalue()


def test_text_on_a_terminal_is_readable():
    stream = Terminal()
    logged(stream).info("Connected to {url}", url="http://127.0.0.1:9222", user_id="bob", request_id="abc")
    line = stream.getvalue()
    assert not line.lstrip().startswith("{")
    assert "info  [mcproxy.test] Connected to http://127.0.0.1:9222" in line
    assert "request_id=abc" in line and "user_id=bob" in line
    assert line.endswith("\n") and line.count("\n") == 1


def test_json_can_be_forced_on_a_terminal_and_text_off_one():
    stream = Terminal()
    logged(stream, json_mode=True).info("x")
    assert records(stream)[0]["message"] == "x"
    plain = io.StringIO()
    logged(plain, json_mode=False).info("y")
    assert "] y" in plain.getvalue()


SECRETS = {
    "bearer": (f"Authorization: Bearer {JWT}", ["eyJzdWIiOiJhbGljZSJ9", "c2lnbmF0dXJl"]),
    "bearer in prose": ("sent bearer abc.DEF-ghi_123 to upstream", ["abc.DEF-ghi_123"]),
    "api token": (f"token {API_TOKEN} was refused", ["S3cr3t"]),
    "jwt alone": (f"claims of {JWT} were bad", ["eyJzdWIiOiJhbGljZSJ9"]),
    "basic": (f"Authorization: Basic {BASIC}", [BASIC]),
    "basic in prose": (f"header basic {BASIC} given", [BASIC]),
    "authorization header": ("authorization: Token xyz-secret-value", ["xyz-secret-value"]),
    "cookie header": ("Cookie: session=abc123secret; theme=dark", ["abc123secret", "dark"]),
    "set-cookie": ("Set-Cookie: id=a3fWa; Secure", ["a3fWa"]),
    "header repr": (
        "Headers({b'cookie': [b'sid=zzz-cookie'], b'authorization': [b'Bearer qqq-token']})",
        ["zzz-cookie", "qqq-token"],
    ),
    "token in url": ("GET /sse?token=url-secret-1&x=1", ["url-secret-1"]),
    "access_token in url": ("redirect to https://h/cb#x?access_token=url-secret-2", ["url-secret-2"]),
    "password pair": ("form password=hunter2-pw&user=bob", ["hunter2-pw"]),
    "password json": ('{"password": "hunter3-pw", "user": "bob"}', ["hunter3-pw"]),
    "url userinfo": ("fetch https://bob:pa55word@example.com/x", ["pa55word"]),
    "api key header": ("X-Api-Key: k3y-value", ["k3y-value"]),
}


@pytest.mark.parametrize("json_mode", [True, False])
@pytest.mark.parametrize("kind", sorted(SECRETS))
def test_secrets_never_reach_the_stream(kind, json_mode):
    text, secrets = SECRETS[kind]
    stream = io.StringIO()
    log = logged(stream, json_mode)
    log.info("{text}", text=text)  # through a field, formatted into the message
    log.info(text.replace("{", "{{").replace("}", "}}"))  # in the format string itself
    log.info("detail", detail=text)  # as a field of its own (text mode shows only ids)
    output = stream.getvalue()
    for secret in secrets:
        assert secret not in output
    assert output.count(logs.REDACTED) >= (3 if json_mode else 2)


@pytest.mark.parametrize("unit", ["token", "-token", "a-", "eyJ-", "a.", "token:'"])
def test_redaction_takes_linear_time_on_long_runs(unit):
    text = unit * (100_000 // len(unit))  # quadratic patterns took minutes on these
    started = time.monotonic()
    logs.redact(text)
    assert time.monotonic() - started < 2.0


def test_a_jwt_inside_a_word_goes_and_the_word_stays():
    assert logs.redact(f"id-{JWT} ok") == f"id-{logs.REDACTED} ok"


def test_redaction_keeps_what_is_not_secret():
    text = "token_id=0123456789abcdef user_id=bob basic configuration at http://127.0.0.1:9222/json"
    assert logs.redact(text) == text
    assert logs.redact(f"Bearer {API_TOKEN}") == f"Bearer {logs.REDACTED}"
    assert logs.redact(f"got {API_TOKEN}") == f"got mcpx_0123456789abcdef_{logs.REDACTED}"


@pytest.mark.parametrize(
    "name", ["password", "session_token", "sessionToken", "jwt_secret", "Authorization", "cookie", "apiKey", "token"]
)
def test_fields_named_like_secrets_are_dropped(name):
    stream = io.StringIO()
    logged(stream).info("x {" + name + "}", **{name: "plain-looking-value"})  # also formatted into the message
    (record,) = records(stream)
    assert record[name] == logs.REDACTED
    assert record["message"] == f"x {logs.REDACTED}"
    assert "plain-looking-value" not in stream.getvalue()


@pytest.mark.parametrize("name", ["token_id", "tokenId", "user_id", "tool", "session_id"])
def test_id_fields_are_not_secrets(name):
    assert not logs.is_secret_field(name)


@pytest_twisted.ensureDeferred
async def test_request_id_follows_a_request_across_awaits(reactor):
    stream = io.StringIO()
    log = logged(stream)

    async def handle(label):
        log.info("start {label}", label=label)
        await sleep(reactor, 0.01)
        log.info("after await {label}", label=label)

    def process(label):
        return Deferred.fromCoroutine(handle(label))

    # A context of its own: the reactor may run this test in a context an earlier test's
    # timer captured (the asyncio reactor's callbacks keep the context they were scheduled in).
    clean = contextvars.Context()
    first = clean.run(logs.in_request, "req-1", process, "a")
    second = clean.run(logs.in_request, "req-2", process, "b")
    clean.run(log.info, "outside any request")
    await first
    await second
    by_message = {r["message"]: r.get("request_id") for r in records(stream)}
    assert by_message == {
        "start a": "req-1",
        "after await a": "req-1",
        "start b": "req-2",
        "after await b": "req-2",
        "outside any request": None,
    }
    assert clean.run(logs.REQUEST_ID.get) is None


def test_an_events_own_request_id_wins():
    stream = io.StringIO()
    logs.in_request("outer", logged(stream).info, "x", request_id="inner")
    assert records(stream)[0]["request_id"] == "inner"


def test_level_filter_drops_debug_by_default(capsys):
    options = {"nodaemon": True, "logfile": None}
    publisher = LogPublisher(logs.twistd_observer(options))
    log = Logger(namespace="mcproxy.test", observer=publisher)
    log.debug("hidden")
    log.info("shown")
    out = capsys.readouterr().out
    assert "shown" in out and "hidden" not in out


class Subcommand(usage.Options):
    """Stands in for the plugin's Options: hands twistd's options to `logs.use_for_twistd`."""

    def postOptions(self):
        logs.use_for_twistd(self.parent)


class TwistdOptions(ServerOptions):
    """twistd's own options with the stand-in subcommand instead of the installed plugins."""

    subCommands = [("mcproxy-test", None, Subcommand, "test")]


def _twistd_options(*argv) -> ServerOptions:
    """Parsed the way twistd parses them: its options, the subcommand's, then ``--logger`` resolved."""
    options = TwistdOptions()
    options.parseOptions(["--pidfile=", *argv, "mcproxy-test"])
    return options


def test_twistd_in_the_foreground_logs_json_to_stdout(capsys):
    options = _twistd_options("-n")
    observer = options["logger"]()  # what twistd's AppLogger calls
    Logger(namespace="mcproxy.test", observer=LogPublisher(observer)).info("hello {who}", who="ops")
    (line,) = capsys.readouterr().out.splitlines()  # captured stdout is not a terminal
    assert json.loads(line)["message"] == "hello ops"


def test_twistd_log_file_gets_json(tmp_path):
    path = tmp_path / "mcproxy.log"
    options = _twistd_options("--logfile", str(path))
    observer = options["logger"]()
    Logger(namespace="mcproxy.test", observer=LogPublisher(observer)).info(f"to file {API_TOKEN}")
    record = json.loads(path.read_text())
    assert record["message"] == f"to file mcpx_0123456789abcdef_{logs.REDACTED}"


def test_an_explicit_logger_or_syslog_choice_is_kept():
    assert _twistd_options("-n", "--logger", "mcproxy.logs.observer")["logger"] is logs.observer
    assert _twistd_options("--syslog")["logger"] is None
    logs.use_for_twistd(None)  # Options used outside twistd have no parent


_FRAGMENTS = st.sampled_from(
    [
        "Bearer ",
        "basic ",
        "dXNlcjpwdw==",
        "eyJhbGciOiJIUzI1NiJ9",
        ".",
        "mcpx_",
        "0123456789abcdef_x",
        "://",
        "u:pw@",
        "passwd",
        "Token",
        "Authorization",
        "Cookie",
        "api-key",
        "secret",
        "=",
        ":",
        "'",
        '"',
        " ",
        "\n",
        "h",
    ]
)


@fuzz_settings(500)
@given(st.lists(_FRAGMENTS | st.text(max_size=6), max_size=14).map("".join))
def test_text_the_gate_lets_by_holds_nothing_a_rule_would_hide(text):
    """Redaction first asks `may_hold_secret`; whatever it lets by, no rule (of the logs or of
    the audit trail) would have changed."""
    from mcproxy.audit import SECRET_VALUE

    if not logs.may_hold_secret(text):
        for pattern, replacement in logs._RULES:
            assert pattern.sub(replacement, text) == text
        assert SECRET_VALUE.sub(logs.REDACTED, text) == text


def test_the_gate_lets_ordinary_arguments_by():
    assert not logs.may_hold_secret("() => document.title")
    assert logs.may_hold_secret("see https://example.com/")
