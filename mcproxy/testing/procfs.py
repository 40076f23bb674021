"""What /proc tells tests about processes: their trees, the sockets they hold, which of
those listen (a browser on a pipe must listen on none)."""

import os


def _children() -> dict[int, list[int]]:
    """Every process's children, by parent PID (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
    return children


def process_tree(root: int) -> list[int]:
    """``root`` and every process below it."""
    children = _children()
    tree, waiting = [], [root]
    while waiting:
        pid = waiting.pop()
        tree.append(pid)
        waiting.extend(children.get(pid, ()))
    return tree


def socket_inodes(pids: list[int]) -> set[str]:
    """The inodes of the sockets the processes ``pids`` hold open."""
    inodes = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    return inodes


def listening_inodes() -> set[str]:
    """The inodes of every listening TCP socket of this machine (IPv4 and IPv6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] == "0A":  # TCP_LISTEN
                    inodes.add(fields[9])
    return inodes


def is_pipe_browser(pid: int) -> bool:
    """Whether ``pid`` is a browser driven over ``--remote-debugging-pipe``."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"--remote-debugging-pipe" in f.read()
    except OSError:
        return False


def children_of(pid: int) -> list[int]:
    """The direct children of ``pid``."""
    return _children().get(pid, [])


def command_line(pid: int) -> list[str]:
    """The arguments ``pid`` runs with (none once it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [arg.decode("utf-8", "replace") for arg in f.read().split(b"\0") if arg]
    except OSError:
        return []


def is_running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting for its parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def launched_browser(daemon_pid: int, data_dir: str, user_id: str) -> int | None:
    """The PID of the Chromium a daemon launched for ``user_id`` (its profile is under
    ``data_dir``), None when none runs."""
    profile = f"--user-data-dir={os.path.join(data_dir, 'browsers', user_id)}"
    found = [pid for pid in children_of(daemon_pid) if is_pipe_browser(pid) and profile in command_line(pid)]
    assert len(found) <= 1, found
    return found[0] if found else None
