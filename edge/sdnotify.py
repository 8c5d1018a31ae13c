"""systemd's notify protocol (sd_notify) over $NOTIFY_SOCKET, without libsystemd."""

from __future__ import annotations

import os
import socket
import time


class SystemdNotifier:
    """Sends READY, STATUS, WATCHDOG, STOPPING and EXTEND_TIMEOUT_USEC datagrams.

    Outside systemd ($NOTIFY_SOCKET unset) every call is a no-op, so the daemon runs the same
    from a shell.
    """

    def __init__(self, address: str | None = None):
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self.address = None
        self.socket = None
        if address:
            # A leading '@' names a socket in the abstract namespace.
            self.address = "\0" + address[1:] if address.startswith("@") else address
            self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self.socket is not None

    def watchdog_interval_s(self) -> float | None:
        """Half of systemd's WatchdogSec, when the watchdog is on for this process."""
        try:
            usec = int(os.environ.get("WATCHDOG_USEC", "0"))
            pid = int(os.environ.get("WATCHDOG_PID") or os.getpid())
        except ValueError:
            return None  # malformed: treated as "watchdog off", as libsystemd does
        if usec <= 0 or pid != os.getpid():
            return None
        return usec / 1e6 / 2.0

    def notify(self, *fields: str) -> None:
        sock, address = self.socket, self.address  # close() may run on another thread
        if sock is None or address is None:
            return
        try:
            sock.sendto("\n".join(fields).encode(), address)
        except OSError:
            pass  # systemd gone (shutdown); nothing useful to do

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def status(self, text: str) -> None:
        self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def reloading(self) -> None:
        # systemd wants the CLOCK_MONOTONIC time of the reload with it (sd_notify(3)).
        self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def extend_timeout(self, seconds: float) -> None:
        self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()
            self.socket = None


def _one_line(text: str) -> str:
    # A newline would start a new field: a message text must never inject STOPPING=1 and the like.
    return " ".join(text.splitlines())
