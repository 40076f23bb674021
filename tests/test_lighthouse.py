"""lighthouse_audit through a stand-in Lighthouse CLI (a Python script), against real Chromium."""

import json
import shlex
import sys
import textwrap

import pytest
import pytest_twisted

from mcproxy.artifacts.store import ArtifactStore
from mcproxy.config import ArtifactsConfig
from mcproxy.testing.tool_calls import failed, make_context, make_registry, ok, text_of
from mcproxy.tools.lighthouse import lighthouse_tools, summarize

# Behaves like `lighthouse URL --hostname --port --output=json --output=html --output-path=P`:
# asks the browser's DevTools endpoint for its version (so the address must be right) and
# writes P.report.json / P.report.html. Its arguments are recorded next to it.
FAKE_LIGHTHOUSE = textwrap.dedent("""
    import json, os, sys, urllib.request
    args = sys.argv[1:]
    if args[0] == "--fail":
        sys.stderr.write("Runtime error encountered: Unable to connect to Chrome\\n")
        sys.exit(1)
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "argv.json"), "w") as f:
        json.dump(args, f)
    flags = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
    url = args[0]
    version = json.load(urllib.request.urlopen(f"http://{flags['hostname']}:{flags['port']}/json/version"))
    node = {"selector": "body > img", "nodeLabel": "img", "snippet": "<img src=x.png>",
            "explanation": "Fix any of the following:\\n  Element does not have an alt attribute"}
    report = {
        "requestedUrl": url, "finalDisplayedUrl": url,
        "userAgent": version["User-Agent"],
        "timing": {"total": 1234.5},
        "categories": {
            "accessibility": {"title": "Accessibility", "score": 0.87,
                              "auditRefs": [{"id": "image-alt"}, {"id": "html-has-lang"}]},
            "seo": {"title": "SEO", "score": 1, "auditRefs": [{"id": "document-title"}, {"id": "manual-one"}]},
        },
        "audits": {
            "image-alt": {"id": "image-alt", "title": "Image elements do not have [alt] attributes",
                          "description": "Informative elements should aim for short text.", "score": 0,
                          "scoreDisplayMode": "binary", "details": {"type": "table", "items": [{"node": node}]}},
            "html-has-lang": {"id": "html-has-lang", "title": "has lang", "score": 1, "scoreDisplayMode": "binary"},
            "document-title": {"id": "document-title", "title": "has title", "score": 1, "scoreDisplayMode": "binary"},
            "manual-one": {"id": "manual-one", "title": "check by hand", "score": None, "scoreDisplayMode": "manual"},
        },
    }
    out = flags["output-path"]
    with open(out + ".report.json", "w") as f:
        json.dump(report, f)
    with open(out + ".report.html", "w") as f:
        f.write("<!doctype html><title>Lighthouse Report</title>" + url)
""")


@pytest.fixture
def fake_lighthouse(tmp_path):
    script = tmp_path / "fake_lighthouse.py"
    script.write_text(FAKE_LIGHTHOUSE)
    return script


@pytest.fixture
def artifacts(tmp_path, reactor):
    return ArtifactStore(str(tmp_path / "data"), ArtifactsConfig(), reactor)


def registry(reactor, browser, artifacts, command):
    return make_registry(reactor, browser, artifacts=artifacts, lighthouse_command=command)


def test_absent_unless_configured(reactor, artifacts):
    assert lighthouse_tools("") == () and lighthouse_tools("   ") == ()
    names = [tool.name for tool in lighthouse_tools("lighthouse")]
    assert names == ["lighthouse_audit"]
    listed = registry(reactor, None, artifacts, "").list_tools(make_context().principal)
    assert "lighthouse_audit" not in {tool.name for tool in listed}


@pytest_twisted.ensureDeferred
async def test_audit(reactor, user_browser, chromium, fixture_site, fake_lighthouse, artifacts):
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(fake_lighthouse))}"
    tools = registry(reactor, user_browser, artifacts, command)
    context = make_context()
    url = fixture_site.page("index.html")
    await ok(tools, context, "new_page", url=url)
    page_id = context.session.selected_page_id
    result = await ok(tools, context, "lighthouse_audit", pageId=page_id, device="mobile", outputDirPath="audits/home")
    text = text_of(result)
    assert text.startswith(f"## Lighthouse audit results\nMode: navigation\nDevice: mobile\nURL: {url}\n"), text
    assert "- Accessibility: 87 (accessibility)\n- SEO: 100 (seo)" in text
    assert "Passed: 2\nFailed: 1\nTotal timing: 1234.50ms" in text
    assert "- image-alt [accessibility]: Image elements do not have [alt] attributes (score: 0)" in text
    assert (
        '  - selector="body > img" label="img" snippet="<img src=x.png>"\n    Fix any of the following: Element' in text
    )
    links = [block for block in result["content"] if block["type"] == "resource_link"]
    assert [link["name"] for link in links] == ["audits/home/report.json", "audits/home/report.html"]
    _, report = artifacts.read("alice", links[0]["uri"])
    assert json.loads(report)["requestedUrl"] == url
    argv = json.loads((fake_lighthouse.parent / "argv.json").read_text())
    port = chromium.browser_url.rsplit(":", 1)[1]
    assert argv[0] == url and f"--port={port}" in argv and "--form-factor=mobile" in argv
    assert "--only-categories=accessibility,best-practices,seo" in argv and "--disable-storage-reset" in argv


@pytest_twisted.ensureDeferred
async def test_refusals_and_failures(reactor, user_browser, fixture_site, fake_lighthouse, artifacts):
    context = make_context()
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(fake_lighthouse))} --fail"
    tools = registry(reactor, user_browser, artifacts, command)
    await ok(tools, context, "new_page", url=fixture_site.page("index.html"))
    page_id = context.session.selected_page_id
    text = await failed(tools, context, "lighthouse_audit", pageId=page_id)
    assert text == "Lighthouse failed (exit code 1): Runtime error encountered: Unable to connect to Chrome"
    assert "snapshot" in await failed(tools, context, "lighthouse_audit", pageId=page_id, mode="snapshot")
    assert "goes up" in await failed(tools, context, "lighthouse_audit", pageId=page_id, outputDirPath="../up")
    missing = registry(reactor, user_browser, artifacts, "no-such-lighthouse-binary")
    assert "is not installed" in await failed(missing, context, "lighthouse_audit", pageId=page_id)


def test_summary_of_an_empty_report():
    text = summarize({"requestedUrl": "http://x/"}, "navigation", "desktop")
    assert text == (
        "## Lighthouse audit results\nMode: navigation\nDevice: desktop\nURL: http://x/\n"
        "### Category scores\n### Audit summary\nPassed: 0\nFailed: 0"
    )
