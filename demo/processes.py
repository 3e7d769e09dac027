"""Server processes on 127.0.0.1 for the demo and the end-to-end tests: start, wait, stop, logs."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tiergate_command(*args: str) -> list[str]:
    """The installed `tiergate` console script next to this interpreter (else `python -m`)."""
    script = Path(sys.executable).with_name("tiergate")
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "tiergate.cli", *args]


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """The status `url` answers with, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)
    except OSError:
        return None


@dataclass
class Process:
    """One server process, its stderr+stdout in `log`."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    cwd: Path
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        assert not self.running, f"{self.name} is already running"
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"\n----- {self.name}: start #{self.starts} -----\n".encode())
            out.flush()
            self.popen = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers run, exactly like a crash."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(timeout=10)

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()

    def wait_http(self, url: str, ok: Callable[[int], bool], timeout_s: float = 30.0) -> int:
        """Poll `url` until its status satisfies `ok`; fail at once if the process exits."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.popen is not None and self.popen.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.popen.returncode}\n{self.tail()}")
            status = http_status(url)
            if status is not None and ok(status):
                return status
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: {url} not ready within {timeout_s:.0f} s\n{self.tail()}")

    def tail(self, chars: int = 6000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"===== {self.name} log ({self.log}) =====\n{text[-chars:]}"
