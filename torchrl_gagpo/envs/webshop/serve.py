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
another HTTP method a 405 with ``Allow``, never a traceback). The server binds
127.0.0.1 unless told otherwise. Its resources are bounded whatever a client does:
at most ``max_threads`` connections are served at once (one more gets a 503 at
once), a connection silent for ``idle_timeout`` seconds is closed, sessions
(``max_sessions``), cached searches (``search_cache_size``, shared by every session)
and bodies (64 KiB) are capped.

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
import functools
import ipaddress
import random
import re
import secrets
import socket
import sys
import threading
import traceback
from collections import OrderedDict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from .engine import WebShopEngine, search_asins
from .html import OPTION_SCRIPT_CSP, render_error_page, render_html

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "WebShopServer", "WebShopSite", "main", "make_server"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3000
MAX_BODY_BYTES = 64 * 1024
MAX_COMMAND_CHARS = 1000
#: Connections served at once (a browser opens about 6); one more gets a 503 at once.
DEFAULT_MAX_THREADS = 32
#: Seconds a connection may stay silent (between or inside requests) before it is closed.
DEFAULT_IDLE_TIMEOUT = 30.0
#: Searches cached for the whole site (about 1.4 KiB each), shared by every session.
DEFAULT_SEARCH_CACHE = 4096
_BUSY_BODY = b"the shop is busy: try again in a moment.\n"
_BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)
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

    def __init__(self, status: HTTPStatus, message: str, *, back_url: str = "", allow: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.back_url = back_url
        self.allow = allow


def _method_not_allowed(allow: str, what: str) -> RequestError:
    return RequestError(HTTPStatus.METHOD_NOT_ALLOWED, f"{what} answers only {allow}.", allow=allow)


class WebShopSite:
    """The site's sessions: one engine each, over shared data; no HTTP in here.

    Args:
        data: the loaded :class:`~torchrl_gagpo.envs.webshop.data.WebShopData`.
        goal (int, optional): every new session gets this goal (else ``?goal=N`` or a weighted draw).
        show_attrs (bool): item pages offer the Attributes sub-page.
        max_sessions (int): the least recently used session is dropped beyond this many.
        search_cache_size (int): searches cached for the whole site, shared by every session.

    Example:
        >>> site = WebShopSite(WebShopData.load(), goal=0)  # doctest: +SKIP
        >>> sid = site.new_session()  # doctest: +SKIP
        >>> site.act(sid, "search[red mug]").page.kind  # doctest: +SKIP
        'results'
    """

    def __init__(
        self, data, *, goal: int | None = None, show_attrs: bool = False, max_sessions: int = 1000,
        search_cache_size: int = DEFAULT_SEARCH_CACHE,
    ) -> None:  # fmt: skip
        if not data.goals:
            raise ValueError(f"the data at {data.source} has no goals to shop for.")
        self.data = data
        self.show_attrs = show_attrs
        self.max_sessions = int(max_sessions)
        # one bounded cache for every session: per-session caches grew with the number of sessions
        self._search = functools.lru_cache(maxsize=search_cache_size)(functools.partial(search_asins, data))
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
        engine = WebShopEngine(self.data, show_attrs=self.show_attrs, search=self._search)
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

    def setup(self) -> None:
        self.timeout = self.server.idle_timeout  # a silent connection is closed (socket timeout)
        super().setup()

    def __getattr__(self, name: str):
        # http.server answers a method without a do_<METHOD> with 501 and its own page; every
        # method but GET and POST gets the site's 405 with Allow instead
        if name.startswith("do_"):
            return self._do_other
        raise AttributeError(name)

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

    def _do_other(self) -> None:
        self._answer(lambda parts: self._route(parts, ""))

    def _answer(self, route) -> None:
        try:
            self._check_host()
            route(urlsplit(self.path))
        except RequestError as error:
            self.close_connection = True  # an unread body must not be taken for the next request
            self._send_error_page(error.status, str(error), back_url=error.back_url, allow=error.allow)
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
        if parts.path == "/":
            if self.command != "GET":
                raise _method_not_allowed("GET", "the start URL")
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
                raise _method_not_allowed("GET", "a page (read with GET; actions go to .../act)")
            page = self.site.page(session_id)
            return self._send_html(HTTPStatus.OK, render_html(page, session_id=session_id))
        if self.command not in ("GET", "POST"):
            raise _method_not_allowed("GET, POST", "an action URL")
        self.site.act(session_id, _form_command(_parse_fields(fields_text)))
        self._redirect(f"/s/{session_id}")

    def _redirect(self, location: str) -> None:
        self.send_response(HTTPStatus.SEE_OTHER)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        for name, value in _HEADERS.items():
            self.send_header(name, value)
        self.end_headers()

    def _send_error_page(
        self, status: HTTPStatus, message: str, *, back_url: str = "", allow: str = ""
    ) -> None:
        page = render_error_page(status.value, status.phrase, message, back_url=back_url)
        self._send_html(status, page, extra_headers={"Allow": allow} if allow else {})

    def _send_html(self, status: HTTPStatus, html: str, *, extra_headers: dict | None = None) -> None:
        body = html.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for name, value in {**_HEADERS, **(extra_headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":  # a HEAD response has no body
            self.wfile.write(body)


class WebShopServer(ThreadingHTTPServer):
    """A threading HTTP server holding a :class:`WebShopSite`; ``url`` is where to point a browser.

    Binds on construction (a bad host or a busy port raises ``OSError`` there); ``site`` may be
    attached afterwards, before serving. At most ``max_threads`` connections are served at once:
    one more is answered 503 with ``Retry-After`` and closed, without a thread. A connection
    silent for ``idle_timeout`` seconds is closed.
    """

    daemon_threads = True
    request_queue_size = 64  # listen backlog (socketserver's 5 makes a burst of clients wait 1 s)

    def __init__(
        self, site: WebShopSite | None, host: str, port: int, *, log_requests: bool = False,
        max_threads: int = DEFAULT_MAX_THREADS, idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:  # fmt: skip
        if max_threads < 1 or not idle_timeout > 0:
            raise ValueError(f"need max_threads >= 1, idle_timeout > 0; got {max_threads}, {idle_timeout}.")
        self.site = site
        self.log_requests = log_requests
        self.loopback_only = _is_loopback(host)
        self.idle_timeout = float(idle_timeout)
        self._slots = threading.BoundedSemaphore(max_threads)
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _Handler)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse_busy(request)
            return
        try:
            super().process_request(request, client_address)  # a thread that releases the slot
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse_busy(self, request) -> None:
        """503 on the accepting thread: a few bytes out, what already arrived drained, then closed."""
        try:
            request.settimeout(0.05)
            request.sendall(_BUSY_RESPONSE)
            request.shutdown(socket.SHUT_WR)
            request.recv(MAX_BODY_BYTES)  # read what was sent, so that closing does not reset it
        except OSError:
            pass
        finally:
            self.shutdown_request(request)

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
    max_threads: int = DEFAULT_MAX_THREADS,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
) -> WebShopServer:
    """A bound site server, not yet serving (``port=0``: a free port); run ``serve_forever()`` in a thread."""
    return WebShopServer(
        WebShopSite(data, goal=goal, show_attrs=show_attrs), host, port, log_requests=log_requests,
        max_threads=max_threads, idle_timeout=idle_timeout,
    )


def _whole_number(name: str, low: int, high: int | None = None):
    """An argparse ``type`` accepting whole numbers in ``[low, high]`` and naming ``name`` otherwise."""
    allowed = f"in {low}..{high}" if high is not None else f">= {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{name} must be a whole number {allowed}, got {text!r}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m torchrl_gagpo.envs.webshop.serve",
        description="Shop in the WebShop engine with a browser (a local site; no authentication).",
    )
    parser.add_argument(
        "--port", type=_whole_number("port", 0, 65535), default=DEFAULT_PORT,
        help="port to listen on (default %(default)s)",
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
    parser.add_argument(
        "--goal", type=_whole_number("goal", 0), default=None, help="every new session gets this goal index"
    )
    parser.add_argument("--show-attrs", action="store_true", help="item pages offer the Attributes sub-page")
    return parser


def _parse_args(argv=None) -> argparse.Namespace:
    return _parser().parse_args(argv)


def main(argv=None) -> None:
    from .data import WebShopData

    parser = _parser()
    args = parser.parse_args(argv)
    try:  # bind before the data load (seconds for the real data): a bad address fails now
        server = WebShopServer(None, args.host, args.port, log_requests=True)
    except (OSError, OverflowError) as err:
        parser.error(f"cannot listen on {args.host} port {args.port}: {err}")
    try:
        data = WebShopData.load(args.data, human_goals=args.human_goals)
        server.site = WebShopSite(data, goal=args.goal, show_attrs=args.show_attrs)
    except RequestError as err:  # a goal out of range
        server.server_close()
        parser.error(str(err))
    except BaseException:
        server.server_close()
        raise
    if not server.loopback_only:
        print(f"warning: serving on {args.host}, reachable from other machines, with no authentication.")  # noqa: T201
    print(f"WebShop: {len(data.goals)} goals, {len(data.products)} products from {data.source}")  # noqa: T201
    print(f"Open {server.url} in a browser (Ctrl-C stops).", flush=True)  # noqa: T201
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
