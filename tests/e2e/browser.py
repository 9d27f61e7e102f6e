"""A headless Chromium driven over the DevTools protocol, with no new dependency.

Chromium comes from Debian (``/usr/bin/chromium``; ``apt-get install chromium``). The
DevTools websocket is spoken with aiohttp's client, which is already installed as a
dependency of faust-streaming. Only the few CDP calls the wall test needs are here.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from streams.childproc import signal_group

CALL_SECONDS = 30.0
START_SECONDS = 30.0
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
# Flags for a root user in a container: no sandbox, no GPU, no background traffic.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--mute-audio",
    "--hide-scrollbars",
    "--remote-allow-origins=*",
    "--remote-debugging-port=0",
    "--remote-debugging-address=127.0.0.1",
)


def find_chromium() -> str | None:
    env = os.environ.get("KPI_TEST_CHROMIUM")
    if env:
        return env if Path(env).exists() else None
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


class Page:
    """One page target. ``events`` keeps the CDP events seen (console, exceptions, log)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        call_id = self._next_id
        await self._ws.send_json({"id": call_id, "method": method, "params": params})
        deadline = time.monotonic() + CALL_SECONDS
        while True:
            message = await self._ws.receive_json(timeout=max(0.1, deadline - time.monotonic()))
            if message.get("id") != call_id:
                if "method" in message:
                    self.events.append(message)
                continue
            if "error" in message:
                raise RuntimeError(f"{method}: {message['error']}")
            result: dict[str, Any] = message["result"]
            return result

    async def evaluate(self, expression: str) -> Any:
        reply = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in reply:
            raise RuntimeError(f"page script failed: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def goto(self, url: str) -> None:
        await self.call("Page.navigate", url=url)

    async def screenshot(self, path: Path) -> Path:
        reply = await self.call("Page.captureScreenshot", format="png")
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(path.write_bytes, base64.b64decode(reply["data"]))
        return path

    def errors(self) -> list[dict[str, Any]]:
        """Uncaught exceptions, console errors and browser log errors (CSP, network) so far."""
        out = []
        for event in self.events:
            params = event.get("params", {})
            thrown = event["method"] == "Runtime.exceptionThrown"
            if thrown or (event["method"] == "Runtime.consoleAPICalled" and params.get("type") == "error"):
                out.append(params)
            elif event["method"] == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                out.append(params["entry"])
        return out


async def _devtools_port(profile: Path, proc: asyncio.subprocess.Process) -> int:
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode}")
        if marker.exists():
            first = marker.read_text().splitlines()[:1]
            if first and first[0].isdigit():
                return int(first[0])
        await asyncio.sleep(0.1)
    raise TimeoutError("chromium did not open its DevTools port")


@asynccontextmanager
async def open_page(chromium: str, width: int = 1920, height: int = 1080) -> AsyncIterator[Page]:
    """A fresh browser (own profile) with one page of exactly ``width`` x ``height`` CSS pixels."""
    # Chromium's helper processes may still be writing the profile while they exit.
    with tempfile.TemporaryDirectory(prefix="kpi-chromium-", ignore_cleanup_errors=True) as tmp:
        profile = Path(tmp)
        proc = await asyncio.create_subprocess_exec(
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # its zygote and renderers go with it
        )
        try:
            port = await _devtools_port(profile, proc)
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                    targets = await response.json()
                url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
                async with session.ws_connect(url, max_msg_size=64 * 1024 * 1024) as ws:
                    page = Page(ws)
                    for domain in ("Page", "Runtime", "Log"):
                        await page.call(f"{domain}.enable")
                    await page.call(
                        "Emulation.setDeviceMetricsOverride",
                        width=width,
                        height=height,
                        deviceScaleFactor=1,
                        mobile=False,
                    )
                    yield page
        finally:
            if proc.returncode is None:
                signal_group(proc.pid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    signal_group(proc.pid, signal.SIGKILL)
                    await proc.wait()
