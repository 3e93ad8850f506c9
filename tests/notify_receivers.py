"""Real receivers for notification tests: an SMTP server (aiosmtpd) and an HTTP webhook
receiver on loopback, each keeping what it got."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller

from tests.servers import free_port

# Receivers listen on loopback: the server reaches them only where the operator says so
# (the outbound guard refuses every non-public address otherwise, in every environment).
LOOPBACK_RECEIVERS = {"AUXEN_OUTBOUND_ALLOW_NETWORKS": "127.0.0.1/32"}


@dataclass
class Mail:
    to: list[str]
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def text(self) -> str:
        body = self.message.get_body(preferencelist=("plain",))
        assert body is not None
        return str(body.get_content())


class Inbox:
    """A real SMTP server on loopback (aiosmtpd) that keeps every message."""

    def __init__(self) -> None:
        self.mails: list[Mail] = []
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.mails.append(Mail(list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"

    def start(self) -> Inbox:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def env(self) -> dict[str, str]:
        return {
            "AUXEN_SMTP_HOST": "127.0.0.1",
            "AUXEN_SMTP_PORT": str(self.port),
            "AUXEN_SMTP_STARTTLS": "false",
            "AUXEN_SMTP_FROM": "Auxen <notify@auxen.test>",
        }

    def to(self, address: str) -> list[Mail]:
        return [m for m in self.mails if address in m.to]

    def wait_for(self, check: Callable[[], bool], timeout: float = 15) -> None:
        wait_until(check, timeout)


@dataclass
class Post:
    body: bytes
    headers: dict[str, str]
    status: int
    at: float


class WebhookReceiver:
    """A real HTTP server on loopback; answers 500 to the first `fail_next` posts."""

    def __init__(self) -> None:
        self.posts: list[Post] = []
        self.fail_next = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = 204
                if outer.fail_next > 0:
                    outer.fail_next -= 1
                    status = 500
                outer.posts.append(
                    Post(body, {k.lower(): v for k, v in self.headers.items()}, status, time.time())
                )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/hooks/auxen"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def accepted(self) -> list[Post]:
        return [p for p in self.posts if p.status < 300]


def verify_signature(post: Post, secret: str, tolerance_s: float = 300) -> None:
    """What a receiver does: HMAC-SHA256 of "t.body" under the secret, t recent."""
    parts = dict(p.split("=", 1) for p in post.headers["auxen-signature"].split(","))
    t = int(parts["t"])
    expected = hmac.new(secret.encode(), f"{t}.".encode() + post.body, hashlib.sha256)
    assert hmac.compare_digest(parts["v1"], expected.hexdigest())
    assert abs(time.time() - t) < tolerance_s


def wait_until(check: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.1)
