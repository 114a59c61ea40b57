"""WebShop: a pip-installable, offline re-implementation of the original engine.

The pages, actions and reward follow the original WebShop (Yao et al., 2022) text
mode; search is BM25 (bm25s) instead of pyserini/Lucene; products and goals come
from the shipped synthetic catalog or from the original's data files. Needs the
``webshop`` extra (``pip install 'torchrl-gagpo[webshop]'``).
"""

from .data import WebShopData, WebShopDataError, build_goals, default_data_path, load_products, split_goals
from .engine import StepResult, WebShopEngine, parse_command
from .env import WebShopEnv, search_query
from .pages import Page, clickables, has_search_bar, page_text
from .reward import score_purchase
from .search import BM25Search

__all__ = [
    "BM25Search",
    "Page",
    "StepResult",
    "WebShopData",
    "WebShopDataError",
    "WebShopEngine",
    "WebShopEnv",
    "build_goals",
    "clickables",
    "default_data_path",
    "has_search_bar",
    "load_products",
    "page_text",
    "parse_command",
    "score_purchase",
    "search_query",
    "split_goals",
]
