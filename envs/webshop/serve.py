"""The WebShop engine as a small local web site, for a person to shop with a browser.

Run ``python -m torchrl_gagpo.envs.webshop.serve`` and open the printed URL.
Each visitor session has its own :class:`~torchrl_gagpo.envs.webshop.engine.WebShopEngine`
over one shared :class:`~torchrl_gagpo.envs.webshop.data.WebShopData`; every
click is one engine command, so the site plays exactly like the text
environment, and its pages read back (:func:`~torchrl_gagpo.envs.webshop.html.html_to_text`)
as the environment's observations.

URLs (``<sid>`` is a random 32-hex-digit session id):

- ``GET /`` or ``GET /?goal=N``: a new session (goal ``N``, the server's ``--goal``,
  or a goal drawn by weight as the original does), redirected to ``/s/<sid>``.
- ``GET /s/<sid>``: the session's current page.
- ``POST /s/<sid>/act`` with form field ``cmd`` (``click[...]``/``search[...]``) or
  ``search_query`` (the search box), or ``GET /s/<sid>/act?cmd=...`` (product links,
  option radios): one engine command, then a redirect to ``/s/<sid>``.

Requests are only parsed as parameters; commands are checked by the engine
(one the page does not offer is a 400 with a message, an unknown session a 404,
never a traceback). The server binds 127.0.0.1 unless told otherwise.

Example (in a thread, on a free port):
    >>> import threading
    >>> from torchrl_gagpo.envs.webshop.data import WebShopData
    >>> server = make_server(WebShopData.load(), port=0)  # doctest: +SKIP
    >>> threading.Thread(target=server.serve_forever, daemon=True).start()  # doctest: +SKIP
    >>> server.url  # doctest: +SKIP
    'http://127.0.0.1:41235/'
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import re
import secrets
import sys
import threading
import traceback
from collections import OrderedDict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from .engine import WebShopEngine
from .html import OPTION_SCRIPT_CSP, render_error_page, render_html

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "WebShopSite", "main", "make_server"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3000
MAX_BODY_BYTES = 64 * 1024
MAX_COMMAND_CHARS = 1000
_SESSION_PATH = re.compile(r"/s/([0-9a-f]{32})(/act)?")
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        f"default-src 'none'; script-src {OPTION_SCRIPT_CSP}; style-src 'unsafe-inline'; img-src data:; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
}


class RequestError(ValueError):
    """A request the site refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: HTTPStatus, message: str, *, back_url: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.back_url = back_url


class WebShopSite:
    """The site's sessions: one engine each, over shared data; no HTTP in here.

    Args:
        data: the loaded :class:`~torchrl_gagpo.envs.webshop.data.WebShopData`.
        goal (int, optional): every new session gets this goal (else ``?goal=N`` or a weighted draw).
        show_attrs (bool): item pages offer the Attributes sub-page.
        max_sessions (int): the least recently used session is dropped beyond this many.

    Example:
        >>> site = WebShopSite(WebShopData.load(), goal=0)  # doctest: +SKIP
        >>> sid = site.new_session()  # doctest: +SKIP
        >>> site.act(sid, "search[red mug]").page.kind  # doctest: +SKIP
        'results'
    """

    def __init__(self, data, *, goal: int | None = None, show_attrs: bool = False, max_sessions: int = 1000):
        if not data.goals:
            raise ValueError(f"the data at {data.source} has no goals to shop for.")
        self.data = data
        self.show_attrs = show_attrs
        self.max_sessions = int(max_sessions)
        self.default_goal = None if goal is None else self._check_goal(goal)
        self._sessions: OrderedDict[str, WebShopEngine] = OrderedDict()
        self._lock = threading.Lock()  # engines are not thread-safe; a person's site needs no parallel steps
        self._draw = random.SystemRandom()  # a visitor's goal is meant to be unpredictable

    def _check_goal(self, goal) -> int:
        try:
            index = int(goal)
        except (TypeError, ValueError):
            raise RequestError(
                HTTPStatus.BAD_REQUEST, f"goal must be a whole number, got {goal!r}."
            ) from None
        if not 0 <= index < len(self.data.goals):
            raise RequestError(
                HTTPStatus.BAD_REQUEST,
                f"goal {index} is out of range: there are {len(self.data.goals)} goals.",
            )
        return index

    def new_session(self, goal=None) -> str:
        """Start a session on the start page of ``goal`` (see the class doc); returns its id."""
        if goal is not None:
            index = self._check_goal(goal)
        elif self.default_goal is not None:
            index = self.default_goal
        else:
            weights = [g.get("weight", 1) for g in self.data.goals]
            index = self._draw.choices(range(len(self.data.goals)), weights=weights)[0]
        session_id = secrets.token_hex(16)
        engine = WebShopEngine(self.data, show_attrs=self.show_attrs)
        engine.reset(index, session=session_id)
        with self._lock:
            self._sessions[session_id] = engine
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return session_id

    def _engine(self, session_id: str) -> WebShopEngine:
        engine = self._sessions.get(session_id)
        if engine is None:
            raise RequestError(
                HTTPStatus.NOT_FOUND, "no such session (it may have expired): start a new one."
            )
        self._sessions.move_to_end(session_id)
        return engine

    def page(self, session_id: str):
        """The session's current :class:`~torchrl_gagpo.envs.webshop.pages.Page`."""
        with self._lock:
            return self._engine(session_id).page

    def act(self, session_id: str, command: str):
        """Apply one command; a command the current page does not offer is a :class:`RequestError`."""
        if len(command) > MAX_COMMAND_CHARS:
            raise RequestError(
                HTTPStatus.BAD_REQUEST, f"the command is longer than {MAX_COMMAND_CHARS} characters."
            )
        back_url = f"/s/{session_id}"
        with self._lock:
            engine = self._engine(session_id)
            if engine.page.kind == "done":
                raise RequestError(
                    HTTPStatus.BAD_REQUEST,
                    "this session has ended with a purchase: start a new one.",
                    back_url=back_url,
                )
            if not engine.is_valid(command):
                offered = ", ".join(
                    (["search[...]"] if engine.available_actions()["has_search_bar"] else [])
                    + [
                        f"click[{name}]"
                        for name in engine.available_actions()["clickables"]
                        if name != "search"
                    ]
                )
                raise RequestError(
                    HTTPStatus.BAD_REQUEST,
                    f"{command!r} is not an action of the current page; it offers: {offered}.",
                    back_url=back_url,
                )
            return engine.step(command)


