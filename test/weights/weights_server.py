"""A loopback HTTP server for the weights tests (http.server in a thread, bound to 127.0.0.1) that
serves generated files with Range / If-Range, can cut a transfer in the middle, redirect with
Hugging Face's sha256 header, or announce a huge file; and small helpers writing model YAMLs and
sources tables."""

from __future__ import annotations

import hashlib
import random
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional

import yaml

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class WeightServer:
    """Files by URL path; what each request asked for is in ``requests`` as (path, Range, If-Range)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.headers: dict[str, dict[str, str]] = {}  # extra response headers by path
        self.cut: dict[str, int] = {}  # path -> bytes of body sent before the connection is dropped (once)
        self.redirects: dict[str, tuple[str, dict[str, str]]] = {}  # path -> (location, headers of the 302)
        self.announce: dict[str, int] = {}  # path -> Content-Length claimed (nothing sent)
        self.requests: list[tuple[str, Optional[str], Optional[str]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                path = self.path
                server.requests.append((path, self.headers.get("Range"), self.headers.get("If-Range")))
                if path in server.redirects:
                    location, extra = server.redirects[path]
                    self.send_response(302)
                    self.send_header("Location", location)
                    for k, v in extra.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if path in server.announce:
                    self.send_response(200)
                    self.send_header("Content-Length", str(server.announce[path]))
                    self.end_headers()
                    self.close_connection = True
                    return
                if path not in server.files:
                    self.send_error(404)
                    return
                data = server.files[path]
                etag = '"' + sha256(data)[:16] + '"'
                start = 0
                ranged = self.headers.get("Range")
                if_range = self.headers.get("If-Range")
                if ranged and (if_range is None or if_range == etag):
                    start = int(ranged.split("=", 1)[1].split("-", 1)[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", etag)
                for k, v in server.headers.get(path, {}).items():
                    self.send_header(k, v)
                self.end_headers()
                cut = server.cut.pop(path, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="weights-test-http", daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return self.base + path

    def gets(self, path: str) -> list[tuple[Optional[str], Optional[str]]]:
        """(Range, If-Range) of every GET of ``path``."""
        return [(r, i) for p, r, i in self.requests if p == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_model_yaml(path: Path, weights: dict[str, Path]) -> Path:
    """A tiny-preset model YAML naming ``weights`` ({YAML key: path})."""
    path.write_text(yaml.safe_dump({"model": {"preset": "tiny", **{k: str(v) for k, v in weights.items()}},
                                    "predictor": {"text_cache_dir": None}}))
    return path


def write_sources(path: Path, files: dict[str, dict]) -> Path:
    path.write_text(yaml.safe_dump({"files": files}))
    return path
