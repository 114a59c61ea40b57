"""WebShop's pages as plain data, and their text exactly as the original's text mode shows them.

The original renders every page as HTML and parses it back with BeautifulSoup:
the observation is the visible text nodes joined with ``" [SEP] "``, and the
clickables are the buttons, product links and option radios of the page. Here a
:class:`Page` holds what a page shows and :func:`page_text` /
:func:`clickables` produce the same strings directly, with no HTML in between
(:mod:`torchrl_gagpo.envs.webshop.html` renders the same pages as HTML for the
local site and checks the two agree).

Example:
    >>> start = Page("start", instruction="i need a red mug, and price lower than 20.00 dollars")
    >>> page_text(start)
    'WebShop [SEP] Instruction: [SEP] i need a red mug, and price lower than 20.00 dollars [SEP] Search'
    >>> clickables(start), has_search_bar(start)
    (['search'], True)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BACK_TO_SEARCH",
    "BUY_NOW",
    "NEXT_PAGE",
    "PAGE_KINDS",
    "PREV_PAGE",
    "RESULTS_PER_PAGE",
    "SUB_PAGES",
    "Page",
    "clickables",
    "has_search_bar",
    "page_segments",
    "page_text",
    "state_text",
]

RESULTS_PER_PAGE = 10
BACK_TO_SEARCH = "Back to Search"
NEXT_PAGE = "Next >"
PREV_PAGE = "< Prev"
BUY_NOW = "Buy Now"
#: Sub-page buttons of an item page, in page order ("Attributes" only with ``show_attrs``).
SUB_PAGES = ("Description", "Features", "Reviews", "Attributes")
PAGE_KINDS = ("start", "results", "item", "description", "features", "reviews", "attributes", "done")
SEP = " [SEP] "


@dataclass(frozen=True)
class Page:
    """What one WebShop page shows.

    Attributes:
        kind: one of :data:`PAGE_KINDS`.
        instruction: the goal's instruction text (shown on every page but the done page).
        keywords: the search keywords (results, item and sub-pages remember them for ``< Prev``).
        page: the results page number, 1-based.
        total: the number of search results (at most 50).
        results: the loaded products listed on this results page.
        product: the product of an item page, sub-page or purchase.
        options: the selected ``(option name, value)`` pairs, in selection order.
        show_attrs: item pages offer the ``Attributes`` sub-page.
        score: the purchase's score (done page).
        session: the session code shown on the done page (the original shows ``None``).
    """

    kind: str
    instruction: str = ""
    keywords: tuple[str, ...] = ()
    page: int = 1
    total: int = 0
    results: tuple[dict, ...] = ()
    product: dict | None = field(default=None, compare=False, repr=False)
    options: tuple[tuple[str, str], ...] = ()
    show_attrs: bool = False
    score: float | None = None
    session: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in PAGE_KINDS:
            raise ValueError(f"unknown page kind {self.kind!r}; expected one of {PAGE_KINDS}.")
        if self.kind in ("item", "description", "features", "reviews", "attributes", "done") and self.product is None:
            raise ValueError(f"a {self.kind!r} page needs a product.")

    @property
    def asin(self) -> str | None:
        return None if self.product is None else self.product["asin"]

    @property
    def selected(self) -> dict[str, str]:
        return dict(self.options)


def _html_safe_json(value: Any) -> str:
    """``json.dumps`` as Jinja's ``tojson`` filter writes it (sorted keys, HTML-safe escapes)."""
    text = json.dumps(value, sort_keys=True)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("'", "\\u0027")):
        text = text.replace(char, escape)
    return text


def _item_sub_buttons(page: Page) -> list[str]:
    return list(SUB_PAGES if page.show_attrs else SUB_PAGES[:3])


