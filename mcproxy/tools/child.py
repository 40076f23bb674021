"""Helper programs (ffmpeg, Lighthouse): running them without blocking the reactor, and
keeping the files they write as the caller's artifacts."""

import os
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater

from mcproxy.errors import ToolError

if TYPE_CHECKING:
    from mcproxy.tools.call import ToolCall

COPY_CHUNK = 1 << 20


class _Child(ProcessProtocol):
    """Collects the tail of a child's output; ``ended`` fires with its exit code (None when
    a signal ended it). Cancelling ``ended`` kills the child."""

    TAIL = 8192

    def __init__(self) -> None:
        self.ended: Deferred = Deferred(lambda _: self.kill())
        self.output = bytearray()

    def kill(self) -> None:
        """SIGKILL the child, if it still runs."""
        try:
            if self.transport is not None:
                self.transport.signalProcess("KILL")
        except Exception:
            pass  # it ended already

    def outReceived(self, data: bytes) -> None:
        self._keep(data)

    def errReceived(self, data: bytes) -> None:
        self._keep(data)

    def _keep(self, data: bytes) -> None:
        self.output += data
        del self.output[: -self.TAIL]

    def processEnded(self, reason) -> None:
        if not self.ended.called:
            self.ended.callback(reason.value.exitCode)


async def run_child(reactor, argv: list[str], *, timeout: float, what: str, path: str | None = None) -> tuple[int, str]:
    """Run ``argv`` without blocking the reactor; ``(exit code, tail of its output)``.

    Killed, with a ToolError naming ``what``, after ``timeout`` seconds; cancelling the
    call kills it too.
    """
    child = _Child()
    try:
        reactor.spawnProcess(child, argv[0], argv, env=dict(os.environ), path=path)
    except OSError as e:
        raise ToolError(f"Could not start {what} ({argv[0]}): {e.strerror}.") from None
    timer = reactor.callLater(timeout, child.kill)
    try:
        code = await child.ended
    finally:
        if timer.active():
            timer.cancel()
    output = child.output.decode("utf-8", "replace").strip()
    if code is None:
        if timer.called:
            raise ToolError(f"{what} did not finish within {timeout:g} s and was stopped.")
        raise ToolError(f"{what} was killed by a signal: {output[-500:]}")
    return code, output


async def save_file(call: "ToolCall", path: str, file_path: str, mime_type: str):
    """Copy a file a child process wrote into the caller's artifact ``file_path``, one chunk
    per reactor turn; the `Artifact`."""
    writer = call.artifacts.writer(call.context.principal.user_id, file_path, mime_type)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(COPY_CHUNK):
                writer.write(chunk)
                await deferLater(call.clock, 0, lambda: None)
        return await writer.finish()
    except BaseException:
        writer.abort()
        raise
