"""A real HTTP server on 127.0.0.1 for download tests, with misbehaviours chosen by the URL path.

/ok/NAME          the file, honouring Range requests
/cut/NAME         the first response stops half way (connection dropped), later ones honour Range
/norange/NAME     ignores Range: always the whole file with 200
/nolength/NAME    no Content-Length (the body ends when the connection closes)
/slow/NAME        the file in small, delayed chunks (to overlap two clients)
/bad/NAME         wrong bytes of the right length
/404/NAME, /500/NAME
"""

import http.server
import re
import threading
import time
from pathlib import Path


class FileServer:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.requests = []  # (path, Range header or None)
        self._cut_done = set()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                mode, _, name = self.path.lstrip("/").partition("/")
                if mode in ("404", "500"):
                    self.send_response(int(mode))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path = server.root / name
                if not path.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = path.read_bytes()
                if mode == "bad":
                    data = bytes(len(data))
                start = 0
                match = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
                if match and mode not in ("norange",):
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                if mode == "nolength":
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(body)
                    self.close_connection = True
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode == "cut" and name not in server._cut_done:
                    server._cut_done.add(name)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if mode == "slow":
                    for i in range(0, len(body), 4096):
                        self.wfile.write(body[i : i + 4096])
                        time.sleep(0.01)
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def gets(self, fragment: str = "") -> list:
        return [r for r in self.requests if fragment in r[0]]
