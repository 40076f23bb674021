"""One ``server.listen`` endpoint as a service: listening starts when the daemon is ready."""

import re

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from zope.interface import implementer

from mcproxy.config import ConfigError


def endpoint_fields(description: str) -> tuple[str, list[str], dict[str, str]]:
    """An endpoint string's kind, positional and named fields, with ``\\:`` unescaped:
    ``tcp:3201:interface=\\:\\:1`` is ``("tcp", ["3201"], {"interface": "::1"})``."""
    kind, _, rest = description.partition(":")
    positional: list[str] = []
    named: dict[str, str] = {}
    for field in re.split(r"(?<!\\):", rest) if rest else []:
        name, equals, value = field.partition("=")
        if equals:
            named[name] = value.replace("\\:", ":")
        else:
            positional.append(field.replace("\\:", ":"))
    return kind, positional, named


@implementer(IStreamServerEndpoint)
class _Noting:
    """An endpoint that tells its `Listener` which port it listens on."""

    def __init__(self, endpoint: IStreamServerEndpoint, listener: "Listener"):
        self._endpoint = endpoint
        self._listener = listener

    def listen(self, factory) -> Deferred:
        def listening(port: IListeningPort) -> IListeningPort:
            self._listener.port = port
            return port

        return self._endpoint.listen(factory).addCallback(listening)


class Listener(StreamServerEndpointService):
    """Serves ``factory`` on the endpoint ``description`` (``tcp:``, ``ssl:``, ``systemd:``...);
    ``port`` is the listening port once started. Failing to listen fails the start of the
    daemon, with the error."""

    _raiseSynchronously = True  # a port already in use stops the start, rather than a log line
    port: IListeningPort | None = None

    def __init__(self, reactor, description: str, factory):
        super().__init__(_Noting(serverFromString(reactor, description), self), factory)
        self.description = description

    @classmethod
    def from_config(cls, reactor, description: str, factory, *, key: str = "server.listen") -> "Listener":
        """The listener of one endpoint of the configuration key ``key``; `ConfigError` naming
        it when malformed."""
        try:
            return cls(reactor, description, factory)
        except (ValueError, TypeError, KeyError) as e:
            raise ConfigError(f"{key}: bad endpoint {description!r}: {e}") from None
