"""WebShopEngine: one shopping session, page to page, as the original's text environment plays it.

The engine applies ``search[...]`` and ``click[...]`` commands to a session and
returns the next :class:`~torchrl_gagpo.envs.webshop.pages.Page`. The rules are
the original's: search only where a search bar is (the start page), click only
a clickable of the current page (never ``search``), anything else changes
nothing; ``< Prev`` goes back one level (results page, item page, sub-page),
``Back to Search`` to the start page, ``Next >`` always shows (past the last
result it shows an empty page, as the original does); clicking an option value
selects it; ``click[buy now]`` ends the session with the purchase's score.

Example:
    >>> from torchrl_gagpo.envs.webshop import WebShopData
    >>> engine = WebShopEngine(WebShopData.load())  # doctest: +SKIP
    >>> page = engine.reset(0)  # doctest: +SKIP
    >>> engine.step("search[red mug]").page.kind  # doctest: +SKIP
    'results'
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache

from .pages import (
    BACK_TO_SEARCH,
    BUY_NOW,
    NEXT_PAGE,
    PREV_PAGE,
    RESULTS_PER_PAGE,
    SUB_PAGES,
    Page,
    clickables,
    has_search_bar,
)
from .reward import score_purchase

__all__ = [
    "SEARCH_CACHE_SIZE", "SEARCH_RESULTS", "StepResult", "WebShopEngine", "parse_command", "search_asins",
]  # fmt: skip

#: How many products a search returns at most (five result pages).
SEARCH_RESULTS = 50
#: Searches an engine caches by default (about 1.4 KiB each).
SEARCH_CACHE_SIZE = 4096
_COMMAND = re.compile(r"(.+)\[(.+)\]")
_SUB_PAGE_KINDS = {name.lower(): name.lower() for name in SUB_PAGES}


def parse_command(command: str) -> tuple[str, str | None]:
    """Split ``name[argument]`` as the original does; a command without brackets has no argument.

    Examples:
        >>> parse_command("click[Buy Now]")
        ('click', 'Buy Now')
        >>> parse_command("look around")
        ('look around', None)
    """
    match = _COMMAND.match(command)
    return (command, None) if match is None else (match.group(1), match.group(2))


@dataclass(frozen=True)
class StepResult:
    """The outcome of one command.

    Attributes:
        page: the page shown now.
        valid: the command did something (a no-op command is invalid).
        done: the session ended with a purchase.
        score: the purchase's score in [0, 1] (0 before the purchase).
        details: :func:`~torchrl_gagpo.envs.webshop.reward.score_purchase`'s breakdown, on purchase.
    """

    page: Page
    valid: bool
    done: bool = False
    score: float = 0.0
    details: dict | None = None


def search_asins(data, query: str) -> tuple[str, ...]:
    """The asins a search for ``query`` lists (at most :data:`SEARCH_RESULTS`, best first)."""
    asins = data.search.search(query, k=SEARCH_RESULTS)
    return tuple(a for a in asins if a in data.product_by_asin)


class WebShopEngine:
    """The shop's session state machine over a :class:`~torchrl_gagpo.envs.webshop.data.WebShopData`.

    Args:
        data: the loaded products, prices, goals and search index.

    Keyword Args:
        show_attrs (bool): item pages offer the ``Attributes`` sub-page. Defaults to ``False``.
        search (callable, optional): ``query -> asins``, e.g. a cache of :func:`search_asins`
            shared by many engines (the local site bounds its searches this way); default: an
            LRU cache of :data:`SEARCH_CACHE_SIZE` searches of this engine's own.
    """

    def __init__(
        self, data, *, show_attrs: bool = False, search: Callable[[str], tuple[str, ...]] | None = None
    ) -> None:
        self.data = data
        self.show_attrs = bool(show_attrs)
        self.goal: dict | None = None
        self.page: Page | None = None
        self._options: dict[str, str] = {}
        self._search = search or lru_cache(maxsize=SEARCH_CACHE_SIZE)(functools.partial(search_asins, data))

    # -- session -------------------------------------------------------------------
    def reset(self, goal_index: int, session: str | None = None) -> Page:
        """Start a session for ``data.goals[goal_index]`` on the start page."""
        if not 0 <= goal_index < len(self.data.goals):
            count = len(self.data.goals)
            raise IndexError(f"goal_index {goal_index} is out of range: there are {count} goals.")
        self.goal = self.data.goals[goal_index]
        self._options = {}
        self._session = session
        self.page = Page("start", instruction=self.goal["instruction_text"])
        return self.page

    def available_actions(self) -> dict:
        """``{"has_search_bar": bool, "clickables": [...]}`` of the current page, as the original."""
        self._require_session()
        return {"has_search_bar": has_search_bar(self.page), "clickables": clickables(self.page)}

    def is_valid(self, command: str) -> bool:
        """Whether ``command`` does something on the current page."""
        self._require_session()
        name, arg = parse_command(command)
        if arg is None:
            return False
        if name == "search":
            return has_search_bar(self.page) and bool(arg.strip())
        return name == "click" and arg.lower() != "search" and arg.lower() in clickables(self.page)

    def step(self, command: str) -> StepResult:
        """Apply one command; an invalid one leaves the page as it is."""
        self._require_session()
        if self.page.kind == "done":
            raise RuntimeError("the session has ended with a purchase; call reset() for a new one.")
        if not isinstance(command, str) or not self.is_valid(command):
            return StepResult(self.page, valid=False)
        name, arg = parse_command(command)
        arg = arg.lower()
        if name == "search":
            self.page = self._results(tuple(arg.split(" ")), 1)
            return StepResult(self.page, valid=True)
        if arg == BUY_NOW.lower():
            return self._buy()
        self.page = self._click(arg)
        return StepResult(self.page, valid=True)

    # -- pages ---------------------------------------------------------------------
    def _click(self, arg: str) -> Page:
        page = self.page
        if arg == BACK_TO_SEARCH.lower():
            self._options = {}
            return Page("start", instruction=page.instruction)
        if page.kind == "results":
            if arg == NEXT_PAGE.lower():
                return self._results(page.keywords, page.page + 1)
            if arg == PREV_PAGE.lower():
                return self._results(page.keywords, page.page - 1)
            product = self.data.product_by_asin[arg.upper()]
            self._options = {}
            return self._item(product)
        if page.kind == "item":
            if arg == PREV_PAGE.lower():
                return self._results(page.keywords, page.page)
            if arg in _SUB_PAGE_KINDS:
                return replace(page, kind=_SUB_PAGE_KINDS[arg])
            # an option value: the original's clickable map keeps the last option holding the value
            name = [option for option, values in page.product["options"].items() if arg in values][-1]
            self._options[name] = arg
            return self._item(page.product)
        # a sub-page: the only way on is back to its item page
        return self._item(page.product)

    def _item(self, product: dict) -> Page:
        return Page(
            "item",
            instruction=self.page.instruction,
            keywords=self.page.keywords,
            page=self.page.page,
            product=product,
            options=tuple(self._options.items()),
            show_attrs=self.show_attrs,
        )

    def _results(self, keywords: tuple[str, ...], page_number: int) -> Page:
        self._options = {}
        asins = self._search(" ".join(keywords))
        start = (page_number - 1) * RESULTS_PER_PAGE
        products = tuple(self.data.product_by_asin[a] for a in asins[start : start + RESULTS_PER_PAGE])
        return Page(
            "results", instruction=self.page.instruction, keywords=keywords, page=page_number,
            total=len(asins), results=products,
        )

    def _buy(self) -> StepResult:
        product = self.page.product
        details = score_purchase(product, self.goal, dict(self._options), self.data.prices[product["asin"]])
        score = float(details["total"])
        self.page = Page(
            "done", product=product, options=tuple(self._options.items()), score=score, session=self._session
        )
        return StepResult(self.page, valid=True, done=True, score=score, details=details)

    def _require_session(self) -> None:
        if self.page is None:
            raise RuntimeError("no session: call reset(goal_index) first.")
