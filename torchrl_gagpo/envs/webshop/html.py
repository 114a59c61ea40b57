"""WebShop's pages as HTML for a person, and the original's way of reading HTML back as text.

:func:`render_html` draws a :class:`~torchrl_gagpo.envs.webshop.pages.Page` with
the Jinja2 templates in ``templates/`` (autoescaped), structured like the
original site's pages: ``btn`` buttons, ``product-link`` links, option radios
named after their option, ``#search_input`` and ``#instruction-text``.
:func:`html_to_text` and :func:`html_clickables` parse HTML the way the
original's text environment does (BeautifulSoup's ``html.parser``), so that

    html_to_text(render_html(page)) == page_text(page)
    html_clickables(render_html(page))["clickables"] == clickables(page)

which the tests check page kind by page kind. Rendering and parsing are what
the original pays per step; :mod:`~torchrl_gagpo.envs.webshop.pages` computes
the same strings directly. To time the original's way, per page: ``html =
render_html(page)`` then ``html_to_text(html)`` and ``html_clickables(html)``
(two parses, as the original parses once for the observation and once for the
available actions); passing one :func:`parse_html` result to both parses once.

Every button submits a command (``name="cmd"``, e.g. ``click[next >]``) to
``{base_url}/s/{session_id}/act``; product links and option radios carry it in
the query string; the search form sends ``search_query``. The local site
(:mod:`~torchrl_gagpo.envs.webshop.serve`) turns these into engine commands.

Example:
    >>> from torchrl_gagpo.envs.webshop.pages import Page, page_text
    >>> page = Page("start", instruction="i need a red mug")
    >>> html = render_html(page, session_id="abc")
    >>> html_to_text(html) == page_text(page)
    True
    >>> html_clickables(html)
    {'has_search_bar': True, 'clickables': ['search']}
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote

from torchrl_gagpo._utils import require

from .pages import PAGE_KINDS, SUB_PAGES, Page

jinja2 = require("jinja2", "webshop")
Markup = require("markupsafe", "webshop").Markup
BeautifulSoup = require("bs4", "webshop").BeautifulSoup
Comment = require("bs4.element", "webshop").Comment

__all__ = [
    "OPTION_SCRIPT",
    "OPTION_SCRIPT_CSP",
    "TEMPLATE_DIR",
    "act_url",
    "html_clickables",
    "html_to_text",
    "parse_html",
    "render_error_page",
    "render_html",
]

TEMPLATE_DIR = Path(__file__).with_name("templates")
#: The only script of the site: clicking an option radio loads the URL that selects it, as the original does.
OPTION_SCRIPT = (
    "document.querySelectorAll('input[type=\"radio\"][data-url]').forEach(function (radio) {"
    " radio.addEventListener('click', function () { window.location.href = radio.dataset.url; }); });"
)
#: The Content-Security-Policy source that allows exactly :data:`OPTION_SCRIPT` and no other script.
OPTION_SCRIPT_CSP = (
    "'sha256-" + base64.b64encode(hashlib.sha256(OPTION_SCRIPT.encode()).digest()).decode() + "'"
)
#: Text nodes under these tags are not visible (the original's ``tag_visible``).
_INVISIBLE_PARENTS = frozenset({"style", "script", "head", "title", "meta", "[document]"})
_SEP = " [SEP] "


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def act_url(session_id: str = "", base_url: str = "") -> str:
    """Where a page's commands go: ``{base_url}/s/{session_id}/act``.

    Example:
        >>> act_url("0f3a", "http://127.0.0.1:3000")
        'http://127.0.0.1:3000/s/0f3a/act'
    """
    return f"{base_url}/s/{quote(session_id, safe='')}/act"


def _command_href(url: str, command: str) -> str:
    return f"{url}?cmd={quote(command, safe='')}"


def _review_stars(score) -> int:
    """Filled stars of a review, as the original's ``score | int`` (0 when not a number), at most 5."""
    try:
        stars = int(score)
    except (TypeError, ValueError):
        try:
            stars = int(float(score))
        except (TypeError, ValueError):
            stars = 0
    return max(0, min(5, stars))


def _item_context(page: Page, url: str) -> dict:
    product = page.product
    selected = page.selected
    options = []
    for index, (name, values) in enumerate(product["options"].items()):
        choices = [
            {
                "id": f"radio-{index}-{position}",
                "value": value,
                "href": _command_href(url, f"click[{value}]"),
                "checked": selected.get(name) == value,
            }
            for position, value in enumerate(values)
        ]
        options.append({"name": name, "choices": choices})
    return {
        "options": options,
        "title": product["Title"],
        "price": product["Price"],
        "rating": product["Rating"],
        "sub_pages": SUB_PAGES if page.show_attrs else SUB_PAGES[:3],
        "option_script": Markup(OPTION_SCRIPT),
    }


