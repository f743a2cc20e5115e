"""A headless Chromium driven over the DevTools protocol, for tests that must see a page
the way a person's browser does: its scripts ran, nothing failed in the console, what
it drew, and a screenshot. Debian's ``chromium`` package (installed by ``.ci/run``);
aiohttp (already a dependency) speaks the protocol's websocket. No Selenium, no
Playwright download."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp


def chromium() -> str | None:
    """Path of a Chromium binary, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageVisit:
    """What loading a page produced."""

    value: Any                                  # what the probe expression returned
    errors: list[str] = field(default_factory=list)   # console errors and exceptions
    screenshot: Path | None = None


def visit(url: str, probe: str, screenshot: Path | None = None, width: int = 1400,
          height: int = 900, timeout_s: float = 60.0) -> PageVisit:
    """Load ``url`` in a fresh headless Chromium, wait for its load event, evaluate the
    JavaScript expression ``probe`` (JSON-serialisable result), optionally save a full
    page PNG, and return them with every console error and uncaught exception."""
    binary = chromium()
    if binary is None:
        raise RuntimeError("chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="llmspend-chromium-",
                                     ignore_cleanup_errors=True) as profile:
        proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions",
             "--remote-debugging-port=0", f"--user-data-dir={profile}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            ws_url = _devtools_url(proc, timeout_s)
            return asyncio.run(asyncio.wait_for(
                _visit(ws_url, url, probe, screenshot, width, height), timeout_s))
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _devtools_url(proc: subprocess.Popen, timeout_s: float) -> str:
    """The browser's websocket address, which Chromium prints on stderr at start."""
    deadline = time.monotonic() + timeout_s
    seen = []
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        m = re.search(r"DevTools listening on (ws://\S+)", line)
        if m:
            return m.group(1)
    raise RuntimeError("chromium did not start: " + "".join(seen)[-2000:])


class _Session:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws, self.next_id = ws, 0
        self.waiting: dict[int, asyncio.Future] = {}
        self.events: list[dict] = []
        self.loaded = asyncio.Event()

    async def pump(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self.waiting:
                self.waiting.pop(data["id"]).set_result(data)
            elif data.get("method") == "Page.loadEventFired":
                self.loaded.set()
            elif "method" in data:
                self.events.append(data)

    async def call(self, method: str, session: str | None = None, **params: Any) -> dict:
        self.next_id += 1
        fut = asyncio.get_running_loop().create_future()
        self.waiting[self.next_id] = fut
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        await self.ws.send_str(json.dumps(msg))
        res = await fut
        if "error" in res:
            raise RuntimeError(f"{method}: {res['error']}")
        return res.get("result", {})


async def _visit(ws_url: str, url: str, probe: str, screenshot: Path | None, width: int,
                 height: int) -> PageVisit:
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, max_msg_size=0) as ws:
        s = _Session(ws)
        pump = asyncio.create_task(s.pump())
        target = (await s.call("Target.createTarget", url="about:blank"))["targetId"]
        sid = (await s.call("Target.attachToTarget", targetId=target, flatten=True))[
            "sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            await s.call(f"{domain}.enable", sid)
        await s.call("Emulation.setDeviceMetricsOverride", sid, width=width, height=height,
                     deviceScaleFactor=1, mobile=False)
        await s.call("Page.navigate", sid, url=url)
        await s.loaded.wait()
        res = await s.call("Runtime.evaluate", sid, expression=probe, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"probe failed: {res['exceptionDetails']}")
        visit = PageVisit(res["result"].get("value"))
        if screenshot is not None:
            size = (await s.call("Page.getLayoutMetrics", sid))["cssContentSize"]
            shot = await s.call("Page.captureScreenshot", sid, format="png",
                                captureBeyondViewport=True,
                                clip={"x": 0, "y": 0, "width": size["width"],
                                      "height": size["height"], "scale": 1})
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            visit.screenshot = screenshot
        for e in s.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.exceptionThrown":
                visit.errors.append(json.dumps(p.get("exceptionDetails"))[:500])
            elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") == "error":
                visit.errors.append(" ".join(str(a.get("value", a.get("description")))
                                             for a in p.get("args", [])))
            elif e["method"] == "Log.entryAdded" and p["entry"].get("level") == "error":
                visit.errors.append(p["entry"].get("text", ""))
        pump.cancel()
        return visit
