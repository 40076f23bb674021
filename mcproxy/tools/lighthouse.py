"""lighthouse_audit: Lighthouse scores for a page, through the Lighthouse CLI the operator set up.

Offered only when ``tools.lighthouse_command`` names a command (e.g. ``lighthouse`` or
``npx --yes lighthouse``): `lighthouse_tools` returns no tool otherwise, so it is absent
from tools/list. The CLI runs as a child process against the user's own Chrome, through
the same DevTools endpoint the proxy uses (``--hostname``/``--port``, the address pinned
after checking it against ``browser.allowed_networks`` again). Lighthouse opens its own tab
there, loads the page's URL and audits it; the JSON and HTML reports become the caller's
artifacts, and the answer summarizes the category scores and the failed audits.

Like chrome-devtools-mcp, performance is left out (performance_start_trace covers it).
The CLI cannot audit a page as it stands without loading it again, so ``mode: "snapshot"``
is refused with that explanation.
"""

import json
import os
import shlex
import shutil
import tempfile

from twisted.internet.threads import deferToThreadPool

from mcproxy.artifacts.names import split_path
from mcproxy.browser.urls import validate_browser_url
from mcproxy.errors import ToolError
from mcproxy.tools import schema as s
from mcproxy.tools.call import Response, ToolCall
from mcproxy.tools.child import run_child, save_file
from mcproxy.tools.declare import ToolSet, ToolSpec

CATEGORIES = ("accessibility", "best-practices", "seo")
DEFAULT_TIMEOUT = 120.0
#: A score below this counts as failed (Lighthouse shows it orange or red).
PASSING = 0.9
MAX_FAILED_SHOWN = 20
MAX_NODES_SHOWN = 5


def _command_line(command: str, url: str, address: str, port: int, device: str, output: str) -> list[str]:
    argv = shlex.split(command)
    found = shutil.which(argv[0])
    if found is None:
        raise ToolError(
            f"The Lighthouse command of this server ({argv[0]}) is not installed; ask the operator "
            "to fix tools.lighthouse_command."
        )
    device_flags = ["--preset=desktop"] if device == "desktop" else ["--form-factor=mobile"]
    return [
        found,
        *argv[1:],
        url,
        f"--hostname={address}",
        f"--port={port}",
        "--output=json",
        "--output=html",
        f"--output-path={output}",
        f"--only-categories={','.join(CATEGORIES)}",
        *device_flags,
        # It is the user's own browser: keep their cookies and storage for the site.
        "--disable-storage-reset",
        "--quiet",
    ]


def _read_report(path: str) -> dict:
    """The JSON report Lighthouse wrote (some MB: read and parsed in a thread, off the reactor)."""
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except ValueError:
            raise ToolError("Lighthouse wrote a report that is not JSON.") from None


def _score(value) -> str:
    return "n/a" if value is None else f"{round(value * 100)}"


def _nodes(audit: dict) -> list[str]:
    """The DOM nodes an audit flags, as chrome-devtools-mcp lists them."""
    items = (audit.get("details") or {}).get("items") or []
    nodes = [item["node"] for item in items if isinstance(item, dict) and isinstance(item.get("node"), dict)]
    if not nodes:
        return []
    lines = [f"  Nodes ({len(nodes)}):"]
    for node in nodes[:MAX_NODES_SHOWN]:
        fields = " ".join(
            f"{key}={json.dumps(node[name], ensure_ascii=False)}"
            for key, name in (("selector", "selector"), ("label", "nodeLabel"), ("snippet", "snippet"))
            if node.get(name)
        )
        lines.append(f"  - {fields}")
        if node.get("explanation"):
            lines.append("    " + " ".join(node["explanation"].split()))
    if len(nodes) > MAX_NODES_SHOWN:
        lines.append(f"  - ... and {len(nodes) - MAX_NODES_SHOWN} more (see the full report)")
    return lines


