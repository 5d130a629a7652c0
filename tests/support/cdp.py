"""Drive Debian's headless Chromium over the Chrome DevTools Protocol, for the dashboard's browser test.

Why CDP over ``websockets`` and not Playwright: the project already depends on ``websockets``, and
Playwright's browser download cannot work on an offline machine; CDP is the protocol Playwright
itself speaks to Chromium, and the test needs only a handful of its commands (open a page,
evaluate JavaScript, take a screenshot).

Chromium is started with the flags it needs to start quickly and quietly without a network, a
fresh profile directory, and ``--remote-debugging-port=0``; the port it picked is read from the
``DevToolsActivePort`` file it writes into that profile.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import orjson
from websockets.asyncio.client import ClientConnection, connect

CHROMIUM_FLAGS: Final = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
)


class CdpError(RuntimeError):
    """Chromium reported an error for a command, or a page script threw."""


def find_chromium() -> str:
    """Path of the Chromium binary (Debian's ``chromium`` package; scripts/install.sh installs it)."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    raise FileNotFoundError("chromium not found: run `make install` (Debian package 'chromium')")


class Chromium:
    """A headless Chromium process and one page of it; use ``async with``."""

    def __init__(self, *, width: int = 1280, height: int = 900, start_timeout: float = 30.0) -> None:
        self._size = (width, height)
        self._start_timeout = start_timeout
        self._profile = tempfile.mkdtemp(prefix="chromium-profile-")
        self._proc: subprocess.Popen[bytes] | None = None
        self._ws: ClientConnection | None = None
        self._session: str | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.console: list[str] = []  # console messages and uncaught exceptions of the page

    async def __aenter__(self) -> Chromium:
        width, height = self._size
        self._proc = subprocess.Popen(
            [find_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}",
             "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._ws = await connect(await self._browser_url(), max_size=64 * 1024 * 1024)
        self._reader = asyncio.create_task(self._read())
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        self._session = attached["sessionId"]
        for domain in ("Page.enable", "Runtime.enable"):
            await self.send(domain)
        await self.send("Emulation.setDeviceMetricsOverride",
                        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._ws is not None:
            await self._ws.close()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

    async def _browser_url(self) -> str:
        marker = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self._proc.returncode}")
            with contextlib.suppress(OSError, ValueError):
                port, path = marker.read_text().split()[:2]
                return f"ws://127.0.0.1:{int(port)}{path}"
            await asyncio.sleep(0.1)
        raise TimeoutError("chromium did not open its DevTools port")

    async def _read(self) -> None:
        assert self._ws is not None
        async for raw in self._ws:
            msg = orjson.loads(raw)
            future = self._waiting.pop(msg.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(msg)
            elif msg.get("method") == "Runtime.consoleAPICalled":
                args = msg["params"].get("args", [])
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
            elif msg.get("method") == "Runtime.exceptionThrown":
                self.console.append("exception: " + str(msg["params"]["exceptionDetails"].get("text")))

    async def send(self, method: str, params: dict[str, Any] | None = None, *,
                   timeout: float = 30.0) -> dict[str, Any]:
        """One CDP command (to the page once attached); its ``result``."""
        assert self._ws is not None
        command_id = next(self._ids)
        doc: dict[str, Any] = {"id": command_id, "method": method, "params": params or {}}
        if self._session is not None:
            doc["sessionId"] = self._session
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[command_id] = future
        await self._ws.send(orjson.dumps(doc).decode())
        reply = await asyncio.wait_for(future, timeout)
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error'].get('message')}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def goto(self, url: str) -> None:
        """Navigate and wait until the document has loaded."""
        await self.send("Page.navigate", {"url": url})
        await self.wait_for("document.readyState === 'complete'")

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        result = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                      "awaitPromise": True})
        if "exceptionDetails" in result:
            raise CdpError(f"script failed: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, *, timeout: float = 15.0) -> Any:
        """Poll ``expression`` until it is truthy; its value (TimeoutError with the last value)."""
        deadline = time.monotonic() + timeout
        value: Any = None
        while time.monotonic() < deadline:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(0.1)
        raise TimeoutError(f"page never satisfied {expression!r} "
                           f"(last value {value!r}; console {self.console})")

    async def screenshot(self, path: Path) -> bytes:
        """Save a PNG of the viewport to ``path``; returns its bytes."""
        data = base64.b64decode((await self.send("Page.captureScreenshot", {"format": "png"}))["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return data