def _form_command(fields: dict[str, list[str]]) -> str:
    """The engine command of a request's fields: ``cmd`` as is, or ``search_query`` as ``search[...]``."""
    unknown = sorted(set(fields) - {"cmd", "search_query"})
    if unknown:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"unknown fields {unknown}: send 'cmd' or 'search_query'.")
    if len(fields) != 1 or any(len(values) != 1 for values in fields.values()):
        raise RequestError(HTTPStatus.BAD_REQUEST, "send exactly one 'cmd' or one 'search_query'.")
    if "cmd" in fields:
        return fields["cmd"][0]
    return f"search[{fields['search_query'][0]}]"


def _parse_fields(text: str) -> dict[str, list[str]]:
    try:
        return parse_qs(text, keep_blank_values=True, strict_parsing=False, errors="strict", max_num_fields=8)
    except (ValueError, UnicodeDecodeError) as error:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"malformed parameters: {error}.") from None


class _Handler(BaseHTTPRequestHandler):
    server_version = "WebShop"
    protocol_version = "HTTP/1.1"

    def version_string(self) -> str:
        return self.server_version  # no Python version in the Server header

    @property
    def site(self) -> WebShopSite:
        return self.server.site

    def log_message(self, format, *args) -> None:  # the base class's signature
        if self.server.log_requests:
            super().log_message(format, *args)

    def do_GET(self) -> None:  # http.server's method naming
        self._answer(lambda parts: self._route(parts, parts.query))

    def do_POST(self) -> None:
        self._answer(lambda parts: self._route(parts, self._read_form()))

    def _answer(self, route) -> None:
        try:
            self._check_host()
            route(urlsplit(self.path))
        except RequestError as error:
            self.close_connection = True  # an unread body must not be taken for the next request
            self._send_error_page(error.status, str(error), back_url=error.back_url)
        except Exception:  # a bug: tell the person briefly, keep the traceback for the console
            traceback.print_exc(file=sys.stderr)
            self.close_connection = True
            self._send_error_page(HTTPStatus.INTERNAL_SERVER_ERROR, "the server failed on this request.")

    def _check_host(self) -> None:
        """On a loopback address only loopback host names are served (no DNS rebinding)."""
        if not self.server.loopback_only:
            return
        host = urlsplit(f"//{self.headers.get('Host', '')}").hostname or ""
        if host not in _LOOPBACK_NAMES:
            raise RequestError(HTTPStatus.BAD_REQUEST, "this site answers only to localhost / 127.0.0.1.")

    def _read_form(self) -> str:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise RequestError(HTTPStatus.BAD_REQUEST, "the Content-Length header is not a number.") from None
        if not 0 <= length <= MAX_BODY_BYTES:
            self.close_connection = True
            raise RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the form is over {MAX_BODY_BYTES} bytes."
            )
        kind = self.headers.get("Content-Type", "application/x-www-form-urlencoded").split(";")[0].strip()
        body = self.rfile.read(length)
        if kind != "application/x-www-form-urlencoded":
            raise RequestError(
                HTTPStatus.BAD_REQUEST, f"expected a form (application/x-www-form-urlencoded), got {kind!r}."
            )
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(HTTPStatus.BAD_REQUEST, "the form is not UTF-8.") from None

    def _route(self, parts, fields_text: str) -> None:
        if parts.path == "/" and self.command == "GET":
            fields = _parse_fields(parts.query)
            if set(fields) - {"goal"} or any(len(v) != 1 for v in fields.values()):
                raise RequestError(HTTPStatus.BAD_REQUEST, "the start URL takes only '?goal=N'.")
            session_id = self.site.new_session(fields["goal"][0] if fields else None)
            return self._redirect(f"/s/{session_id}")
        match = _SESSION_PATH.fullmatch(parts.path)
        if match is None:
            raise RequestError(HTTPStatus.NOT_FOUND, "no such page.")
        session_id, act = match.group(1), match.group(2)
        if act is None:
            if self.command != "GET":
                raise RequestError(
                    HTTPStatus.METHOD_NOT_ALLOWED, "pages are read with GET; actions go to .../act."
                )
            page = self.site.page(session_id)
            return self._send_html(HTTPStatus.OK, render_html(page, session_id=session_id))
        self.site.act(session_id, _form_command(_parse_fields(fields_text)))
        self._redirect(f"/s/{session_id}")

    def _redirect(self, location: str) -> None:
        self.send_response(HTTPStatus.SEE_OTHER)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        for name, value in _HEADERS.items():
            self.send_header(name, value)
        self.end_headers()

    def _send_error_page(self, status: HTTPStatus, message: str, *, back_url: str = "") -> None:
        self._send_html(status, render_error_page(status.value, status.phrase, message, back_url=back_url))

    def _send_html(self, status: HTTPStatus, html: str) -> None:
        body = html.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for name, value in _HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class WebShopServer(ThreadingHTTPServer):
    """A threading HTTP server holding a :class:`WebShopSite`; ``url`` is where to point a browser."""

    daemon_threads = True

    def __init__(self, site: WebShopSite, host: str, port: int, *, log_requests: bool = False) -> None:
        self.site = site
        self.log_requests = log_requests
        self.loopback_only = _is_loopback(host)
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def make_server(
    data,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    goal: int | None = None,
    show_attrs: bool = False,
    log_requests: bool = False,
) -> WebShopServer:
    """A bound site server, not yet serving (``port=0``: a free port); run ``serve_forever()`` in a thread."""
    return WebShopServer(
        WebShopSite(data, goal=goal, show_attrs=show_attrs), host, port, log_requests=log_requests
    )


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m torchrl_gagpo.envs.webshop.serve",
        description="Shop in the WebShop engine with a browser (a local site; no authentication).",
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port to listen on (default %(default)s)"
    )
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help="address to bind (default %(default)s: this machine only)"
    )
    parser.add_argument(
        "--data", default=None, help="data folder (default: $WEBSHOP_DATA, else the shipped set)"
    )
    goals = parser.add_mutually_exclusive_group()
    goals.add_argument(
        "--human-goals",
        dest="human_goals",
        action="store_true",
        default=True,
        help="goals from human instructions (default)",
    )
    goals.add_argument(
        "--synthetic-goals",
        dest="human_goals",
        action="store_false",
        help="goals from synthetic instructions, one per option combination",
    )
    parser.add_argument("--goal", type=int, default=None, help="every new session gets this goal index")
    parser.add_argument("--show-attrs", action="store_true", help="item pages offer the Attributes sub-page")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    from .data import WebShopData

    args = _parse_args(argv)
    data = WebShopData.load(args.data, human_goals=args.human_goals)
    server = make_server(
        data, args.host, args.port, goal=args.goal, show_attrs=args.show_attrs, log_requests=True
    )
    if not server.loopback_only:
        print(f"warning: serving on {args.host}, reachable from other machines, with no authentication.")
    print(f"WebShop: {len(data.goals)} goals, {len(data.products)} products from {data.source}")
    print(f"Open {server.url} in a browser (Ctrl-C stops).", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