def summarize(report: dict, mode: str, device: str) -> str:
    """The text answer for a Lighthouse result (LHR) object."""
    categories = report.get("categories") or {}
    audits = report.get("audits") or {}
    lines = [
        "## Lighthouse audit results",
        f"Mode: {mode}",
        f"Device: {device}",
        f"URL: {report.get('finalDisplayedUrl') or report.get('finalUrl') or report.get('requestedUrl', '')}",
        "### Category scores",
    ]
    lines += [
        f"- {category.get('title', key)}: {_score(category.get('score'))} ({key})"
        for key, category in categories.items()
    ]
    failed, passed = [], 0
    for key, category in categories.items():
        for ref in category.get("auditRefs") or []:
            audit = audits.get(ref.get("id"), {})
            score = audit.get("score")
            if score is None or audit.get("scoreDisplayMode") in ("notApplicable", "manual", "informative"):
                continue
            if score >= PASSING:
                passed += 1
            else:
                failed.append((key, audit))
    lines += ["### Audit summary", f"Passed: {passed}", f"Failed: {len(failed)}"]
    total = (report.get("timing") or {}).get("total")
    if total is not None:
        lines.append(f"Total timing: {total:.2f}ms")
    if failed:
        lines.append("### Failed audits")
    for key, audit in failed[:MAX_FAILED_SHOWN]:
        lines.append(f"- {audit.get('id')} [{key}]: {audit.get('title', '')} (score: {audit.get('score'):g})")
        if audit.get("description"):
            lines.append("  " + " ".join(audit["description"].split()))
        lines += _nodes(audit)
    if len(failed) > MAX_FAILED_SHOWN:
        lines.append(f"- ... and {len(failed) - MAX_FAILED_SHOWN} more failed audits (see the full report)")
    return "\n".join(lines)


def lighthouse_tools(command: str, timeout: float = DEFAULT_TIMEOUT) -> tuple[ToolSpec, ...]:
    """``(lighthouse_audit,)`` running ``command`` (the operator's ``tools.lighthouse_command``);
    no tool at all when it is empty."""
    if not command.strip():
        return ()
    tools = ToolSet("debugging")

    @tools.page_tool(
        "lighthouse_audit",
        title="Lighthouse audit",
        description=(
            "Audit the page with Lighthouse for accessibility, SEO and best practices: category scores, "
            "failed audits and the elements they flag; the full JSON and HTML reports are saved as files "
            "you can read. Performance is not included: use performance_start_trace for it."
        ),
        params={
            "mode": s.string(
                '"navigation" loads the page\'s URL again and audits it; "snapshot" would audit the '
                "current state (not available with the Lighthouse CLI).",
                enum=("navigation", "snapshot"),
                default="navigation",
            ),
            "device": s.string("The device to emulate.", enum=("desktop", "mobile"), default="desktop"),
            "outputDirPath": s.string(
                "Folder among your artifacts for report.json and report.html; a generated one when absent."
            ),
        },
        exclusive=False,
        dialog_safe=True,
    )
    async def audit(call: ToolCall) -> Response:
        """Run the CLI against the user's browser, save both reports, summarize the JSON one."""
        page = call.page
        mode = call.args.get("mode", "navigation")
        device = call.args.get("device", "desktop")
        if mode == "snapshot":
            raise ToolError(
                'mode "snapshot" is not available here: the Lighthouse CLI this server runs always loads the '
                'page again before auditing it. Use mode "navigation" (the default), which audits the '
                "page's URL in a tab of its own."
            )
        if call.artifacts is None:
            raise ToolError("This server does not keep files, so it cannot keep Lighthouse reports.")
        directory = call.args.get("outputDirPath") or f"lighthouse/page{page.page_id}-{int(call.clock.seconds())}"
        directory = directory.rstrip("/\\")
        split_path(directory + "/report.json")
        url = page.url
        if not url.startswith(("http://", "https://")):
            raise ToolError(
                f"Lighthouse audits web pages; page {page.page_id} shows {url or 'nothing'}. Navigate it first."
            )
        call.policy.check(url)
        config = call.browser.config
        target = await validate_browser_url(
            call.browser.browser_url, config.allowed_networks, reactor=call.clock, timeout=config.connect_timeout
        )
        if target.secure:
            raise ToolError(
                "Lighthouse can reach a browser over plain http or ws only; this browser is registered over TLS."
            )
        work = tempfile.mkdtemp(prefix="mcproxy-lighthouse-")
        try:
            output = os.path.join(work, "report")
            argv = _command_line(command, url, target.connect_host, target.port, device, output)
            code, text = await run_child(call.clock, argv, timeout=timeout, what="Lighthouse", path=work)
            json_path, html_path = output + ".report.json", output + ".report.html"
            if code != 0 or not os.path.isfile(json_path):
                raise ToolError(f"Lighthouse failed (exit code {code}): {text[-800:] or 'no output'}")
            report = await deferToThreadPool(call.clock, call.clock.getThreadPool(), _read_report, json_path)
            if report.get("runtimeError"):
                error = report["runtimeError"]
                raise ToolError(f"Lighthouse could not audit {url}: {error.get('message', error.get('code'))}")
            response = Response().add(summarize(report, mode, device)).add("### Reports")
            saved = await save_file(call, json_path, directory + "/report.json", "application/json")
            response.add_artifact(saved, "JSON report")
            if os.path.isfile(html_path):
                saved = await save_file(call, html_path, directory + "/report.html", "text/html")
                response.add_artifact(saved, "HTML report")
            return response
        finally:
            shutil.rmtree(work, ignore_errors=True)

    return tuple(tools)
