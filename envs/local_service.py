"""How an env that talks to a service of its own (gmsh, r2e's test service) gets a client: remote nodes when the
user names them, else the embedded default, its own service started on a free local port for the run.

Shared by the env specs; imported by their functions (it starts processes and speaks HTTP), never at spec import.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from services.process import ServiceProcess


@contextlib.asynccontextmanager
async def service_client(urls: Sequence[str], token_env: str, make_client: Callable[[list[str], str], Any],
                         module: str, *args: str) -> AsyncIterator[Any]:
    """Remote nodes when URLs are given (token from `token_env`), else the embedded default: our own service on
    a free local port, stopped at exit."""
    with contextlib.ExitStack() as stack:
        if urls:
            client = make_client(list(urls), os.environ.get(token_env, ""))
        else:
            service = stack.enter_context(ServiceProcess(module, *args))
            client = make_client([service.url], service.token)
        try:
            yield client
        finally:
            await client.aclose()


def local_workers(cfg: Any) -> str:
    """A local service's worker count: the run's concurrency, at most one per core."""
    return str(max(1, min(cfg.max_concurrent, os.cpu_count() or 1)))


def scratch_args(cfg: Any) -> list[str]:
    """A local service keeps its temp dirs under the rollout root (in training, the run's own folder), so the
    trainer's sweep of dead runs removes what a service killed mid-request left."""
    return ["--scratch-root", str(cfg.rollout_root)]


def check_service_urls(flag: str, urls: Sequence[str]) -> None:
    """ValueError naming `flag` for a URL (or an `@FILE` of them) that is not an http(s) URL."""
    from services.client import NodeListError, expand_urls

    try:  # URLs, or @FILE: a file of URLs, one a line
        expanded = expand_urls(list(urls))
    except NodeListError as exc:
        raise ValueError(f"{flag} {exc}") from None
    for url in expanded:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{flag} {url!r} must start with http://")
