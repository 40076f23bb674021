"""``mcproxy-connect`` in a process of its own, for tests: started, watched and stopped by its PID."""

import sys

from mcproxy.testing.process import ChildProcess, checkout_environment


class Connect(ChildProcess):
    """``python -m mcproxy.tunnel`` (what ``mcproxy-connect`` runs) with a token in
    ``MCPROXY_TOKEN``; its status lines are kept (`line_with`)."""

    def __init__(self, reactor, proxy_url: str, token: str, *args: str):
        super().__init__(reactor)
        self.proxy_url = proxy_url
        self.token = token
        self.args = args

    def start(self) -> None:
        env = checkout_environment()
        env["MCPROXY_TOKEN"] = self.token
        self.launch([sys.executable, "-m", "mcproxy.tunnel", "--proxy", self.proxy_url, *self.args], env=env)

    async def tunnel_up(self, seconds: float = 30.0) -> str:
        """Wait for the "connected" status line (failing with the output if it does not come)."""
        line = self.line_with("connected to")
        line.addTimeout(seconds, self.reactor)
        try:
            return await line
        except Exception:
            raise AssertionError(f"{self.describe()} did not connect:\n{self.tail()}") from None

    async def exit_code(self, seconds: float = 30.0) -> int | None:
        """The exit code, once the process has ended."""
        reason = await self.exited(seconds)
        return getattr(reason, "exitCode", None)

    def describe(self) -> str:
        return "mcproxy-connect"
