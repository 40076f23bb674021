"""Where a user's browser may be sent: URL schemes and host allow/deny lists.

``browsing.*`` holds the rules; ``browsing.user_rules`` adds per-user ones
(``"alice allow *.corp.example"``, ``"bob deny social.example"``). A host pattern is a
glob on the host name (``*.corp.example``), an IP address, or a CIDR network for address
hosts. Deny always wins; a non-empty allow list admits only what it names. ``about:blank``
is always allowed (it is where tabs start).

URLs are read the way Chrome reads them, by the WHATWG URL standard (``ada-url``, the
parser Node uses), never by `urllib.parse`: ``http://evil\\@good.example/`` goes to
``evil`` and ``http://0x7f.1/`` to ``127.0.0.1``, so that is what the lists are matched
on. Hosts are compared in Chrome's canonical form (lower case, punycode, dotted-decimal
IPv4, compressed IPv6, an IPv4-mapped IPv6 address as its IPv4, no trailing dot); a URL
the standard rejects is refused.

The tools check the URLs they are given (``new_page``, ``navigate_page``). With
``browsing.intercept`` the proxy also pauses every document request of every page
(``Fetch`` domain), new tabs and popups included (the pool holds them until `guard` has
run), and fails the ones whose URL, as Chrome reports it, the policy refuses: links and
scripts cannot go where a tool could not.
"""

import fnmatch
import ipaddress

import ada_url
import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mcproxy.browser.urls import ip_forms
from mcproxy.config import BrowsingConfig, parse_user_rule
from mcproxy.errors import ToolError

log = Logger()

ALWAYS_ALLOWED = frozenset({"about:blank"})
#: Schemes whose URLs name a network host the lists apply to.
HOST_SCHEMES = frozenset({"http", "https", "ws", "wss"})

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def scheme_and_host(url: str) -> tuple[str, str]:
    """The scheme and host Chrome would use for ``url``; ValueError when it is no URL at all.

    The host is the WHATWG serialisation ("" when the URL has none): lower case, punycode,
    IPv4 in dotted decimal whatever form it was written in, IPv6 compressed in brackets.
    """
    parts = ada_url.parse_url(url, attributes=("protocol", "hostname"))
    # Chrome, unlike the standard, escapes "*" in a host name.
    return parts["protocol"].removesuffix(":"), parts["hostname"].replace("*", "%2A")


def _address(text: str) -> Address | None:
    """The IP address ``text`` names (one that embeds an IPv4 address, mapped, 6to4 or
    NAT64, as that IPv4 address), else None."""
    try:
        return ip_forms(text.removeprefix("[").removesuffix("]"))[-1]
    except ValueError:
        return None


def _network(text: str) -> Network:
    """A CIDR pattern, with a network of IPv4-mapped IPv6 addresses as the IPv4 one."""
    network = ipaddress.ip_network(text, strict=False)
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96 and network.subnet_of(_MAPPED):
        network = ipaddress.ip_network((int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96))
    return network


def _name(text: str) -> str:
    """A host name or name glob in canonical form: lower case, punycode labels, no final dot."""
    labels = text.lower().rstrip(".").split(".")
    return ".".join(label if label.isascii() else ada_url.idna_to_ascii(label).decode() or label for label in labels)


@attrs.frozen
class HostRule:
    """One allow/deny pattern: an IP network, or a glob on canonical host names."""

    pattern: str
    network: Network | None = None

    @classmethod
    def parse(cls, pattern: "str | HostRule") -> "HostRule":
        """The rule for a pattern from the configuration (a `HostRule` is kept as it is)."""
        if isinstance(pattern, HostRule):
            return pattern
        address = _address(pattern)
        if address is not None:
            return cls(pattern, ipaddress.ip_network(address))
        if "/" in pattern:
            try:
                return cls(pattern, _network(pattern))
            except ValueError:
                pass  # not a network: a glob no host name matches, as before
        return cls(_name(pattern))

    def matches(self, host: Address | str) -> bool:
        """Whether the canonical ``host`` (see `host_key`) falls under this rule."""
        if self.network is not None:
            return not isinstance(host, str) and host in self.network
        return fnmatch.fnmatchcase(str(host), self.pattern)


def host_key(host: str) -> Address | str:
    """What rules match a WHATWG host against: its IP address, or its canonical name."""
    return _address(host) or _name(host)


def _rules(patterns) -> tuple[HostRule, ...]:
    return tuple(map(HostRule.parse, patterns))


@attrs.frozen
class BrowsingPolicy:
    """The rules for one user."""

    schemes: frozenset[str]
    allow: tuple[HostRule, ...] = attrs.field(default=(), converter=_rules)
    deny: tuple[HostRule, ...] = attrs.field(default=(), converter=_rules)

    def refusal(self, url: str) -> str | None:
        """Why ``url`` may not be visited, or None when it may."""
        if url in ALWAYS_ALLOWED:
            return None
        try:
            scheme, host = scheme_and_host(url)
        except ValueError:
            return "it is not a valid absolute URL (such as https://example.com/)"
        if scheme not in self.schemes:
            allowed = ", ".join(sorted(self.schemes))
            return f'the scheme "{scheme}:" is not allowed (allowed: {allowed})'
        if scheme not in HOST_SCHEMES:
            return None
        key = host_key(host)
        if any(rule.matches(key) for rule in self.deny):
            return f'the host "{host}" is on the deny list'
        if self.allow and not any(rule.matches(key) for rule in self.allow):
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
        self._configure(config)

    def reconfigure(self, config) -> None:
        """Apply new ``browsing.*`` rules (live reload): the next check of every page uses them.

        Whether pages are intercepted at all is decided when a page is attached, so
        ``browsing.intercept`` itself only changes with a restart.
        """
        self._configure(config.browsing)

    def _configure(self, config: BrowsingConfig) -> None:
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
        """The rules of ``user_id``: the defaults plus the user's own."""
        return self._users.get(user_id, self._default)

    def guard(self, page, event: str) -> Deferred | None:
        """A page listener: with ``browsing.intercept``, stop refused document requests of ``page``.

        Returns the Deferred of ``Fetch.enable``: the pool holds a new tab (a popup) until it
        fires, so the tab's first document is judged too.
        """
        if not self._config.intercept or event not in ("attached", "reattached"):
            return None
        if event == "attached":
            page.subscribe(
                "Fetch.requestPaused",
                lambda _, params: self._decide(page, self.policy_for(page.browser.user_id), params),
            )
        return page.send(
            "Fetch.enable", {"patterns": [{"urlPattern": "*", "resourceType": "Document", "requestStage": "Request"}]}
        )

    @staticmethod
    def _decide(page, policy: BrowsingPolicy, params: dict) -> None:
        """Judge the URL Chrome is about to load (not the one a tool asked for)."""
        url = params.get("request", {}).get("url", "")
        why = policy.refusal(url)
        if why is None:
            sent = page.send("Fetch.continueRequest", {"requestId": params["requestId"]})
        else:
            log.info("Blocked a navigation of page {page_id} to {url}: {why}", page_id=page.page_id, url=url, why=why)
            sent = page.send("Fetch.failRequest", {"requestId": params["requestId"], "errorReason": "BlockedByClient"})
        sent.addErrback(lambda f: None)  # the page went away meanwhile: nothing left to decide
