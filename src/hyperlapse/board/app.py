"""The board's web app: a Starlette application over a :class:`RunIndex` (pages, static files
and a JSON API). Endpoints are plain functions, so Starlette runs their disk reads on its
thread pool and the event loop stays free."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import HyperlapseError, MissingDependencyError
from . import data
from .runs import RunIndex

__all__ = ["create_app", "plotly_js"]

ASSETS = Path(__file__).with_name("assets")


def plotly_js() -> Path:
    """The ``plotly.min.js`` bundled in the ``plotly`` Python package (served, never fetched).

    Raises:
        MissingDependencyError: ``plotly`` is not installed.
    """
    try:
        import plotly
    except ImportError as exc:
        raise MissingDependencyError(
            "hyperlapse board draws its charts with plotly.js from the `plotly` package, which "
            "is not installed. Install it with: pip install -e '.[board]' in the hyperlapse clone"
        ) from exc
    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise MissingDependencyError(
            f"Expected plotly.min.js inside the plotly package at '{path}', but it is missing. "
            f"Reinstall plotly (pip install --force-reinstall plotly)."
        )
    return path


def _int(request: Request, key: str, default: int) -> int:
    try:
        return int(request.query_params.get(key, default))
    except ValueError:
        return default


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(index: RunIndex, analyser: Any = None) -> Starlette:
    """The board's ASGI app over the runs of ``index``.

    Args:
        index: the followed folder.
        analyser: the :class:`~hyperlapse.board.analysis.Analyser` whose per-run state the run
            list shows (None: no analysis in this process).
    """
    js = plotly_js()
    from .forecast import SweepForecastCache

    sweep = SweepForecastCache(index)

    def page(name: str):
        def endpoint(request: Request) -> Response:
            return FileResponse(ASSETS / name, headers={"Cache-Control": "no-cache"})
        return endpoint

    def board(request: Request) -> Response:
        return JSONResponse({
            "root": str(index.root),
            "role": getattr(analyser, "role", "off"),
            "note": getattr(analyser, "note", "no analysis in this process"),
        })

    def runs(request: Request) -> Response:
        out = index.runs()
        for run in out:
            run["analysis"] = (analyser.state(run["name"]) if analyser is not None
                               else {"state": "off", "error": None})
        return JSONResponse(out, headers={"Cache-Control": "no-store"})

    def forecast(request: Request) -> Response:
        return JSONResponse(sweep.get(), headers={"Cache-Control": "no-store"})

    def run_or_404(request: Request) -> tuple[str, Path] | JSONResponse:
        name = request.path_params["name"]
        try:
            return name, index.path(name)
        except KeyError:
            return _error(404, f"no run named '{name}' under {index.root}")

    def metrics(request: Request) -> Response:
        found = run_or_404(request)
        if isinstance(found, JSONResponse):
            return found
        try:
            body = data.metrics_series(found[1], _int(request, "max_points",
                                                      data.DEFAULT_MAX_POINTS))
        except HyperlapseError as exc:
            return _error(409, str(exc))
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    def reports(request: Request) -> Response:
        found = run_or_404(request)
        if isinstance(found, JSONResponse):
            return found
        body = data.report_series(index.analysis_dir(found[0]),
                                  _int(request, "max_points", data.DEFAULT_MAX_POINTS))
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    def embedding(request: Request) -> Response:
        found = run_or_404(request)
        if isinstance(found, JSONResponse):
            return found
        try:
            body = data.embedding_frame(index.analysis_dir(found[0]), found[1],
                                        _int(request, "i", 0))
        except IndexError as exc:
            return _error(404, str(exc))
        except HyperlapseError as exc:
            return _error(409, str(exc))
        return JSONResponse(body)

    def volume(request: Request) -> Response:
        found = run_or_404(request)
        if isinstance(found, JSONResponse):
            return found
        try:
            body = data.volume_frame(found[1], _int(request, "i", 0))
        except IndexError as exc:
            return _error(404, str(exc))
        except (ValueError, HyperlapseError) as exc:
            return _error(409, str(exc))
        return JSONResponse(body)

    def plotly(request: Request) -> Response:
        return FileResponse(js, media_type="text/javascript",
                            headers={"Cache-Control": "public, max-age=86400"})

    routes = [
        Route("/", page("index.html")),
        Route("/run", page("run.html")),
        Route("/compare", page("compare.html")),
        Route("/vendor/plotly.min.js", plotly),
        Mount("/static", app=StaticFiles(directory=ASSETS), name="static"),
        Route("/api/board", board),
        Route("/api/runs", runs),
        Route("/api/forecast", forecast),
        Route("/api/runs/{name:path}/metrics", metrics),
        Route("/api/runs/{name:path}/reports", reports),
        Route("/api/runs/{name:path}/embedding", embedding),
        Route("/api/runs/{name:path}/volume", volume),
    ]
    return Starlette(routes=routes)
