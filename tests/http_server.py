"""A real HTTP server on 127.0.0.1 for download tests, misbehaving the way real file hosts do; the fault is
chosen by the first part of the URL path:

/ok/NAME            the file, honouring Range and If-Range (ETag "v1")
/cut/NAME           the first response drops the connection half way, later ones honour Range
/norange/NAME       ignores Range: always the whole file with 200
/nolength/NAME      no Content-Length (the body ends when the connection closes)
/overstate/NAME     Content-Length 100 bytes more than it sends, then closes (ranges past the end: 416)
/slow/NAME          the file in delayed chunks (about a second for the fixture checkpoint)
/gate/NAME          the file once the test opens `server.gate` (to overlap two clients for sure)
/stall/NAME         the first response sends half, then stops sending (a read timeout), later ones honour Range
/bad/NAME           wrong bytes of the right length
/html/NAME          a dead host's page: status 200, "Link does not exist", Content-Type text/html
/disguised/NAME     the same page with Content-Type application/octet-stream
/moved/NAME         302 to /html/NAME (a login or "file gone" page after a redirect)
/redirect/NAME      302 to /ok/NAME
/404/NAME, /500/NAME
/any/other/path     the file root/any/other/path, as /ok/ serves it (a Hub-like layout)
"""

import http.server
import re
import threading
import time
from pathlib import Path

MODES = {"ok", "cut", "norange", "nolength", "overstate", "slow", "gate", "stall", "bad"}
MODES |= {"html", "disguised", "moved", "redirect", "404", "500"}
DEAD_LINK_PAGE = b"<!DOCTYPE html>\n<html><head><title>Error</title></head><body>Link does not exist.</body></html>\n"
STALL_SECONDS = 1.0  # how long /stall/ keeps the connection silent before closing it (the client gives up first)


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """A client that hangs up early (a test that stopped reading) is expected, not an error to print."""


class FileServer:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.requests = []  # (path, Range header or None)
        self.headers = []  # the request headers, in order
        self._first_done = set()  # (mode, name) whose first response has misbehaved
        self.gate = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                server.headers.append(dict(self.headers))
                mode, _, name = self.path.lstrip("/").partition("/")
                if mode not in MODES:
                    mode, name = "ok", self.path.lstrip("/")
                if mode in ("404", "500"):
                    return self._empty(int(mode))
                if mode in ("moved", "redirect"):
                    return self._redirect(f"/{'html' if mode == 'moved' else 'ok'}/{name}")
                if mode in ("html", "disguised"):
                    kind = "text/html; charset=utf-8" if mode == "html" else "application/octet-stream"
                    return self._send(200, DEAD_LINK_PAGE, {"Content-Type": kind})
                path = server.root / name
                if not path.is_file():
                    return self._empty(404)
                data = path.read_bytes()
                if mode == "bad":
                    data = bytes(len(data))
                start = self._range_start(mode, len(data))
                if start is None:
                    return self._empty(416)
                headers = {"ETag": '"v1"', "Content-Type": "application/octet-stream"}
                if start:
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                body = data[start:]
                first = (mode, name) not in server._first_done
                server._first_done.add((mode, name))
                if mode == "nolength":
                    return self._send(206 if start else 200, body, {**headers, "Connection": "close"}, length=None)
                if mode == "overstate":
                    return self._send(206 if start else 200, body, headers, length=len(body) + 100)
                if mode in ("cut", "stall") and first:
                    return self._send(
                        206 if start else 200, body[: len(body) // 2], headers, len(body), stall=mode == "stall"
                    )
                if mode == "gate":
                    server.gate.wait(30)
                self._send(206 if start else 200, body, headers, chunk_delay=0.02 if mode == "slow" else 0)

            def _range_start(self, mode, size):
                """Where the body starts: 0 without a usable Range (or when If-Range names another version),
                None when the range starts past the end."""
                match = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
                if not match or mode == "norange":
                    return 0
                if self.headers.get("If-Range") not in (None, '"v1"'):
                    return 0
                start = int(match.group(1))
                return None if start >= size else start

            def _empty(self, status):
                self._send(status, b"", {})

            def _redirect(self, location):
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _send(self, status, body, headers, length=-1, chunk_delay=0.0, stall=False):
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                if length is not None:
                    self.send_header("Content-Length", str(len(body) if length == -1 else length))
                self.end_headers()
                step = 1 << 16 if chunk_delay else max(len(body), 1)
                for i in range(0, len(body), step):
                    self.wfile.write(body[i : i + step])
                    time.sleep(chunk_delay)
                if length is None or (length != -1 and length != len(body)):  # the body ends short: close
                    self.wfile.flush()
                    if stall:
                        time.sleep(STALL_SECONDS)
                    self.close_connection = True
                    self.connection.shutdown(2)

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def gets(self, fragment: str = "") -> list:
        return [r for r in self.requests if fragment in r[0]]
