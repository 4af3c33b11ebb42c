"""Progress bars for long lensd requests: patching sweeps and generations.

A request sent with a ``progress_id`` can be followed at ``GET
/v1/progress/{id}`` (``{"id", "state", "done", "total", "seconds",
"cancelled"}``, a 404 before it is queued and after it is answered) and
stopped by ``DELETE`` (docs/API.md, "Progress and cancellation").
:class:`ProgressBar` polls that route from a thread of its own while the
request blocks the caller, and shows it in a ``tqdm.auto`` bar (a widget in
a notebook, text on stderr elsewhere). An interrupt (Ctrl-C, a notebook's
stop button) while the request runs cancels it on the daemon too.

What this is not: a progress source of its own. The bar shows only what the
daemon reports; a request that finishes between two polls shows its final
count, set by the caller from the answer (:meth:`ProgressBar.finish`).
"""

from __future__ import annotations

import sys
import threading
import uuid
from typing import Any
from urllib.parse import quote

import requests

# Seconds between two polls: often enough for a bar to move smoothly, rare
# enough (5 small GETs a second) not to load the daemon.
POLL_INTERVAL_S = 0.2
_POLL_TIMEOUT_S = 5.0


def new_progress_id() -> str:
    """A fresh progress id (letters, digits and ``-``; 41 characters, within the daemon's 64)."""
    return f"lensd-py-{uuid.uuid4().hex}"


def interactive() -> bool:
    """Whether a person is likely watching: a Jupyter kernel, or stderr on a terminal.

    Decides the bars' default (``progress=None``): TransformerLens shows its tqdm
    bars always; lensd shows them where someone can see them, and keeps scripts'
    and CI's logs free of them.
    """
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    if shell is not None and type(shell).__name__ == "ZMQInteractiveShell":
        return True
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


class ProgressBar:
    """A tqdm bar that follows ``GET /v1/progress/{progress_id}`` while a request runs.

    Use as a context manager around the blocking request::

        with ProgressBar(client, pid, "patch resid_pre") as bar:
            answer = send(progress_id=pid)
            bar.finish(done, total)

    Args:
        client: the :class:`lensd.Client` the request goes through; the poller uses a
            session of its own (``requests.Session`` is not shared between threads)
            with the client's headers (its token).
        progress_id: the request's ``progress_id``.
        desc: the bar's label.
        total: the expected total, until the daemon reports its own.
        interval: seconds between polls (default: POLL_INTERVAL_S, read when the bar is made).
        file: where a text bar is written (tqdm's default: sys.stderr at the time).

    Attributes:
        polls: every progress document the daemon answered, in order.
    """

    def __init__(
        self,
        client: Any,
        progress_id: str,
        desc: str,
        total: int | None = None,
        interval: float | None = None,
        file: Any = None,
    ) -> None:
        self.client = client
        self.progress_id = progress_id
        self.desc = desc
        self.total = total
        self.interval = POLL_INTERVAL_S if interval is None else interval
        self.file = file
        self.polls: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._bar: Any = None

    def __enter__(self) -> ProgressBar:
        from tqdm.auto import tqdm  # imported here: only a bar needs it

        self._bar = tqdm(total=self.total, desc=self.desc, file=self.file, leave=True)
        self._thread = threading.Thread(target=self._poll, name=f"lensd-progress-{self.progress_id}",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if exc_type is KeyboardInterrupt:
            # the request was abandoned here; stop it on the daemon too (it may have ended)
            try:
                self.client.progress(self.progress_id, cancel=True)
            except Exception:  # noqa: BLE001 - best effort, the interrupt is what matters
                pass
        if self._bar is not None:
            self._bar.close()

    def finish(self, done: int, total: int | None = None) -> None:
        """Sets the bar to the request's final count, from its answer (the last poll may
        predate the end)."""
        with self._lock:
            if total is not None:
                self._bar.total = total
            self._bar.n = done
            self._bar.refresh()

    def _poll(self) -> None:
        """The thread: polls until told to stop; a 404 (not queued yet, or answered) and
        transport errors are skipped, the next poll may see it."""
        url = f"{self.client.url}/v1/progress/{quote(self.progress_id, safe='')}"
        with requests.Session() as session:
            session.headers.update(self.client._session.headers)
            while not self._stop.wait(self.interval):
                try:
                    response = session.get(url, timeout=_POLL_TIMEOUT_S)
                except requests.RequestException:
                    continue
                if response.status_code != 200:
                    continue
                try:
                    state = response.json()
                except ValueError:
                    continue
                self.polls.append(state)
                self._show(state)

    def _show(self, state: dict[str, Any]) -> None:
        with self._lock:
            total = state.get("total")
            if isinstance(total, int) and total > 0:
                self._bar.total = total
            done = state.get("done")
            if isinstance(done, int):
                self._bar.n = done
            if state.get("state") == "queued":
                self._bar.set_postfix_str(f"queued, {state.get('queue_position', '?')} ahead", refresh=False)
            else:
                self._bar.set_postfix_str("", refresh=False)
            self._bar.refresh()
