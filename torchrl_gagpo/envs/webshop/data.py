"""WebShop data: products, goals and the train/test split, with the original engine's semantics.

:func:`load_products` and :func:`build_goals` reproduce the original ``load_products``
(``web_agent_site/engine/engine.py``) and ``get_goals`` (``engine/goal.py``) field by
field: titles, bullet points, the ``"$x"`` / ``"$x to $y"`` price tags, lower-cased
options with ``"/"`` shown as ``" | "``, ``['DUMMY_ATTR']`` for products without
attributes, the instruction texts and price caps, the weights of synthetic goals, and
the final ``random.Random(233)`` shuffle. They read the real files
(``items_shuffle_1000.json`` or ``items_shuffle.json``, ``items_ins_v2_1000.json`` or
``items_ins_v2.json``, ``items_human_ins.json``) unchanged, as well as the synthetic
set shipped in ``data/`` (see :mod:`.catalog`).

**Deliberate fix of the original.** The original draws the price of a range-priced
product (``random.uniform(lo, hi)`` at load time) and every goal's price cap
(``random.sample`` from the caps above the price) with Python's unseeded global RNG,
so two processes disagree on prices, on the caps, and therefore on instruction texts
and rewards. Here both come from RNGs seeded by ``(seed, asin[, instruction index])``
(``random.Random(f"webshop/price/{seed}/{asin}")`` and
``random.Random(f"webshop/price-cap/{seed}/{asin}/{k}")``), so goals are identical in
every process; ``seed`` picks another, equally valid, draw.

**Split.** The original (as verl-agent uses it) tests on the first 500 goals after the
shuffle and trains on the rest. :func:`split_goals` keeps that whenever there are at
least 1000 goals (at least as many training goals as test goals); smaller goal sets,
such as the shipped one, test on the first ``ceil(n / 10)`` goals.

Example:
    >>> data = WebShopData.load()            # the shipped synthetic catalog
    >>> goal = data.goals[data.split("test")[0]]
    >>> goal["asin"] in data.product_by_asin and goal["instruction_text"].islower()
    True
"""

from __future__ import annotations

import itertools
import math
import os
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ._records import (
    WebShopDataError,
    check,
    check_human_instructions,
    is_str_list,
    product_record,
    read_json,
)
from .search import BM25Search

__all__ = [
    "WebShopData",
    "WebShopDataError",
    "build_goals",
    "default_data_path",
    "find_data_files",
    "load_products",
    "split_goals",
]

#: Price caps a goal may get: the first 4 of these above the product's price (original PRICE_RANGE).
PRICE_CAPS = tuple(10.0 * i for i in range(1, 100))
#: Cap of goals whose product costs too much for two caps above it (then no price text).
NO_PRICE_CAP = 1_000_000.0
DUMMY_ATTRIBUTES = ("DUMMY_ATTR",)
GOAL_SHUFFLE_SEED = 233
ORIGINAL_TEST_SIZE = 500
TEST_FRACTION = 0.1
# Accepted file names in a data directory, preferred first (the original defaults to the _1000 files).
_FILE_NAMES = {
    "items": ("items_shuffle_1000.json", "items_shuffle.json"),
    "attributes": ("items_ins_v2_1000.json", "items_ins_v2.json"),
    "human": ("items_human_ins.json",),
}


def default_data_path() -> Path:
    """The folder of the shipped synthetic catalog."""
    return Path(__file__).resolve().parent / "data"


def find_data_files(directory: str | Path) -> dict[str, Path | None]:
    """The items, attributes and human-instruction files in ``directory`` (``human`` may be ``None``)."""
    root = Path(directory)
    if not root.is_dir():
        problem = "is not a directory" if root.exists() else "does not exist"
        raise WebShopDataError(f"{root}: WebShop data directory {problem} (pass the folder of the files)")
    found: dict[str, Path | None] = {}
    for role, names in _FILE_NAMES.items():
        found[role] = next((root / name for name in names if (root / name).is_file()), None)
        if found[role] is None and role != "human":
            raise WebShopDataError(f"{root}: no {' or '.join(names)} in this WebShop data directory")
    return found


