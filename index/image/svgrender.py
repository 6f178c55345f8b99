"""SVG rendering in a child process with a time budget.

cairosvg renders in C with no way to interrupt it, and an SVG of a few kilobytes can ask for
minutes of work (nested ``<use>`` references fan out exponentially). So renders run in one
long-lived child process (started once, reused, so a render costs no interpreter start-up); a
render that overruns its budget kills the child, which is started again for the next SVG, and
the caller gets ``ImageError("svg_too_complex")``. One render runs at a time per process.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
from typing import Any

RENDER_BUDGET_S = 2.0  # a logo renders in milliseconds; this bounds what a hostile SVG costs
START_TIMEOUT_S = 120.0  # the child's start (an interpreter and cairosvg), not counted in the budget


def _serve(conn: Any) -> None:  # the child: render whatever arrives until the pipe closes
    import cairosvg.surface  # noqa: F401 - imported before "ready", so no render pays for it

    from strop.index.image.decode import ImageError, render_svg_png

    conn.send(("ready", None))
    while True:
        try:
            data, side = conn.recv()
        except EOFError:
            return
        try:
            conn.send(("ok", render_svg_png(data, side)))
        except ImageError as e:
            conn.send(("error", (e.code, e.message)))
        except Exception as e:  # noqa: BLE001 - reported to the caller, the child lives on
            conn.send(("error", ("invalid_image", f"the SVG could not be rendered: {str(e)[:200]}")))


class SvgRenderer:
    def __init__(self, budget_s: float = RENDER_BUDGET_S):
        self.budget_s = budget_s
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: Any = None

    def _ensure(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            return
        ctx = mp.get_context("spawn")  # no fork of a process that holds torch and threads
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child,), name="strop-svg", daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent
        if not parent.poll(START_TIMEOUT_S) or parent.recv()[0] != "ready":
            self._kill()
            raise RuntimeError("the SVG renderer process did not start")

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(5)
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None

    def render(self, data: bytes, side: int) -> bytes:
        """PNG bytes of the SVG rendered into a ``side`` square, or ImageError."""
        from strop.index.image.decode import ImageError

        with self._lock:
            self._ensure()
            try:
                self._conn.send((data, side))
                ready = self._conn.poll(self.budget_s)
            except (OSError, EOFError):
                self._kill()
                raise ImageError("invalid_image", "the SVG renderer stopped; try again") from None
            if not ready:
                self._kill()
                raise ImageError("svg_too_complex", f"the SVG takes more than {self.budget_s:g} s to render "
                                 "(deeply nested <use> references?): simplify it or send a PNG")
            try:
                status, value = self._conn.recv()
            except (OSError, EOFError):
                self._kill()
                raise ImageError("invalid_image", "the SVG renderer stopped; try again") from None
        if status == "error":
            raise ImageError(*value)
        return value


_renderer: SvgRenderer | None = None
_renderer_lock = threading.Lock()


def renderer() -> SvgRenderer:
    global _renderer
    with _renderer_lock:
        if _renderer is None:
            _renderer = SvgRenderer()
        return _renderer
