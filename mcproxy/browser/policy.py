"""Where a user's browser may be sent: URL schemes and host allow/deny lists.

``browsing.*`` holds the rules; ``browsing.user_rules`` adds per-user ones
(``"alice allow *.corp.example"``, ``"bob deny social.example"``). A host pattern is a
glob on the host name (``*.corp.example``) or a CIDR network for address hosts. Deny
always wins; a non-empty allow list admits only what it names. ``about:blank`` is always
allowed (it is where tabs start).

The tools check the URLs they are given (``new_page``, ``navigate_page``). With
``browsing.intercept`` the proxy also pauses every document request of every page
(``Fetch`` domain) and fails the ones the policy refuses, so links and scripts cannot go
where a tool could not.
"""

import fnmatch
import ipaddress
from urllib.parse import urlsplit

import attrs
from twisted.logger import Logger

from mcproxy.config import BrowsingConfig, parse_user_rule
from mcproxy.errors import ToolError

log = Logger()

ALWAYS_ALLOWED = frozenset({"about:blank"})


def _host_matches(host: str, pattern: str) -> bool:
    if "/" in pattern:
        try:
            return ipaddress.ip_address(host.strip("[]")) in ipaddress.ip_network(pattern, strict=False)
        except ValueError:
            return False
    return fnmatch.fnmatchcase(host, pattern)


@attrs.frozen
class BrowsingPolicy:
    """The rules for one user."""

    schemes: frozenset[str]
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    def refusal(self, url: str) -> str | None:
        """Why ``url`` may not be visited, or None when it may."""
        if url in ALWAYS_ALLOWED:
            return None
        try:
            parts = urlsplit(url)
        except ValueError:
            return "it is not a valid URL"
        scheme = parts.scheme.lower()
        if scheme not in self.schemes:
            allowed = ", ".join(sorted(self.schemes))
            return f'the scheme "{scheme or "(none)"}:" is not allowed (allowed: {allowed})'
        if scheme not in ("http", "https", "ws", "wss"):
            return None
        host = (parts.hostname or "").lower()
        if any(_host_matches(host, pattern) for pattern in self.deny):
            return f'the host "{host}" is on the deny list'
        if self.allow and not any(_host_matches(host, pattern) for pattern in self.allow):
            return f'the host "{host}" is not on the allow list'
        return None

    def check(self, url: str) -> None:
        """Raise a ToolError the model can act on when ``url`` is refused."""
        why = self.refusal(url)
        if why is not None:
            raise ToolError(f"Navigation to {url} is blocked by the proxy's browsing policy: {why}.")


class PolicyBook:
    """Every user's `BrowsingPolicy`, from ``browsing.*``."""

    def __init__(self, config: BrowsingConfig):
        self.reconfigure(config)

    def reconfigure(self, config: BrowsingConfig) -> None:
        """Apply new ``browsing.*`` rules (live reload): the next check of every page uses them.

        Whether pages are intercepted at all is decided when a page is attached, so
        ``browsing.intercept`` itself only changes with a restart.
        """
        default = BrowsingPolicy(frozenset(s.lower() for s in config.schemes), config.allow, config.deny)
        extra: dict[str, dict[str, list[str]]] = {}
        for user, kind, pattern in map(parse_user_rule, config.user_rules):
            extra.setdefault(user, {"allow": [], "deny": []})[kind].append(pattern)
        users = {
            user: attrs.evolve(
                default,
                allow=default.allow + tuple(rules["allow"]),
                deny=default.deny + tuple(rules["deny"]),
            )
            for user, rules in extra.items()
        }
        self._config, self._default, self._users = config, default, users

    def policy_for(self, user_id: str) -> BrowsingPolicy:
        return self._users.get(user_id, self._default)

    def guard(self, page, event: str) -> None:
        """A page listener: with ``browsing.intercept``, stop refused document requests of ``page``."""
        if not self._config.intercept or event not in ("attached", "reattached"):
            return
        if event == "attached":
            page.subscribe(
                "Fetch.requestPaused",
                lambda _, params: self._decide(page, self.policy_for(page.browser.user_id), params),
            )
        page.send(
            "Fetch.enable", {"patterns": [{"urlPattern": "*", "resourceType": "Document", "requestStage": "Request"}]}
        ).addErrback(lambda f: log.info("Could not guard page {page_id}: {error}", page_id=page.page_id, error=f.getErrorMessage()))

    @staticmethod
    def _decide(page, policy: BrowsingPolicy, params: dict) -> None:
        url = params.get("request", {}).get("url", "")
        why = policy.refusal(url)
        if why is None:
            sent = page.send("Fetch.continueRequest", {"requestId": params["requestId"]})
        else:
            log.info("Blocked a navigation of page {page_id} to {url}: {why}", page_id=page.page_id, url=url, why=why)
            sent = page.send("Fetch.failRequest", {"requestId": params["requestId"], "errorReason": "BlockedByClient"})
        sent.addErrback(lambda f: None)  # the page went away meanwhile: nothing left to decide
