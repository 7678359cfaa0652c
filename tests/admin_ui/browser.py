"""A real headless Chromium driven over the DevTools protocol, for the admin page's tests.

Chromium talks the protocol on a pipe (``--remote-debugging-pipe``: commands in on fd 3, answers and events
out on fd 4, each message JSON ended by a NUL byte), so no websocket client and no port are needed. Debian's
``chromium`` package provides the browser; :func:`chromium_path` says how to install it when it is missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

INSTALL_HINT = (
    "the admin page tests need a headless Chromium: install Debian's `chromium` package "
    "(apt-get install -y chromium; .ci/run installs it) or put a chromium/chrome binary on PATH"
)


def chromium_path() -> str | None:
    """The Chromium binary on PATH, if any."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found is not None:
            return found
    return None


def _high(fd: int) -> int:
    """``fd`` moved to a descriptor number of 10 or more."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return moved


class BrowserError(AssertionError):
    """The browser failed, timed out, or a script in the page threw."""


class Chromium:
    """One headless Chromium process with one page (tab), controlled over the DevTools pipe."""

    def __init__(self, binary: str, profile: Path, *, timeout: float = 10.0) -> None:
        self.timeout = timeout
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # Moved above 9 first: the shell below puts them on 3 and 4, which they might already be.
        to_browser_r, from_browser_w = _high(to_browser_r), _high(from_browser_w)
        args = [
            binary,
            "--headless=new",
            "--no-sandbox",  # as root in a container: the sandbox can't start
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--metrics-recording-only",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        # The protocol's fds must be 3 and 4 in the browser: bash moves them there (dash refuses fds above 9).
        script = f'exec "$@" 3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-'
        self.proc = subprocess.Popen(
            ["bash", "-c", script, "bash", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=(to_browser_r, from_browser_w),
            start_new_session=True,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._answers: dict[int, dict[str, Any]] = {}
        self._events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._closed = False
        self.stderr: list[str] = []
        threading.Thread(target=self._read, name="chromium-cdp", daemon=True).start()
        self._stderr_reader = threading.Thread(target=self._read_stderr, name="chromium-stderr", daemon=True)
        self._stderr_reader.start()
        self.session = self._attach()

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                data = os.read(self._from_browser, 65536)
            except OSError:
                data = b""
            if not data:
                with self._cond:
                    self._closed = True
                    self._cond.notify_all()
                return
            buffer += data
            *messages, buffer = buffer.split(b"\0")
            with self._cond:
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:
                        self._answers[message["id"]] = message
                    else:
                        self._events.append(message)
                self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.decode(errors="replace").rstrip())

    def send(self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None) -> dict[str, Any]:
        """Run one protocol command and return its result (BrowserError on an error or a timeout)."""
        with self._cond:
            self._next_id += 1
            ident = self._next_id
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        with self._cond:
            while ident not in self._answers:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    why = "closed the pipe" if self._closed else f"did not answer within {self.timeout}s"
                    raise BrowserError(f"chromium {why} ({method}); stderr:\n" + "\n".join(self.stderr[-20:]))
                self._cond.wait(left)
            answer = self._answers.pop(ident)
        if "error" in answer:
            raise BrowserError(f"{method} failed: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    def _attach(self) -> str:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session: str = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Runtime.enable", session=session)
        return session

    def open(self, url: str) -> None:
        """Load ``url`` in the page and wait until its document has loaded."""
        result = self.send("Page.navigate", {"url": url}, session=self.session)
        if result.get("errorText"):
            raise BrowserError(f"could not load {url}: {result['errorText']}")
        self.wait_for("document.readyState === 'complete'")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-able values only)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=self.session)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, *, within: float = 5.0) -> Any:
        """Evaluate ``expression`` until it is truthy (polling every 50 ms for up to ``within`` s); its value."""
        deadline = time.monotonic() + within
        value = None
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.05)
        raise BrowserError(f"{expression!r} still {value!r} after {within}s")

    def console_errors(self) -> list[str]:
        """Exceptions thrown in the page and console.error calls so far."""
        with self._cond:
            events = list(self._events)
        out = []
        for event in events:
            if event.get("method") == "Runtime.exceptionThrown":
                out.append(json.dumps(event["params"]["exceptionDetails"])[:500])
            elif event.get("method") == "Runtime.consoleAPICalled" and event["params"].get("type") == "error":
                out.append(json.dumps(event["params"]["args"])[:500])
        return out

    def close(self) -> None:
        with contextlib.suppress(BrowserError):
            self.send("Browser.close")
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: the renderers and helpers too
            self.proc.wait(timeout=5)
        self._stderr_reader.join(5)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        for fd in (self._to_browser, self._from_browser):
            with contextlib.suppress(OSError):
                os.close(fd)


def describe_page(browser: Chromium) -> dict[str, Any]:
    """What the admin page shows, read from its DOM: routes, clusters with endpoints, errors and status."""
    script = """(() => {
      const text = (node) => node ? node.textContent.trim() : null;
      const routes = {};
      for (const row of document.querySelectorAll('#routes tbody tr')) {
        routes[row.dataset.route] = [...row.querySelectorAll('.leg')].map(
          (leg) => ({cluster: leg.dataset.cluster, weight: Number(leg.dataset.weight), text: text(leg)}));
      }
      const clusters = {};
      for (const section of document.querySelectorAll('#clusters .cluster')) {
        clusters[section.dataset.cluster] = {
          breaker: section.dataset.breaker,
          breaker_text: text(section.querySelector('.badge')),
          rps: section.querySelector('.rps').dataset.rps,
          error_rate: section.querySelector('.error-rate').dataset.errorRate,
          endpoints: Object.fromEntries([...section.querySelectorAll('tr.endpoint')].map((row) => [
            row.dataset.endpoint,
            {healthy: row.dataset.healthy, ejected: row.dataset.ejected, text: text(row)},
          ])),
        };
      }
      const errors = [...document.querySelectorAll('#errors tbody tr.error')].map((row) => ({
        code: row.dataset.code, cluster: row.dataset.cluster, endpoint: row.dataset.endpoint, text: text(row),
      }));
      return {status: document.getElementById('status').dataset.state, routes, clusters, errors,
              workers: text(document.getElementById('workers'))};
    })()"""
    value: dict[str, Any] = browser.evaluate(script)
    return value


def wait_until(browser: Chromium, check: Callable[[dict[str, Any]], bool], *, within: float = 8.0) -> dict[str, Any]:
    """The page's :func:`describe_page` once ``check`` holds for it (polling for up to ``within`` s)."""
    deadline = time.monotonic() + within
    page: dict[str, Any] = {}
    while time.monotonic() < deadline:
        page = describe_page(browser)
        if check(page):
            return page
        time.sleep(0.1)
    raise BrowserError(
        f"the page never showed what was expected within {within}s; it shows:\n{json.dumps(page, indent=1)}"
    )
