"""Starting lumiserve services as child processes and waiting until they serve.

Used by `lumiserve up` and by the tests that need real processes (kill -9, drain, ports released).
A service is started with `--ready-file`: it writes its bound ports there once it reports SERVING.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PR_SET_PDEATHSIG = 1


def _terminate_with_parent() -> None:
    """In the child before exec: SIGTERM (a drain) when the launcher dies, even by SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (Linux /proc), NaN where unknown."""
    status = Path(f"/proc/{pid}/status")
    for line in status.read_text().splitlines() if status.exists() else ():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class ServiceStartError(RuntimeError):
    """A service process exited or did not become ready in time; the message ends with its log."""


@dataclass
class ServiceProcess:
    """One `lumiserve <command> [flags]` child process."""

    command: str  # diffusion, vlm, registry, gateway
    flags: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    process: subprocess.Popen | None = None
    port: int | None = None
    metrics_port: int | None = None

    def __post_init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix=f"lumiserve-{self.command}-"))
        self._ready_file = self._dir / "ready.json"
        if self.log_path is None:
            self.log_path = self._dir / "service.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ServiceProcess:
        self._ready_file.unlink(missing_ok=True)
        argv = [
            sys.executable,
            "-m",
            "lumiserve.cli",
            self.command,
            *self.flags,
            "--ready-file",
            str(self._ready_file),
        ]
        env = {**os.environ, **self.env}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C in a terminal reaches only the launcher, which drains
                preexec_fn=_terminate_with_parent,
            )
        return self

    def wait_ready(self, timeout: float = 120.0) -> ServiceProcess:
        """Blocks until the service reports SERVING (ports known), or raises ServiceStartError."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._ready_file.exists():
                ready = json.loads(self._ready_file.read_text())
                self.port, self.metrics_port = ready["port"], ready["metrics_port"]
                return self
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise ServiceStartError(
                    f"{self.command} exited with status {code} during start-up\n{self.log_tail()}"
                )
            time.sleep(0.05)
        raise ServiceStartError(f"{self.command} not ready after {timeout:.0f} s\n{self.log_tail()}")

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (drain), then SIGKILL if it is still running after `timeout`. Returns the exit status."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.process.returncode

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
