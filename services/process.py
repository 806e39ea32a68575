"""Start one of our HTTP services as a child process on a free 127.0.0.1 port, wait for /health, stop it at exit.

The child dies with the process that started it, kill -9 included (a parent-death signal, not only `stop()` at
exit), and with it the sandboxes it runs (bwrap's --die-with-parent), so a crashed trainer leaves no service behind.

This is the embedded default: with no service URL given, `train.py` and the `score` commands run their own.
The child inherits the environment, ART_ALLOW_UNSANDBOXED and ART_SANDBOX_BWRAP included (`sandbox.run`): a
service that runs model code refuses to start without a sandbox or that opt-out, and `start()` raises with its line.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from sandbox.launch import die_with_parent

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel picks it).

    ART has the same helper (`art.utils.network.find_free_tcp_port`); this copy stays because importing that one
    runs `art/__init__`, which loads torch, transformers and litellm and reads a `.env` file, while the services and
    the `score` commands that start them never import ART and start in a fraction of the time
    (bench/import_cost.py prints both)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServiceProcess:
    def __init__(self, module: str, *args: str, startup_timeout: float = 60.0, token: str | None = None,
                 env: Mapping[str, str] | None = None):
        self.module, self.args, self.startup_timeout = module, list(args), startup_timeout
        self.extra_env = dict(env or {})
        self.token = token or secrets.token_hex(16)  # hex: never a leading '-' that a command line reads as a flag
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> ServiceProcess:
        cmd = [sys.executable, "-m", self.module, "--host", "127.0.0.1", "--port", str(self.port),
               *self.args]
        env = dict(os.environ, **self.extra_env, SERVICE_TOKEN=self.token)  # not on the command line: `ps` shows it
        # A file, not a pipe: nobody reads a pipe while the service runs, and a full pipe would block it.
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives as long as the service
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.log, text=True, env=env,
                                     preexec_fn=die_with_parent())
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if (code := self.proc.poll()) is not None:
                self.log.seek(0)
                raise RuntimeError(f"{self.module} exited at start (exit code {code}): {self.log.read()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.module} did not answer /health within {self.startup_timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
