"""Headless Chromium for the tests of what a person looks at (Debian's `chromium` package; .ci/run
installs it where the tests run). `render` loads a local page the way a browser user opens it,
takes a screenshot, dumps the DOM after rendering, and records every request the page makes to
the network: Chromium is pointed at a local proxy that answers nothing and counts what it is asked
for, including https (CONNECT) and loopback addresses. Chromium asks for its own services too
(component updates, time, accounts) whatever the page; `page_requests` leaves out the hosts it asks
for when it opens an empty page, so what remains was asked for by the page."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BINARIES = ("chromium", "chromium-browser")


def binary() -> str | None:
    return next((b for b in map(shutil.which, BINARIES) if b), None)


class _Recorder(BaseHTTPRequestHandler):
    def _refuse(self):
        self.server.requests.append(f"{self.command} {self.path}")
        self.send_error(502, "the test proxy answers nothing")

    do_GET = do_POST = do_HEAD = do_CONNECT = do_PUT = do_OPTIONS = _refuse

    def log_message(self, *args):
        pass


def render(page: str, workdir: str, width: int = 1200, height: int = 2400) -> tuple[bytes, str, list[str]]:
    """(screenshot PNG bytes, the rendered DOM, the network requests made) of a local HTML file."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.requests = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    flags = [binary(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-default-apps", "--disable-extensions", f"--user-data-dir={workdir}/profile",
             f"--proxy-server=http://127.0.0.1:{server.server_address[1]}", "--proxy-bypass-list=<-loopback>",
             f"--window-size={width},{height}", "--virtual-time-budget=3000"]
    try:
        shot = f"{workdir}/screenshot.png"
        subprocess.run(flags + [f"--screenshot={shot}", f"file://{page}"], capture_output=True, timeout=120, check=True)
        dom = subprocess.run(flags + ["--dump-dom", f"file://{page}"], capture_output=True, text=True, timeout=120,
                             check=True).stdout
        with open(shot, "rb") as f:
            return f.read(), dom, list(server.requests)
    finally:
        server.shutdown()


def _host(request: str) -> str:
    target = request.split(" ", 1)[1]
    return re.sub(r"^[a-z]+://", "", target).split("/", 1)[0].split(":", 1)[0]


def page_requests(page: str, workdir: str) -> list[str]:
    """The requests `page` made beyond those Chromium makes for an empty page."""
    blank = os.path.join(workdir, "blank.html")
    with open(blank, "w") as f:
        f.write("<!doctype html><title>blank</title>")
    os.makedirs(os.path.join(workdir, "blank"), exist_ok=True)
    own = {_host(r) for r in render(blank, os.path.join(workdir, "blank"))[2]}
    return [r for r in render(page, workdir)[2] if _host(r) not in own]
