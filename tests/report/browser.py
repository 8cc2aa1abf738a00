"""A headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe): no extra package.

``render(path)`` opens a local HTML file, waits for its load event and returns the console errors and
uncaught exceptions, the page's images (src prefix, naturalWidth, naturalHeight), its headlines, and per
viewport width: whether the page scrolls sideways (with its ``<details>`` closed and open), every figure's
drawn size (inline SVG, canvas, images) and a PNG screenshot of the whole page.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time

#: Debian's chromium-headless-shell (CI: apt-get install chromium-headless-shell), or a full chromium
CANDIDATES = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")


def find_browser() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    def __init__(self, binary: str):
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def child_fds():  # the protocol pipe: the browser reads fd 3 and writes fd 4
            read, write = os.dup(to_browser_r), os.dup(from_browser_w)  # above 4, so neither dup2 clobbers it
            os.dup2(read, 3)
            os.dup2(write, 4)

        self.proc = subprocess.Popen(
            [
                binary,
                "--headless",
                "--remote-debugging-pipe",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                f"--user-data-dir={self.profile}",
                "--window-size=1280,2000",
                "about:blank",
            ],
            preexec_fn=child_fds,
            close_fds=False,  # fds 3 and 4 must survive into the browser
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer, self._next_id, self.events = b"", 0, []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("the browser did not answer in time")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("the browser closed its protocol pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60):
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(i)
        while True:
            event = self._read_message(deadline)
            if event.get("method") == method:
                return event
            self.events.append(event)

    def close(self):
        try:
            self.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._to_browser)
        os.close(self._from_browser)
        shutil.rmtree(self.profile, ignore_errors=True)


IMAGES_JS = "JSON.stringify([...document.images].map(i => [i.src.slice(0, 22), i.naturalWidth, i.naturalHeight]))"

#: per viewport: the page's scroll and client widths with every <details> closed, then open; then, open, every
#: figure's size (an outer <svg>: its child elements and drawn box; a <canvas>; an <img>: natural and drawn width)
#: and the elements that stick out to the right; finally the <details> are closed again
LAYOUT_JS = """JSON.stringify((() => {
  const root = document.documentElement, details = [...document.querySelectorAll('details')];
  const widths = () => [root.scrollWidth, root.clientWidth];
  const closed = widths();
  details.forEach(d => { d.open = true; });
  const open = widths();
  const svgs = [...document.querySelectorAll('svg')].filter(s => !s.parentElement.closest('svg')).map(s => {
    const r = s.getBoundingClientRect(); return [s.childElementCount, r.width, r.height]; });
  const canvases = [...document.querySelectorAll('canvas')].map(c => [c.width, c.height]);
  const images = [...document.images].map(i => [i.naturalWidth, i.getBoundingClientRect().width]);
  const outside = [...document.body.querySelectorAll('*')]
    .filter(e => e.getBoundingClientRect().right > root.clientWidth + 1 && !e.closest('.wide *'))
    .slice(0, 5).map(e => e.tagName + '.' + e.className);
  details.forEach(d => { d.open = false; });
  return {closed, open, svgs, canvases, images, outside};
})())"""

HEADLINES_JS = "JSON.stringify([...document.querySelectorAll('.headline')].map(e => e.textContent))"


def render(binary: str, path: str, widths: tuple[int, ...] = (1280,), height: int = 2000) -> dict:
    """Load ``path`` (a local HTML file) in a fresh headless browser: errors, images, title, tables and headlines,
    and per width in ``widths`` (``layout[width]``) the sideways scroll, the figures' sizes and a whole-page
    screenshot; ``screenshot``: the first width's."""
    browser = Browser(binary)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            browser.send(f"{domain}.enable", session=session)

        def evaluate(expression: str):
            reply = browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session)
            return reply["result"]["value"]

        metrics = {"height": height, "deviceScaleFactor": 1, "mobile": False}
        browser.send("Emulation.setDeviceMetricsOverride", {"width": widths[0], **metrics}, session=session)
        browser.send("Page.navigate", {"url": "file://" + os.path.abspath(path)}, session=session)
        browser.wait_for("Page.loadEventFired")
        layout = {}
        for width in widths:
            browser.send("Emulation.setDeviceMetricsOverride", {"width": width, **metrics}, session=session)
            found = json.loads(evaluate(LAYOUT_JS))
            shot = browser.send(
                "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=session
            )
            layout[width] = {**found, "screenshot": base64.b64decode(shot["data"])}
        errors = []
        for event in browser.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append(str(params.get("args")))
            elif method == "Runtime.exceptionThrown":
                errors.append(str(params.get("exceptionDetails")))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                errors.append(str(params["entry"].get("text")))
        return {
            "errors": errors,
            "images": json.loads(evaluate(IMAGES_JS)),
            "title": evaluate("document.title"),
            "tables": evaluate("document.querySelectorAll('table').length"),
            "headlines": json.loads(evaluate(HEADLINES_JS)),
            "layout": layout,
            "screenshot": layout[widths[0]]["screenshot"],
        }
    finally:
        browser.close()
