"""The audit trail: redaction, the file, and what a running daemon writes to it."""

import json
import os
import stat
from datetime import UTC, datetime

import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from mcproxy.audit import AuditLog, _iso, redact
from mcproxy.logs import REDACTED
from mcproxy.testing.daemon import start_proxy
from mcproxy.testing.fuzz import fuzz_settings


def test_credentials_and_sensitive_arguments_are_redacted():
    token = "mcpx_0123456789abcdef_" + "A" * 43
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
    arguments = {
        "url": f"https://example.test/?next=1&t={token}",
        "headers": {"Authorization": "Bearer abc", "X-Api-Key": "k", "Accept": "text/html"},
        "elements": [{"uid": "1_2", "value": "hunter2"}, {"uid": "1_3", "value": "bob"}],
        "function": f"() => fetch('/x', {{headers: {{a: 'Bearer {jwt}'}}}})",
        "password": "pw",
        "value": "typed secret",
        "proxy": "https://bob:userinfo-pw@proxy.test/",
        "form": "user=bob&password=form-pw",
    }
    cleaned = redact(arguments, frozenset({"value"}))
    text = json.dumps(cleaned)
    for secret in (token, jwt, "hunter2", "typed secret", '"pw"', '"k"', "abc", "userinfo-pw", "form-pw"):
        assert secret not in text, secret
    assert cleaned["headers"]["Accept"] == "text/html"
    assert cleaned["password"] == REDACTED and cleaned["value"] == REDACTED
    assert cleaned["elements"][1] == {"uid": "1_3", "value": REDACTED}
    assert cleaned["url"] == f"https://example.test/?next=1&t={REDACTED}"
    assert redact("x" * 5000).endswith("…") and len(redact("x" * 5000)) == 2001


def test_huge_arguments_are_cut_before_they_are_redacted(monkeypatch):
    """A form of a hundred 40,000-character values keeps 16 KiB in all, and the redaction
    reads little more than that (it would otherwise hold the reactor for seconds)."""
    import mcproxy.logs as logs

    token = "mcpx_0123456789abcdef_" + "B" * 43
    read = []
    real = logs.redact
    monkeypatch.setattr(logs, "redact", lambda text: read.append(len(text)) or real(text))
    elements = [{"uid": f"1_{n}", "value": "v" * 40_000} for n in range(100)]
    cleaned = redact({"elements": elements, "note": "x" * 1990 + token})
    assert sum(read) <= 16384 + 100 * 300  # each string read only up to its cut and margin
    assert len(json.dumps(cleaned)) < 24_000  # 16 KiB of text, the rest is structure
    assert cleaned["elements"][0]["value"].endswith("…") and len(cleaned["elements"][0]["value"]) == 2001
    assert cleaned["elements"][-1]["value"] == "…"  # past the record's budget
    assert redact({"note": "x" * 1990 + token})["note"].startswith("x" * 1990 + REDACTED[:10])
    assert redact(list(range(150)))[-1] == "… 50 more"


def test_no_audit_file_no_redaction_work(monkeypatch):
    import mcproxy.audit as audit_module

    monkeypatch.setattr(audit_module, "redact", lambda *a: (_ for _ in ()).throw(AssertionError("redacted")))
    AuditLog("", Clock()).tool_call(object())  # nothing is read, nothing is written


def test_lines_are_whole_json_objects_in_a_private_file(tmp_path):
    clock = Clock()
    clock.advance(1_800_000_000.25)
    path = tmp_path / "logs" / "audit.jsonl"
    audit = AuditLog(str(path), clock)
    audit.startService()
    audit.admin_action(None, "127.0.0.1", "create_token", "/api/tokens", "unauthorized")
    os.rename(path, tmp_path / "rotated.jsonl")
    audit.reopen()
    audit.admin_action(None, "127.0.0.1", "register", "/api/register", "ok")
    audit.stopService()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    (line,) = path.read_text().splitlines()
    event = json.loads(line)
    assert event == {
        "time": "2027-01-15T08:00:00.250Z",
        "kind": "admin",
        "userId": None,
        "tokenId": None,
        "client": "127.0.0.1",
        "action": "register",
        "target": "/api/register",
        "outcome": "ok",
    }
    AuditLog("", clock).admin_action(None, None, "x", None, "ok")  # no path: nothing kept, no error


