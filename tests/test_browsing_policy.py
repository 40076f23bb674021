"""The browsing policy: schemes, host allow/deny lists, per-user rules, and interception."""

import pytest

from mcproxy.browser.policy import PolicyBook
from mcproxy.config import BrowsingConfig, ConfigError, load
from mcproxy.errors import ToolError


def book(**settings) -> PolicyBook:
    return PolicyBook(BrowsingConfig(**settings))


@pytest.mark.parametrize(
    "url, why",
    [
        ("https://example.com/a", None),
        ("about:blank", None),
        ("data:text/html,hi", None),
        ("file:///etc/passwd", 'the scheme "file:" is not allowed'),
        ("chrome://settings", 'the scheme "chrome:" is not allowed'),
        ("javascript:alert(1)", 'the scheme "javascript:" is not allowed'),
        ("JavaScript:alert(1)", 'the scheme "javascript:" is not allowed'),
        ("view-source:https://example.com", 'the scheme "view-source:" is not allowed'),
        ("no-scheme-at-all", 'the scheme "(none):" is not allowed'),
        ("http://[::1", "it is not a valid URL"),
    ],
)
def test_schemes_by_default(url, why):
    refusal = book().policy_for("alice").refusal(url)
    assert refusal == why or (why is not None and refusal.startswith(why))


def test_host_lists_globs_cidrs_and_per_user_rules():
    policies = book(
        allow=("*.corp.example", "corp.example", "10.0.0.0/8"),
        deny=("secret.corp.example",),
        user_rules=("alice allow *.staging.example", "bob deny wiki.corp.example"),
    )
    everyone = policies.policy_for("carol")
    assert everyone.refusal("https://app.corp.example/x") is None
    assert everyone.refusal("https://corp.example") is None
    assert everyone.refusal("http://10.1.2.3:8080/") is None
    assert everyone.refusal("https://SECRET.corp.example/") == 'the host "secret.corp.example" is on the deny list'
    assert everyone.refusal("https://evil.example/") == 'the host "evil.example" is not on the allow list'
    assert everyone.refusal("https://corp.example.evil.example/") is not None
    assert everyone.refusal("https://app.staging.example/") is not None
    assert policies.policy_for("alice").refusal("https://app.staging.example/") is None
    assert policies.policy_for("bob").refusal("https://wiki.corp.example/") is not None
    assert everyone.refusal("https://wiki.corp.example/") is None
    with pytest.raises(ToolError, match=r"^Navigation to https://evil\.example/ is blocked by the proxy's browsing policy"):
        everyone.check("https://evil.example/")


def test_schemes_can_be_opened_up_and_bad_rules_are_refused():
    assert book(schemes=("http", "https", "file")).policy_for("a").refusal("file:///tmp/x") is None
    with pytest.raises(ConfigError, match=r"^browsing\.user_rules: "):
        load(None, environ={"MCPROXY_BROWSING_USER_RULES": "alice permit x"})