# -- public loaders ------------------------------------------------------------------------------


def load_products(
    items_path: str | Path,
    attrs_path: str | Path,
    human_path: str | Path | None = None,
    *,
    human_goals: bool = True,
    num_products: int | None = None,
    seed: int = 0,
) -> tuple[list[dict], dict[str, dict], dict[str, float]]:
    """Load products as the original ``load_products`` does; returns ``(products, product_by_asin, prices)``.

    Args:
        items_path: ``items_shuffle*.json``, a list of product records.
        attrs_path: ``items_ins_v2*.json``, ``{asin: {attributes, instruction, instruction_attributes}}``.
        human_path: ``items_human_ins.json``, ``{asin: [{instruction, instruction_attributes,
            instruction_options}]}``; needed when ``human_goals``.

    Keyword Args:
        human_goals: attach the human instructions (``instructions``); otherwise the synthetic
            instruction of ``attrs_path`` (``instruction_text``, ``instruction_attributes``).
        num_products: keep only the first ``num_products`` records of ``items_path`` (before dropping
            invalid and duplicate asins, as the original).
        seed: seeds the price drawn inside a price range (``prices``); see the module docstring.

    Example:
        >>> folder = default_data_path()
        >>> products, by_asin, prices = load_products(
        ...     folder / "items_shuffle.json", folder / "items_ins_v2.json", folder / "items_human_ins.json")
        >>> p = products[0]
        >>> p["Title"] == p["name"] and p["Price"].startswith("$") and p["asin"] in prices
        True
    """
    valid_limit = isinstance(num_products, int) and not isinstance(num_products, bool) and num_products >= 0
    if num_products is not None and not valid_limit:
        raise ValueError(f"num_products must be None or a non-negative int, got {num_products!r}")
    items_path, attrs_path = Path(items_path), Path(attrs_path)
    raw_products = read_json(items_path, list)
    attributes = read_json(attrs_path, dict)
    human: dict = {}
    if human_goals:
        if human_path is None:
            raise WebShopDataError(f"{attrs_path.parent}: human goals need items_human_ins.json (human_path)")
        human_path = Path(human_path)
        human = read_json(human_path, dict)
    if num_products is not None:
        raw_products = raw_products[:num_products]

    products: list[dict] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_products):
        check(isinstance(raw, dict), items_path, f"product {index}", "<record>", "an object", raw)
        asin = raw.get("asin", "<missing>")
        check(isinstance(asin, str), items_path, f"product {index}", "asin", "a string", asin)
        if asin == "nan" or len(asin) > 10 or asin in seen:
            continue
        seen.add(asin)
        product = product_record(raw, asin, items_path, f"product {index} (asin {asin!r})")
        _annotate(product, attributes, attrs_path, human if human_goals else None, human_path)
        products.append(product)

    prices = {}
    for product in products:
        low_high = product["pricing"]
        if len(low_high) == 1:
            prices[product["asin"]] = low_high[0]
        else:
            rng = random.Random(f"webshop/price/{seed}/{product['asin']}")
            prices[product["asin"]] = rng.uniform(*low_high)
    return products, {p["asin"]: p for p in products}, prices


