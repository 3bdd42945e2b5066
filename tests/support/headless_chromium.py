"""Open an HTML file in headless Chromium (Debian's `chromium`) with the network off, and report what
happened: console errors and uncaught exceptions, every request the page made, and the values of a few
JavaScript expressions once the page is done. Talks the DevTools protocol over its websocket.

    with Chromium() as browser:
        page = browser.open(path, ready="document.documentElement.dataset.figuresDrawn !== undefined",
                            evaluate={"svgs": "document.querySelectorAll('.main-svg').length"})
        page.values["svgs"], page.errors, page.requests
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--mute-audio",
    # no network at all: every host name fails to resolve and any proxy use goes nowhere
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--proxy-server=http://127.0.0.1:9",
    "--window-size=1400,2000",
)


def find_chromium() -> str | None:
    for name in BINARIES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageResult:
    values: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    """Console errors, uncaught exceptions and error-level log entries (CSP violations among them)."""
    requests: list[str] = field(default_factory=list)
    """URLs of every request the page made (the file itself included)."""


class Chromium:
    def __init__(self, binary: str | None = None, timeout_s: float = 60.0) -> None:
        self.binary = binary or find_chromium()
        if self.binary is None:
            raise RuntimeError("no chromium binary on PATH")
        self.timeout_s = timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.profile = tempfile.mkdtemp(prefix="gpuwatch-chromium-")
        self.ws: Any = None
        self._id = 0

    def __enter__(self) -> Chromium:
        import websocket  # websocket-client (dev dependency)

        self.proc = subprocess.Popen(
            [
                self.binary,
                *FLAGS,
                f"--user-data-dir={self.profile}",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        url = self._devtools_url()
        self.ws = websocket.create_connection(url, timeout=self.timeout_s, suppress_origin=True)
        return self

    def _devtools_url(self) -> str:
        assert self.proc is not None and self.proc.stderr is not None
        deadline = time.monotonic() + self.timeout_s
        seen = []
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline().decode(errors="replace")
            if not line and self.proc.poll() is not None:
                break
            seen.append(line)
            m = re.search(r"DevTools listening on (ws://\S+)", line)
            if m:
                # keep reading what chromium says, so a full pipe never blocks it
                threading.Thread(target=self.proc.stderr.read, daemon=True).start()
                return m.group(1)
        raise RuntimeError("chromium did not start: " + "".join(seen[-10:]))

    def __exit__(self, *exc: object) -> None:
        if self.ws is not None:
            try:
                self._send("Browser.close")
            except Exception:  # noqa: BLE001 - closing anyway
                pass
            self.ws.close()
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    # ---- protocol ----------------------------------------------------------------------------
    def _send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> int:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        return self._id

    def _call(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None, sink: Any = None
    ) -> dict[str, Any]:
        want = self._send(method, params, session)
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == want:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if sink is not None:
                sink(msg)
        raise TimeoutError(method)

    def open(self, path: Path, *, ready: str, evaluate: dict[str, str], settle_s: float = 0.5) -> PageResult:
        """Load `path`, wait until the expression `ready` is true, then evaluate each expression."""
        result = PageResult()

        def on_event(msg: dict[str, Any]) -> None:
            method, params = msg.get("method"), msg.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                result.errors.append(
                    "console: "
                    + " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
                )
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                result.errors.append(
                    "exception: " + str(details.get("exception", {}).get("description", details))
                )
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                result.errors.append("log: " + params["entry"].get("text", ""))
            elif method == "Network.requestWillBeSent":
                result.requests.append(params.get("request", {}).get("url", ""))

        target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            self._call(f"{domain}.enable", session=session, sink=on_event)
        self._call("Page.navigate", {"url": path.resolve().as_uri()}, session=session, sink=on_event)
        deadline = time.monotonic() + self.timeout_s
        while True:
            done = self._call(
                "Runtime.evaluate",
                {"expression": f"Boolean({ready})", "returnByValue": True},
                session,
                on_event,
            )
            if done.get("result", {}).get("value") is True:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"page not ready ({ready}); errors: {result.errors}")
            time.sleep(0.2)
        end = time.monotonic() + settle_s  # late console messages
        while time.monotonic() < end:
            self._call("Runtime.evaluate", {"expression": "1"}, session, on_event)
            time.sleep(0.1)
        for key, expr in evaluate.items():
            got = self._call(
                "Runtime.evaluate", {"expression": expr, "returnByValue": True}, session, on_event
            )
            result.values[key] = got.get("result", {}).get("value")
        self._call("Target.closeTarget", {"targetId": target}, sink=on_event)
        return result


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")