def _context(page: Page, url: str, base_url: str) -> dict:
    """The template variables of ``page``: plain strings and lists, nothing left to compute."""
    product = page.product
    if page.kind == "results":
        items = [
            {
                "asin": item["asin"],
                "title": item["Title"],
                "price": item["Price"],
                "href": _command_href(url, f"click[{item['asin'].lower()}]"),
            }
            for item in page.results
        ]
        return {"page_number": page.page, "total": page.total, "items": items}
    if page.kind == "item":
        return _item_context(page, url)
    if page.kind == "description":
        return {"description": product["Description"]}
    if page.kind == "features":
        return {"bullet_points": list(product["BulletPoints"])}
    if page.kind == "reviews":
        reviews = [
            {"title": r["title"], "score": r["score"], "body": r["body"], "stars": _review_stars(r["score"])}
            for r in product.get("Reviews") or []
        ]
        return {"reviews": reviews}
    if page.kind == "attributes":
        return {
            "attributes": list(product["Attributes"]),
            "category": product["category"],
            "query": product["query"],
            "product_category": product["product_category"],
        }
    if page.kind == "done":
        return {
            "code": str(page.session),
            "asin": page.asin,
            "selected": page.selected,
            "score": str(page.score),
            "new_session_url": f"{base_url}/",
        }
    return {}  # start


def render_html(page: Page, *, session_id: str = "", base_url: str = "") -> str:
    """The HTML of ``page``; its buttons and links send commands for session ``session_id``.

    Example:
        >>> html = render_html(Page("start", instruction="i need <b>tea</b>"), session_id="s1")
        >>> "i need &lt;b&gt;tea&lt;/b&gt;" in html, 'action="/s/s1/act"' in html
        (True, True)
    """
    if getattr(page, "kind", None) not in PAGE_KINDS:
        raise TypeError(f"render_html needs a Page, got {type(page).__name__}.")
    url = act_url(session_id, base_url)
    context = {"kind": page.kind, "instruction": page.instruction, "act_url": url}
    context.update(_context(page, url, base_url))
    return _environment().get_template(f"{page.kind}.html").render(context)


def render_error_page(
    status: int, reason: str, message: str, *, back_url: str = "", home_url: str = "/"
) -> str:
    """A page telling a person what went wrong (``message`` is escaped like every other value).

    Example:
        >>> "&lt;script&gt;" in render_error_page(400, "Bad Request", "no action <script>")
        True
    """
    context = {
        "kind": "error",
        "status": int(status),
        "reason": reason,
        "message": message,
        "back_url": back_url,
        "home_url": home_url,
    }
    return _environment().get_template("error.html").render(context)


def parse_html(html: str) -> BeautifulSoup:
    """``html`` parsed as the original parses pages (BeautifulSoup with ``html.parser``)."""
    return BeautifulSoup(html, "html.parser")


def _soup(html: str | BeautifulSoup) -> BeautifulSoup:
    return html if isinstance(html, BeautifulSoup) else parse_html(html)


def _visible(node) -> bool:
    return node.parent.name not in _INVISIBLE_PARENTS and not isinstance(node, Comment)


def html_to_text(html: str | BeautifulSoup) -> str:
    """The page's text as the original's ``observation_mode="text"`` (visible text nodes, joined).

    Nodes under style/script/head/title/meta and comments are dropped; the
    others are stripped, and only nodes that are exactly ``"\\n"`` are skipped
    (a node of other whitespace gives an empty part, as in the original).
    Accepts HTML text or an already parsed page (:func:`parse_html`).

    Example:
        >>> html_to_text("<head><title>t</title></head><body><h4>a <br>b</h4>\\n<p> c </p></body>")
        'a [SEP] b [SEP] c'
    """
    texts = _soup(html).find_all(string=True)
    return _SEP.join(text.strip() for text in texts if _visible(text) and text != "\n")


def html_clickables(html: str | BeautifulSoup) -> dict:
    """``{"has_search_bar": ..., "clickables": [...]}`` of HTML, as the original's ``get_available_actions``.

    Clickables: the lower-cased texts of ``.btn`` elements, then of
    ``.product-link`` elements, then the values of the radio inputs (as written);
    a text met twice keeps its first place.

    Example:
        >>> html_clickables('<button class="btn">Buy Now</button><input type="radio" name="size" value="xl">')
        {'has_search_bar': False, 'clickables': ['buy now', 'xl']}
    """
    soup = _soup(html)
    names = [
        tag.get_text().lower() for tag in soup.find_all(class_="btn") + soup.find_all(class_="product-link")
    ]
    names += [str(radio.get("value")) for radio in soup.select('input[type="radio"]')]
    return {
        "has_search_bar": soup.find(id="search_input") is not None,
        "clickables": list(dict.fromkeys(names)),
    }