def _annotate(
    product: dict, attributes: dict, attrs_path: Path, human: dict | None, human_path: Path | None
) -> None:
    """Add ``Attributes``, then the human instructions (``human`` given) or the synthetic instruction."""
    asin = product["asin"]
    where = f"asin {asin!r}"
    entry = attributes.get(asin)
    check(entry is None or isinstance(entry, dict), attrs_path, where, "<value>", "an object", entry)
    if entry is not None and "attributes" in entry:
        check(is_str_list(entry["attributes"]), attrs_path, where, "attributes", "a list of strings",
              entry["attributes"])
        product["Attributes"] = list(entry["attributes"])
    else:
        product["Attributes"] = list(DUMMY_ATTRIBUTES)
    if human is not None:
        if asin in human:
            product["instructions"] = check_human_instructions(human[asin], human_path, asin)
        return
    # the original fails (KeyError) on a product without an entry when building synthetic goals
    check(entry is not None, attrs_path, where, "<entry>", "present for synthetic goals", "<missing>")
    text, goal_attributes = entry.get("instruction"), entry.get("instruction_attributes")
    check(text is None or isinstance(text, str), attrs_path, where, "instruction", "a string or null", text)
    if text is not None:
        check(is_str_list(goal_attributes) and len(goal_attributes) > 0, attrs_path, where,
              "instruction_attributes", "a non-empty list of strings", goal_attributes)
    product["instruction_text"] = text
    product["instruction_attributes"] = goal_attributes


def _price_cap(price: float, rng_key: str) -> tuple[float, str]:
    """``(price_upper, price_text)``: the larger of 2 draws among the first 4 caps above ``price``."""
    caps = [cap for cap in PRICE_CAPS if cap > price][:4]
    if len(caps) < 2:
        return NO_PRICE_CAP, ""
    upper = max(random.Random(rng_key).sample(caps, 2))
    return upper, f", and price lower than {upper:.2f} dollars"


def build_goals(products: list[dict], prices: dict[str, float], *, human_goals: bool = True,
                seed: int = 0) -> list[dict]:
    """The goals of ``products`` (from :func:`load_products`), shuffled as the original shuffles them.

    Human goals: one per instruction with a non-empty attribute list, ``goal_options`` a list,
    weight 1. Synthetic goals: one per combination of option values (options in sorted name
    order), ``goal_options`` a dict, weight = mean over its attributes of 1 / (number of goals
    with that attribute). Price caps are seeded by ``seed`` (see the module docstring).

    Example:
        >>> folder = default_data_path()
        >>> products, _, prices = load_products(folder / "items_shuffle.json", folder / "items_ins_v2.json",
        ...                                     human_goals=False)
        >>> goals = build_goals(products, prices, human_goals=False)
        >>> sorted(goals[0]) == sorted(["asin", "category", "query", "name", "product_category",
        ...     "instruction_text", "attributes", "price_upper", "goal_options", "weight"])
        True
    """
    goals = _human_goals(products, prices, seed) if human_goals else _synthetic_goals(products, prices, seed)
    random.Random(GOAL_SHUFFLE_SEED).shuffle(goals)
    return goals


def _goal(product: dict, instruction_text: str, attributes: list[str], price_upper: float, options) -> dict:
    return {
        "asin": product["asin"],
        "category": product["category"],
        "query": product["query"],
        "name": product["name"],
        "product_category": product["product_category"],
        "instruction_text": instruction_text,
        "attributes": attributes,
        "price_upper": price_upper,
        "goal_options": options,
    }


def _human_goals(products: list[dict], prices: dict[str, float], seed: int) -> list[dict]:
    goals = []
    for product in products:
        asin = product["asin"]
        for k, instruction in enumerate(product.get("instructions", ())):
            if not instruction["instruction_attributes"]:
                continue  # the original skips these
            upper, price_text = _price_cap(prices[asin], f"webshop/price-cap/{seed}/{asin}/{k}")
            text = instruction["instruction"].strip(".") + price_text
            goal = _goal(product, text, list(instruction["instruction_attributes"]), upper,
                         list(instruction["instruction_options"]))
            goal["weight"] = 1.0
            goals.append(goal)
    return goals


