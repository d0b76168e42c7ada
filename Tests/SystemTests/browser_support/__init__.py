"""Headless Chromium driven over the DevTools protocol (Debian's `chromium`, PyPI `websockets`): load a page,
collect what its console and the browser report as errors, and evaluate script in it."""
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request

import websockets.sync.client

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
         "--disable-extensions", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--metrics-recording-only", "--mute-audio", "--password-store=basic"]


class Browser:
    """One headless Chromium with one page; `errors` lists console errors, uncaught exceptions and the browser's own
    error entries (failed loads, refused by the content security policy) since the page was opened."""

    def __init__(self, timeout=30):
        assert CHROMIUM, "Debian's chromium is missing: scripts/setup.sh installs it"
        self.profile = tempfile.mkdtemp(prefix="kernel-chromium-")
        self.log = open(os.path.join(self.profile, "chromium-stderr.log"), "wb")
        self.process = subprocess.Popen([CHROMIUM, *FLAGS, "--remote-debugging-port=0",
                                         f"--user-data-dir={self.profile}", "about:blank"],
                                        stdout=self.log, stderr=subprocess.STDOUT)
        self.errors = []
        self._ids = itertools.count(1)
        port = self._wait_for_port(timeout)
        deadline = time.time() + timeout
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as answer:
                pages = [t for t in json.load(answer) if t.get("type") == "page"]
            if pages or time.time() > deadline:
                break
            time.sleep(0.05)
        assert pages, "chromium opened no page"
        self._connection = contextlib.ExitStack()
        self.socket = self._connection.enter_context(websockets.sync.client.connect(
            pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=timeout))
        for domain in ("Runtime", "Log", "Page"):
            self.call(f"{domain}.enable")

    def _wait_for_port(self, timeout):
        # With port 0 Chromium picks a free port and writes it to DevToolsActivePort in its profile.
        path = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"chromium exited with {self.process.returncode}: {self._stderr()}")
            if os.path.exists(path):
                lines = open(path).read().split("\n")
                if lines[0].strip():
                    return int(lines[0])
            time.sleep(0.05)
        raise AssertionError(f"chromium opened no DevTools port: {self._stderr()}")

    def _stderr(self):
        with open(os.path.join(self.profile, "chromium-stderr.log"), "rb") as f:
            return f.read().decode("utf-8", "replace")[-4000:]

    def call(self, method, timeout=30, **params):
        """Sends one DevTools command and returns its result, noting the events that arrive meanwhile."""
        ident = next(self._ids)
        self.socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.time() + timeout
        while True:
            message = json.loads(self.socket.recv(timeout=max(0.01, deadline - time.time())))
            if message.get("id") == ident:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._note(message)

    def _note(self, event):
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.errors.append("console." + params["type"] + ": " +
                               " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.errors.append("uncaught: " + details.get("exception", {}).get("description", details.get("text", "")))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.errors.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())

    def open(self, url, timeout=30):
        """Navigates to `url` and waits for its load event."""
        result = self.call("Page.navigate", url=url)
        assert "errorText" not in result, f"{url}: {result['errorText']}"
        deadline = time.time() + timeout
        while True:
            event = json.loads(self.socket.recv(timeout=max(0.01, deadline - time.time())))
            self._note(event)
            if event.get("method") == "Page.loadEventFired":
                return

    def evaluate(self, expression, timeout=30):
        """The value of `expression` in the page (a promise is awaited)."""
        result = self.call("Runtime.evaluate", timeout=timeout, expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression, timeout=15):
        """Waits until `expression` is truthy in the page and returns its value."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expression!r} in the page; errors: {self.errors}")

    def close(self):
        try:
            self._connection.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.log.close()
            shutil.rmtree(self.profile, ignore_errors=True)