@pytest_twisted.ensureDeferred
async def test_a_running_daemon_audits_tool_calls_and_admin_actions(reactor, tmp_path):
    proxy = await start_proxy(reactor, tmp_path)
    try:
        token = await proxy.token_for("alice")
        answer = await proxy.call_tool(token, "list_pages")
        assert answer["result"]["isError"] is True  # no browser registered: still audited
        await proxy.call_tool(token, "no_such_tool")
        code, _, _ = await proxy.api("DELETE", "/api/tokens/0123456789abcdef")
        assert code == 404
        # logrotate moves the file away, then SIGHUP: the next events go to a fresh file.
        os.rename(tmp_path / "audit.jsonl", tmp_path / "audit.jsonl.1")
        proxy.service.on_hangup()
        await proxy.call_tool(token, "list_pages", rid=2)
    finally:
        await proxy.stop()
    (after_rotation,) = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert after_rotation["tool"] == "list_pages" and after_rotation["requestId"] == "2"
    events = [json.loads(line) for line in (tmp_path / "audit.jsonl.1").read_text().splitlines()]
    admin_events = [(e["action"], e["outcome"]) for e in events if e["kind"] == "admin"]
    assert admin_events == [("create_token", "ok"), ("revoke_token", "not_found")]
    calls = [e for e in events if e["kind"] == "tool_call"]
    assert [(c["tool"], c["outcome"]) for c in calls] == [("list_pages", "error"), ("no_such_tool", "unknown_tool")]
    first = calls[0]
    assert first["userId"] == "alice" and first["tokenId"] == token.split("_")[1]
    assert first["client"] == "127.0.0.1" and first["sessionId"] is None and first["durationMs"] >= 0
    assert set(first) >= {
        "time",
        "userId",
        "tokenId",
        "client",
        "sessionId",
        "tool",
        "arguments",
        "outcome",
        "durationMs",
    }
    assert token not in (tmp_path / "audit.jsonl.1").read_text()


@pytest_twisted.ensureDeferred
async def test_text_typed_into_password_fields_never_reaches_the_audit(reactor, user_browser, tmp_path):
    from twisted.internet.task import Clock

    from mcproxy.testing.tool_calls import make_context, make_registry, ok, text_of, uid_of

    audit = AuditLog(str(tmp_path / "audit.jsonl"), Clock())
    audit.startService()
    tools = make_registry(reactor, user_browser, on_call_finished=[audit.tool_call])
    context = make_context()
    page = "data:text/html,<label>User <input id=u></label><label>Secret <input id=p type=password></label>"
    await ok(tools, context, "new_page", url=page)
    page_id = context.session.selected_page_id
    snapshot = text_of(await ok(tools, context, "take_snapshot", pageId=page_id))
    user, secret = uid_of(snapshot, 'textbox "User"'), uid_of(snapshot, 'textbox "Secret"')
    await ok(tools, context, "fill", pageId=page_id, uid=user, value="visible-name")
    await ok(tools, context, "fill", pageId=page_id, uid=secret, value="hunter2-fill")
    await ok(
        tools,
        context,
        "fill_form",
        pageId=page_id,
        elements=[{"uid": user, "value": "n2"}, {"uid": secret, "value": "hunter2-form"}],
    )
    await ok(tools, context, "evaluate_script", pageId=page_id, function="() => document.getElementById('p').focus()")
    await ok(tools, context, "type_text", pageId=page_id, text="hunter2-typed")
    typed = await ok(
        tools, context, "evaluate_script", pageId=page_id, function="() => document.getElementById('p').value"
    )
    assert "hunter2-formhunter2-typed" in text_of(typed)  # the text really went into the field
    audit.stopService()
    written = (tmp_path / "audit.jsonl").read_text()
    assert "visible-name" in written
    for secret_text in ("hunter2-fill", "hunter2-form", "hunter2-typed"):
        assert secret_text not in written


@fuzz_settings(2000)
@given(st.floats(min_value=0, max_value=4e9) | st.integers(0, 4 * 10**15).map(lambda micros: micros / 1e6))
def test_record_times_read_as_datetime_writes_them(timestamp):
    """Records share the formatting of their second; the result is what datetime makes."""
    expected = datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert _iso(timestamp) == expected
