"""A headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe): no extra package.

``render(path)`` opens a local HTML file, waits for its load event and returns the console errors and
uncaught exceptions, the page's images (src prefix, naturalWidth, naturalHeight) and a PNG screenshot.
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


def render(binary: str, path: str) -> dict:
    """Load ``path`` (a local HTML file) in a fresh headless browser: errors, images, title and a screenshot."""
    browser = Browser(binary)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Page.navigate", {"url": "file://" + os.path.abspath(path)}, session=session)
        browser.wait_for("Page.loadEventFired")
        images = json.loads(
            browser.send("Runtime.evaluate", {"expression": IMAGES_JS, "returnByValue": True}, session=session)[
                "result"
            ]["value"]
        )
        title = browser.send(
            "Runtime.evaluate", {"expression": "document.title", "returnByValue": True}, session=session
        )
        tables = browser.send(
            "Runtime.evaluate",
            {"expression": "document.querySelectorAll('table').length", "returnByValue": True},
            session=session,
        )
        shot = browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=session)
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
            "images": images,
            "title": title["result"]["value"],
            "tables": tables["result"]["value"],
            "screenshot": base64.b64decode(shot["data"]),
        }
    finally:
        browser.close()