def _synthetic_goals(products: list[dict], prices: dict[str, float], seed: int) -> list[dict]:
    goals = []
    attribute_counts: dict[str, int] = defaultdict(int)
    for product in products:
        if product.get("instruction_text") is None:
            continue
        asin, attributes = product["asin"], product["instruction_attributes"]
        if not attributes:
            raise WebShopDataError(f"product {asin!r}: a synthetic instruction needs instruction_attributes")
        upper, price_text = _price_cap(prices[asin], f"webshop/price-cap/{seed}/{asin}")
        names = sorted(product["options"])
        for combination in itertools.product(*(product["options"][name] for name in names)):
            options = dict(zip(names, combination, strict=True))
            option_text = ", and ".join(f"{name}: {value}" for name, value in options.items())
            option_text = f" with {option_text}" if option_text else ""
            text = f"{product['instruction_text']}{option_text}{price_text}"
            goals.append(_goal(product, text, list(attributes), upper, options))
            for attribute in attributes:
                attribute_counts[attribute] += 1
    for goal in goals:
        goal["weight"] = sum(1.0 / attribute_counts[a] for a in goal["attributes"]) / len(goal["attributes"])
    return goals


def split_goals(n_goals: int) -> tuple[list[int], list[int]]:
    """``(train_ids, test_ids)``: test is a prefix of the shuffled goals, train the rest.

    The original's 500 test goals when ``n_goals >= 1000``; otherwise ``ceil(n_goals / 10)``.

    Example:
        >>> [len(ids) for ids in split_goals(12087)], [len(ids) for ids in split_goals(450)]
        ([11587, 500], [405, 45])
    """
    if isinstance(n_goals, bool) or not isinstance(n_goals, int) or n_goals < 0:
        raise ValueError(f"n_goals must be a non-negative int, got {n_goals!r}")
    n_test = ORIGINAL_TEST_SIZE if n_goals >= 2 * ORIGINAL_TEST_SIZE else math.ceil(n_goals * TEST_FRACTION)
    return list(range(n_test, n_goals)), list(range(n_test))


@dataclass
class WebShopData:
    """Everything an episode needs: products, prices, goals, their split and the search index.

    Example:
        >>> data = WebShopData.load(human_goals=False)
        >>> len(data.split("train")) + len(data.split("test")) == len(data.goals)
        True
    """

    products: list[dict]
    product_by_asin: dict[str, dict]
    prices: dict[str, float]
    goals: list[dict]
    train_ids: list[int]
    test_ids: list[int]
    search: BM25Search
    source: str

    @classmethod
    def load(cls, data_path: str | Path | None = None, *, human_goals: bool = True,
             num_products: int | None = None, seed: int = 0) -> WebShopData:
        """Load ``data_path``, else ``$WEBSHOP_DATA``, else the shipped synthetic catalog.

        A data folder holds ``items_shuffle_1000.json`` or ``items_shuffle.json``,
        ``items_ins_v2_1000.json`` or ``items_ins_v2.json`` (the ``_1000`` files are preferred, as
        the original defaults to them) and, for human goals, ``items_human_ins.json``.

        Keyword Args:
            human_goals: human instructions (default, as WebShop's benchmark) or synthetic ones.
            num_products: use only the first ``num_products`` product records.
            seed: seeds range prices and price caps (see the module docstring).
        """
        if data_path is None:
            data_path = os.environ.get("WEBSHOP_DATA") or default_data_path()
        files = find_data_files(data_path)
        if human_goals and files["human"] is None:
            raise WebShopDataError(
                f"{data_path}: no items_human_ins.json; pass human_goals=False for synthetic goals"
            )
        products, by_asin, prices = load_products(
            files["items"], files["attributes"], files["human"], human_goals=human_goals,
            num_products=num_products, seed=seed,
        )
        goals = build_goals(products, prices, human_goals=human_goals, seed=seed)
        train_ids, test_ids = split_goals(len(goals))
        search = BM25Search(products)
        return cls(products, by_asin, prices, goals, train_ids, test_ids, search, str(data_path))

    def split(self, name: str) -> list[int]:
        """Goal indices of the ``"train"`` or ``"test"`` split."""
        if name == "train":
            return self.train_ids
        if name == "test":
            return self.test_ids
        raise ValueError(f"unknown split {name!r}; expected 'train' or 'test'")