def _body_segments(page: Page) -> list[str]:
    """The page's text nodes after the instruction header, in document order."""
    product = page.product
    if page.kind == "results":
        nav = [BACK_TO_SEARCH, f"Page {page.page} (Total results: {page.total})"]
        nav += [PREV_PAGE, NEXT_PAGE] if page.page > 1 else [NEXT_PAGE]
        for item in page.results:
            nav += [item["asin"], item["Title"], item["Price"]]
        return nav
    if page.kind == "item":
        out = [BACK_TO_SEARCH, PREV_PAGE]
        for name, values in product["options"].items():
            out += [name, *values]
        out += [product["Title"], f"Price: {product['Price']}", f"Rating: {product['Rating']}"]
        return out + _item_sub_buttons(page) + [BUY_NOW]
    out = [BACK_TO_SEARCH, PREV_PAGE]
    if page.kind == "description":
        return out + [product["Description"]]
    if page.kind == "features":
        return out + list(product["BulletPoints"])
    if page.kind == "reviews":
        for review in product.get("Reviews") or []:
            out += [f'"{review["title"]}"', str(review["score"]), review["body"]]
        return out
    # attributes
    return out + list(product["Attributes"]) + [product["category"], product["query"], product["product_category"]]


def _done_segments(page: Page) -> list[str]:
    """The done page as the original's simulated server renders it (most purchase details unset)."""
    return [
        "Thank you for shopping with us!", "Your code:", str(page.session),
        "(Paste it in your MTurk interface.)",
        "Purchased", "asin", page.asin, "options", _html_safe_json(page.selected),
        "attrs", "None", "category", "None", "query", "None", "product category", "None",
        "Target", "asin", "options", "attrs", "price upper", "instuction text", "category",
        "product category", "query", "Goal", "None", "Reward",
        "Your score (min 0.0, max 1.0)", str(page.score), "Reward Details", "None",
    ]


def page_segments(page: Page) -> list[str]:
    """The visible text nodes of ``page``, stripped, empty ones dropped."""
    if page.kind == "done":
        segments = _done_segments(page)
    elif page.kind == "start":
        segments = ["WebShop", "Instruction:", page.instruction, "Search"]
    else:
        segments = ["Instruction:", page.instruction, *_body_segments(page)]
    return [text for text in (str(s).strip() for s in segments) if text]


def page_text(page: Page) -> str:
    """The page as the original's ``observation_mode="text"`` shows it."""
    return SEP.join(page_segments(page))


def state_text(page: Page) -> str:
    """The page's identity and content without the instruction: what the state key digests.

    Two rollouts of one group that stand on the same page share this text, whatever
    the goal says; the selected options count, since they decide the purchase.
    """
    segments = page_segments(page)
    if page.kind not in ("start", "done"):
        segments = segments[2:]
    elif page.kind == "start":
        segments = ["WebShop", "Search"]
    selected = _html_safe_json(page.selected) if page.kind != "done" else ""
    return SEP.join([page.kind, f"page {page.page}", selected, *segments])


def clickables(page: Page) -> list[str]:
    """The page's clickables as the original's ``get_available_actions()`` lists them.

    Buttons and product links in document order, then option values; all
    lower-cased. A value shared by two options appears once, at its first place.
    """
    if page.kind == "start":
        return ["search"]
    if page.kind == "done":
        return []
    if page.kind == "results":
        buttons = [BACK_TO_SEARCH, PREV_PAGE, NEXT_PAGE] if page.page > 1 else [BACK_TO_SEARCH, NEXT_PAGE]
        links = [item["asin"] for item in page.results]
    elif page.kind == "item":
        buttons = [BACK_TO_SEARCH, PREV_PAGE, *_item_sub_buttons(page), BUY_NOW]
        links = [value for values in page.product["options"].values() for value in values]
    else:
        buttons, links = [BACK_TO_SEARCH, PREV_PAGE], []
    return list(dict.fromkeys(name.lower() for name in [*buttons, *links]))


def has_search_bar(page: Page) -> bool:
    """Only the start page has a search bar."""
    return page.kind == "start"
