"""The local WebShop site against an abusive client (regressions of issue 15.6).

* Any method but GET/POST gets 405 with an ``Allow`` header and the site's own page (was 501
  with Python's default page).
* Worker threads are bounded (a connection beyond the bound gets 503 at once) and idle
  connections are closed (300 half-open connections held 303 threads indefinitely).
* Cached searches are bounded for the whole site, not per session (4,096 per session was
  ~5.5 GiB at the 1,000-session limit), and so are the analysed query words.
* The CLI checks its values (port, goal, host) with a clear message, the address before the data
  load.

Only 127.0.0.1; every loop is bounded and every socket has a timeout.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
import time

import pytest
from helpers import serving

from torchrl_gagpo.envs.webshop import serve
from torchrl_gagpo.envs.webshop.data import WebShopData
from torchrl_gagpo.envs.webshop.serve import WebShopSite, make_server


@pytest.fixture(scope="module")
def data():
    return WebShopData.load()


@pytest.fixture()
def small_server(data):
    """A site with 4 worker threads and a 2 s idle timeout."""
    with serving(make_server(data, port=0, max_threads=4, idle_timeout=2.0)) as server:
        yield server


@pytest.fixture(scope="module")
def server(data):
    with serving(make_server(data, port=0)) as server:
        yield server


def request(server, method, path, body=None, timeout=10):
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        text = response.read().decode() if method != "HEAD" else ""
        return response.status, dict(response.getheaders()), text
    finally:
        connection.close()


def new_session(server) -> str:
    status, headers, _ = request(server, "GET", "/?goal=0")
    assert status == 303
    return headers["Location"].rsplit("/", 1)[1]


# -- methods ------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "HEAD", "BREW"])
@pytest.mark.parametrize("path, allow", [("/", "GET"), ("/s/{sid}", "GET"), ("/s/{sid}/act", "GET, POST")])
def test_other_methods_get_405_with_allow(server, method, path, allow):
    status, headers, text = request(server, method, path.format(sid=new_session(server)), body="cmd=x")
    assert status == 405 and headers["Allow"] == allow
    if method != "HEAD":
        assert 'id="error-message"' in text and "Error code explanation" not in text
    assert "Python" not in headers.get("Server", "")


def test_post_to_a_page_gets_405_with_allow(server):
    status, headers, _ = request(server, "POST", f"/s/{new_session(server)}", body="cmd=x")
    assert status == 405 and headers["Allow"] == "GET"


@pytest.mark.parametrize("raw, status", [
    (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: localhost\r\n" + b"X-A: b\r\n" * 150 + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: " + b"b" * 70_000 + b"\r\n\r\n", 431),
    (b"NOT AN HTTP REQUEST\r\n\r\n", 400),
], ids=["long_uri", "many_headers", "long_header", "garbage"])
def test_oversized_and_malformed_requests_are_refused(server, raw, status):
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:
        sock.sendall(raw)
        answer = sock.recv(4096).decode(errors="replace")
    # a request line that is not HTTP/1.x gets an HTTP/0.9-style answer: the page without a status line
    status_line = answer.startswith((f"HTTP/1.1 {status}", f"HTTP/1.0 {status}"))
    assert status_line or f"Error code: {status}" in answer, answer[:80]


# -- threads and idle connections ------------------------------------------------------------------
def open_idle(server, n):
    sockets = []
    for _ in range(n):
        sock = socket.create_connection(server.server_address[:2], timeout=5)
        sockets.append(sock)
    return sockets


def test_worker_threads_are_bounded(small_server):
    baseline = threading.active_count()
    idle = open_idle(small_server, 12)  # half-open: connected, never sending a request
    try:
        time.sleep(0.3)
        assert threading.active_count() <= baseline + 4
        status, headers, _ = request(small_server, "GET", "/?goal=0", timeout=5)
        assert status == 503 and "Retry-After" in headers
    finally:
        for sock in idle:
            sock.close()


def test_idle_connections_are_closed(small_server):
    idle = open_idle(small_server, 4)
    try:
        time.sleep(0.3)
        assert request(small_server, "GET", "/?goal=0", timeout=5)[0] == 503  # every thread is held
        for sock in idle:  # the server hangs up on each after its idle timeout (2 s)
            sock.settimeout(10)
            assert sock.recv(1024) == b""
        deadline = time.monotonic() + 10
        while request(small_server, "GET", "/?goal=0", timeout=5)[0] != 303 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert request(small_server, "GET", "/?goal=0", timeout=5)[0] == 303  # threads are free again
    finally:
        for sock in idle:
            sock.close()


def test_keep_alive_connection_is_closed_after_its_idle_timeout(small_server):
    host, port = small_server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("GET", "/?goal=0")
        response = connection.getresponse()
        response.read()
        assert response.status == 303 and not response.will_close
        connection.sock.settimeout(10)
        assert connection.sock.recv(1024) == b""  # closed by the server after 2 s of silence
    finally:
        connection.close()


# -- caches ------------------------------------------------------------------------------------
def test_cached_searches_are_bounded_for_the_whole_site(data):
    site = WebShopSite(data, search_cache_size=16)
    for s in range(12):
        sid = site.new_session(0)
        for q in range(5):
            site.act(sid, f"search[query {s} {q}]")
            site.act(sid, "click[back to search]")
    caches = {id(engine._search): engine._search for engine in site._sessions.values()}
    assert sum(cache.cache_info().currsize for cache in caches.values()) <= 16


def test_analysed_query_words_are_bounded(data):
    analyzer = data.search._analyze
    before = len(analyzer)
    for i in range(200):
        data.search.search(f"novelword{i}a novelword{i}b")
    assert len(analyzer) <= before + data.search.QUERY_WORDS_CACHED
    assert data.search.QUERY_WORDS_CACHED <= 100_000


# -- the command line --------------------------------------------------------------------------
@pytest.mark.parametrize("argv, words", [
    (["--port", "70000"], "port must be"),
    (["--port", "-1"], "port must be"),
    (["--goal", "-3"], "goal must be"),
    (["--goal", "x"], "goal must be"),
])
def test_bad_cli_values_are_refused_by_the_parser(argv, words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        serve._parse_args(argv)
    assert exit_info.value.code == 2 and words in capsys.readouterr().err


@pytest.mark.parametrize("host", ["256.1.1.1", "::1::", "127.0.0.1:80"])
def test_bad_host_is_refused_before_the_data_load(host, monkeypatch, capsys):
    def no_load(*args, **kwargs):
        raise AssertionError("the data was loaded before the host was checked")

    monkeypatch.setattr(WebShopData, "load", no_load)
    with pytest.raises(SystemExit) as exit_info:
        serve.main(["--host", host, "--port", "0"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"cannot listen on {host}" in err and "Traceback" not in err


def test_busy_port_is_refused_before_the_data_load(monkeypatch, capsys):
    monkeypatch.setattr(WebShopData, "load", lambda *a, **k: pytest.fail("data loaded first"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(SystemExit):
            serve.main(["--port", str(taken.getsockname()[1])])
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err


def test_goal_out_of_range_is_a_message_not_a_traceback(capsys):
    with pytest.raises(SystemExit) as exit_info:
        serve.main(["--goal", "99999", "--port", "0"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and re.search(r"goal 99999 is out of range: there are \d+ goals", err)


if __name__ == "__main__":
    pytest.main([__file__, "-v"])
