"""Live reload: which configuration keys a running daemon can take on, and where they come from.

A reload reads the configuration again from the same file, environment and command-line
overrides the daemon started with (`ConfigSource`), validates all of it, and only then
hands the keys declared live in `mcproxy.config` (`LIVE_KEYS`) to the running parts (each
part's ``reconfigure``; see `MCProxyService.reload`). Keys
outside it (listeners, the store, the data directory, authentication settings, the
browser connections' settings...) keep their running value until a restart; `plan` says
which ones changed so the operator is told. Tokens and permissions live in the store and
never need a reload.
"""

from collections.abc import Mapping

import attrs
from twisted.logger import LogLevel

from mcproxy import config as configuration
from mcproxy import logs
from mcproxy.config import SECTIONS, Config, live_keys

LIVE_KEYS = live_keys()
"""``section.key`` names a reload applies to the running daemon (declared in `mcproxy.config`)."""


def _copy(environ: Mapping[str, str]) -> dict[str, str]:
    return dict(environ)


@attrs.frozen
class ConfigSource:
    """Where the running configuration came from: file, environment and flag overrides."""

    path: str | None = None
    environ: Mapping[str, str] = attrs.field(factory=dict, converter=_copy)
    overrides: Mapping[str, dict] = attrs.field(factory=dict)

    def load(self) -> Config:
        """Read and validate the configuration again; `ConfigError` names the bad key."""
        return configuration.load(self.path, environ=self.environ, overrides=dict(self.overrides))


def plan(running: Config, new: Config) -> tuple[Config, list[str], list[str]]:
    """What a reload from ``running`` to ``new`` does: ``(effective, applied, restart_needed)``.

    ``effective`` is ``new`` with every changed key outside `LIVE_KEYS` put back to its
    running value; ``applied`` and ``restart_needed`` name the changed keys of each kind.
    """
    applied: list[str] = []
    restart_needed: list[str] = []
    kept: dict[str, dict] = {}
    for section in SECTIONS:
        before, after = getattr(running, section), getattr(new, section)
        for field in attrs.fields(type(before)):
            old_value = getattr(before, field.name)
            if old_value == getattr(after, field.name):
                continue
            key = f"{section}.{field.name}"
            if key in LIVE_KEYS:
                applied.append(key)
            else:
                restart_needed.append(key)
                kept.setdefault(section, {})[field.name] = old_value
    effective = new.replace(**kept) if kept else new
    return effective, applied, restart_needed


def apply_log_level(name: str) -> None:
    """Make the daemon's log observer keep events of level ``name`` and above."""
    logs.LEVELS.setLogLevelForNamespace("", LogLevel.levelWithName(name))
