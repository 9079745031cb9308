"""``hyperlapse board DIR``: serve the folder of runs with uvicorn and analyse in the
background until Ctrl-C."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError, MissingDependencyError

__all__ = ["serve"]


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def serve(
    root: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 6060,
    threads: int = 1,
    seed: int = 0,
    poll_s: float = 1.0,
    analyse: bool = True,
    quiet: bool = False,
    **online: Any,
) -> None:
    """Serve the board over ``root`` until interrupted (Ctrl-C / SIGTERM stop it cleanly: the
    analysis finishes the snapshot in progress, closes its outputs and releases its lock).

    Args:
        root: the folder of runs; stores anywhere below it (3 levels deep) are followed, new
            ones included.
        host, port: where to listen (default: this machine only).
        threads: torch threads of the background analysis.
        seed: encoder seed of the analysis.
        poll_s: seconds between checks for new snapshots when all runs are up to date.
        analyse: False to only show the stores and what an earlier analysis wrote.
        quiet: no startup line.
        online: further options of ``RunAnalysis``.

    Raises:
        ConfigError: ``root`` is not a folder.
        MissingDependencyError: the ``board`` extra is not installed.
    """
    path = Path(root)
    if not path.is_dir():
        raise ConfigError(
            f"Expected a folder of runs (trajectory stores) for `hyperlapse board`, got '{root}', "
            f"which is {'a file' if path.exists() else 'missing'}. Pass the folder your "
            f"recorders write into, e.g. `hyperlapse board runs/`."
        )
    try:
        import uvicorn
    except ImportError as exc:
        raise MissingDependencyError(
            "hyperlapse board needs uvicorn and starlette: "
            "pip install -e '.[board]' in the hyperlapse clone"
        ) from exc
    import torch

    from .analysis import Analyser
    from .app import create_app
    from .runs import RunIndex

    torch.set_num_threads(threads)
    # imported before listening, so the first page does not wait for them (seconds on 2 cores)
    from ..geometry import pullback  # noqa: F401
    from ..store import reader  # noqa: F401
    if analyse:
        from ..online import runner  # noqa: F401

    index = RunIndex(path, rescan_s=poll_s)
    analyser = Analyser(index, threads=threads, seed=seed, poll_s=poll_s, analyse=analyse,
                        **online)
    app = create_app(index, analyser)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    if not quiet:
        print(f"hyperlapse board: http://{host}:{port}/  ({index.root}; {analyser.note}). "
              f"Ctrl-C stops.", file=sys.stderr, flush=True)
    analyser.start()
    # uvicorn re-raises the signal that stopped it once it has shut down: make SIGTERM end
    # like Ctrl-C (KeyboardInterrupt), so the analysis below is closed either way
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.run()  # handles SIGINT/SIGTERM itself: returns after a graceful shutdown
    except SystemExit:  # uvicorn exits when it cannot bind
        pass
    finally:
        analyser.stop()
        signal.signal(signal.SIGTERM, previous)
    if not server.started:
        raise ConfigError(
            f"hyperlapse board could not listen on {host}:{port} (in use?). Pick another port "
            f"with --port."
        )
