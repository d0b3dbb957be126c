"""Headless Chromium driven over the DevTools protocol (websocket-client)."""
import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request

import websocket

from conftest import free_port, wait_for


def chromium_binary():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError("no chromium: apt-get install chromium")


class Browser:
    def __init__(self, url, window=(2400, 1400)):
        self.profile = tempfile.mkdtemp(prefix="umdev-chromium-")
        port = free_port()
        self.process = subprocess.Popen(
            [chromium_binary(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-dev-shm-usage", f"--remote-debugging-port={port}", f"--user-data-dir={self.profile}",
             f"--window-size={window[0]},{window[1]}", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.page = None

        def page_ready():
            try:
                pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2))
            except OSError:
                return False
            pages = [p for p in pages if p.get("type") == "page" and p.get("url", "").startswith(url)]
            if pages:
                self.page = pages[0]["webSocketDebuggerUrl"]
            return bool(pages)
        wait_for(page_ready, timeout=60, step=0.2, what="chromium's page")
        self.ws = websocket.create_connection(self.page, timeout=30, suppress_origin=True)
        self.next_id = 0

    def evaluate(self, expression):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": "Runtime.evaluate",
                                 "params": {"expression": expression, "returnByValue": True, "awaitPromise": True}}))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self.next_id:
                result = reply["result"]
                if "exceptionDetails" in result:
                    raise AssertionError(result["exceptionDetails"])
                return result["result"].get("value")

    def canvas_png(self, index):
        """Canvas `index` as PNG bytes, once its pending drawing is done."""
        url = self.evaluate(f"(async () => {{ const c = document.querySelectorAll('canvas')[{index}];"
                            f" await new Promise(r => setTimeout(r, 50)); return c.toDataURL('image/png'); }})()")
        return base64.b64decode(url.split(",", 1)[1])

    def close(self):
        try:
            self.ws.close()
        except Exception:
            pass
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.profile, ignore_errors=True)
