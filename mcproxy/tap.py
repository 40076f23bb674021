"""``twistd mcproxy``: command-line options and the service maker.

The only module that imports the global reactor.
"""

import os

from twisted.python import usage

from mcproxy import config as configuration
from mcproxy import logs
from mcproxy.reload import ConfigSource
from mcproxy.session.memory import run_on_c_allocator

#: The environment this process was started with. twistd imports this module before it parses
#: the options, and parsing a ``systemd:`` endpoint takes ``LISTEN_FDS`` and ``LISTEN_PID`` out
#: of ``os.environ``: a process started again on the C allocator must find them.
STARTED_WITH = dict(os.environ)


class Options(usage.Options):
    """``twistd mcproxy [--config PATH] [--listen ENDPOINT]... [--store URL]``."""

    optParameters = [
        ["config", "c", None, "TOML configuration file (every key has a default)."],
        ["store", None, None, "Store URL: sqlite:PATH, memory: or redis://HOST:PORT/DB."],
        ["data-dir", None, None, "Directory for the store, the admin token and artifacts."],
    ]

    def __init__(self):
        super().__init__()
        self["listen"] = []

    def opt_listen(self, endpoint):
        """Twisted endpoint string to listen on, e.g. tcp:3000:interface=127.0.0.1 (repeatable)."""
        self["listen"].append(endpoint)

    def postOptions(self):
        logs.use_for_twistd(getattr(self, "parent", None))  # twistd's own options
        overrides: dict[str, dict] = {}
        if self["listen"]:
            overrides["server"] = {"listen": list(self["listen"])}
        if self["data-dir"]:
            overrides.setdefault("server", {})["data_dir"] = self["data-dir"]
        if self["store"]:
            overrides["store"] = {"url": self["store"]}
        # Kept whole, so that a live reload reads the same file, environment and flags.
        self.source = ConfigSource(self["config"], os.environ, overrides)
        try:
            self.config = self.source.load()
        except configuration.ConfigError as e:
            raise usage.UsageError(str(e)) from None


def makeService(options):
    """Build the daemon's service tree from the parsed options (on the C allocator: the
    process starts again first when it is not, see `run_on_c_allocator`)."""
    run_on_c_allocator(STARTED_WITH)  # before importing the daemon's modules: they are imported once

    from twisted.internet import reactor

    from mcproxy.service import MCProxyService

    try:
        return MCProxyService.from_config(reactor, options.config, source=options.source)
    except configuration.ConfigError as e:
        raise usage.UsageError(str(e)) from None
