"""A fault-injecting HTTP proxy on loopback, put in front of fake-gcs-server.

Each request draws one fate from a seeded generator: dropped before it reaches the server,
answered 429 or 503 by the proxy, forwarded but its reply dropped (the server did the work,
the client never hears of it), forwarded and answered slowly, or forwarded untouched.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import http.server
import random
import threading
import time
import urllib.parse

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer"}


class FaultProxy:
    """``FaultProxy(upstream_url, drop=…, error=…, drop_reply=…, slow=…)``; rates are shares
    of requests. ``counts`` tallies every fate; ``faults`` is the number of injected faults."""

    def __init__(
        self,
        upstream: str,
        *,
        drop: float = 0.0,
        error: float = 0.0,
        drop_reply: float = 0.0,
        slow: float = 0.0,
        delay_s: float = 0.3,
        seed: int = 0,
    ) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.rates = {"drop": drop, "error": error, "drop_reply": drop_reply, "slow": slow}
        self.delay_s = delay_s
        self.counts: collections.Counter[str] = collections.Counter()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def faults(self) -> int:
        return sum(self.counts[k] for k in ("drop", "429", "503", "drop_reply", "slow"))

    def reseed(self, seed: int) -> None:
        with self._lock:
            self._random.seed(seed)

    def set_rates(self, **rates: float) -> None:
        with self._lock:
            self.rates.update(rates)

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _fate(self) -> str:
        with self._lock:
            self.counts["requests"] += 1
            draw = self._random.random()
            for fate, rate in self.rates.items():
                if draw < rate:
                    if fate == "error":
                        fate = self._random.choice(("429", "503"))
                    self.counts[fate] += 1
                    return fate
                draw -= rate
            return "pass"


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # clients that give up on a dropped or slow request reset their connection


def _handler(proxy: FaultProxy):
    upstream_base = f"{proxy.upstream.scheme}://{proxy.upstream.netloc}"

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _forward(self) -> None:
            body = self._body()
            fate = proxy._fate()
            if fate == "drop":
                self.close_connection = True
                return
            if fate in ("429", "503"):
                message = b'{"error": {"code": %s, "message": "injected by the fault proxy"}}'
                json_type = [("Content-Type", "application/json")]
                self._reply(int(fate), json_type, message % fate.encode())
                return
            connection = http.client.HTTPConnection(proxy.upstream.netloc, timeout=120)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            try:
                # The server may answer (404, say) and close before it has read a large body.
                with contextlib.suppress(OSError):
                    connection.request(self.command, self.path, body=body or None, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                reply_headers = [
                    (k, v.replace(upstream_base, proxy.url) if k.lower() == "location" else v)
                    for k, v in response.getheaders()
                    if k.lower() not in HOP_BY_HOP
                ]
            except (OSError, http.client.HTTPException):
                self._reply(502, [], b"bad gateway: the upstream server failed")
                return
            finally:
                connection.close()
            if fate == "drop_reply":
                self.close_connection = True
                return
            if fate == "slow":
                time.sleep(proxy.delay_s)
            self._reply(response.status, reply_headers, payload)

        def _reply(self, status: int, headers, payload: bytes) -> None:
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward

    return Handler
