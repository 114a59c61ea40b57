"""WebShop data layer: the synthetic catalog, product and goal loading, the split and BM25 search."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import torchrl_gagpo
import torchrl_gagpo.envs
from torchrl_gagpo.envs.webshop import catalog as ws_catalog
from torchrl_gagpo.envs.webshop import data as ws_data
from torchrl_gagpo.envs.webshop.data import (
    NO_PRICE_CAP,
    WebShopData,
    WebShopDataError,
    build_goals,
    default_data_path,
    load_products,
    split_goals,
)
from torchrl_gagpo.envs.webshop.search import BM25Search, analyze, document_text

SHIPPED = default_data_path()

# -- a tiny hand-written set in the real schemas ---------------------------------------------------

HOODIE, BOTTLE, TABLE = "B000000001", "B000000002", "B000000005"
RAW_PRODUCTS = [
    {
        "asin": HOODIE, "name": "Acme Cotton Hoodie for Men", "full_description": "A warm cotton hoodie.",
        "small_description": ["Machine wash cold", "Kangaroo pocket"], "pricing": "$20.33",
        "customization_options": {
            "Color": [{"value": "Black", "image": "https://img/black.jpg"},
                      {"value": "Navy/Blue", "image": None}],
            "Size": [{"value": " Small ", "image": None}, {"value": "Large", "image": None}],
        },
        "images": ["https://img/hoodie.jpg"], "category": "fashion", "query": "Mens Hoodie ",
        "product_category": "Clothing › Men › Hoodies", "brand": "Acme", "list_price": "$30.00",
    },
    {
        "asin": BOTTLE, "name": "Acme Steel Water Bottle", "full_description": "Keeps water cold.",
        "small_description": "Leak proof lid", "pricing": "$10.50 - $15.00", "customization_options": None,
        "images": ["https://img/bottle.jpg"], "category": "sports", "query": "water bottle",
        "product_category": "Sports › Outdoor › Bottles",
    },
    {"asin": "B0000000031X", "name": 5},  # asin longer than 10: dropped before any other field is read
    {**{"asin": HOODIE, "name": "Second hoodie"}},  # duplicate asin: skipped
    {"asin": "nan", "name": None},  # dropped
    {
        "asin": TABLE, "name": "Acme Oak Dining Table", "full_description": "Seats six.",
        "small_description": ["Solid oak top"], "pricing": "$985.00", "customization_options": {},
        "images": ["https://img/table.jpg"], "category": "furniture", "query": "dining table",
        "product_category": "Home › Furniture › Tables",
    },
]
ATTRIBUTES = {
    HOODIE: {"attributes": ["machine wash", "long sleeve", "cotton"],
             "instruction": "Find me long sleeve hoodie that i can machine wash",
             "instruction_attributes": ["machine wash", "long sleeve"]},
    BOTTLE: {"attributes": ["leak proof"], "instruction": "Find me leak proof water bottle",
             "instruction_attributes": ["leak proof", "long sleeve"]},
    TABLE: {"instruction": "Find me solid wood dining table", "instruction_attributes": ["solid wood"]},
}
HUMAN = {
    HOODIE: [
        {"instruction": "i need a long sleeve hoodie that i can machine wash, in navy blue and size small.",
         "instruction_attributes": ["long sleeve", "machine wash"],
         "instruction_options": ["navy | blue", "small"]},
        # no attributes: the original skips this goal
        {"instruction": "i want a hoodie", "instruction_attributes": [], "instruction_options": []},
    ],
    BOTTLE: [{"instruction": "i'm looking for a leak proof water bottle",
              "instruction_attributes": ["leak proof"], "instruction_options": [], "worker_id": "W1"}],
    TABLE: [{"instruction": "i need a solid wood dining table.", "instruction_attributes": ["solid wood"],
             "instruction_options": []}],
    "B999999999": [{"instruction": "not in the catalog", "instruction_attributes": ["x"],
                    "instruction_options": []}],
}
REAL_NAMES = ("items_shuffle_1000.json", "items_ins_v2_1000.json", "items_human_ins.json")
FULL_NAMES = ("items_shuffle.json", "items_ins_v2.json", "items_human_ins.json")


def write_set(folder: Path, products=RAW_PRODUCTS, attributes=ATTRIBUTES, human=HUMAN,
              names=REAL_NAMES) -> Path:
    """The three files (``None``: left out) written into ``folder`` under ``names``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in zip(names, (products, attributes, human), strict=True):
        if content is not None:
            (folder / name).write_text(json.dumps(content), encoding="utf-8")
    return folder


@pytest.fixture
def tiny(tmp_path) -> Path:
    return write_set(tmp_path / "real")


@pytest.fixture(autouse=True)
def _no_user_data(monkeypatch):
    monkeypatch.delenv("WEBSHOP_DATA", raising=False)


@pytest.fixture(scope="module")
def shipped_human() -> WebShopData:
    return WebShopData.load(SHIPPED)


@pytest.fixture(scope="module")
def shipped_synthetic() -> WebShopData:
    return WebShopData.load(SHIPPED, human_goals=False)


def permuted(items: list) -> list:
    """``items`` in the order of the original's final ``random.seed(233); random.shuffle(goals)``."""
    order = list(range(len(items)))
    random.Random(233).shuffle(order)
    return [items[i] for i in order]


# -- loading the real schemas ----------------------------------------------------------------------


def test_products_load_with_original_fields(tiny):
    products, by_asin, prices = load_products(*(tiny / n for n in REAL_NAMES))
    assert [p["asin"] for p in products] == [HOODIE, BOTTLE, TABLE]
    assert by_asin[HOODIE] is products[0]
    hoodie, bottle, table = products
    assert hoodie["Title"] == hoodie["name"] == "Acme Cotton Hoodie for Men"
    assert hoodie["Description"] == "A warm cotton hoodie."
    assert hoodie["BulletPoints"] == ["Machine wash cold", "Kangaroo pocket"]
    assert hoodie["options"] == {"color": ["black", "navy | blue"], "size": ["small", "large"]}
    assert hoodie["option_to_image"] == {
        "black": "https://img/black.jpg", "navy | blue": None, "small": None, "large": None,
    }
    assert (hoodie["pricing"], hoodie["Price"]) == ([20.33], "$20.33")
    assert hoodie["query"] == "mens hoodie"
    assert (hoodie["Reviews"], hoodie["Rating"], hoodie["MainImage"]) == ([], "N.A.", "https://img/hoodie.jpg")
    assert hoodie["Attributes"] == ["machine wash", "long sleeve", "cotton"]
    assert "brand" not in hoodie and "list_price" not in hoodie
    assert len(hoodie["instructions"]) == 2 and "instruction_text" not in hoodie
    # a range: both ends kept, the tag formats floats as the original ("$10.5 to $15.0")
    assert (bottle["pricing"], bottle["Price"], bottle["BulletPoints"]) == ([10.5, 15.0], "$10.5 to $15.0",
                                                                            ["Leak proof lid"])
    assert bottle["options"] == {} and bottle["option_to_image"] == {}
    assert table["Attributes"] == ["DUMMY_ATTR"] and table["Price"] == "$985.0"
    assert prices[HOODIE] == 20.33 and prices[TABLE] == 985.0
    assert 10.5 <= prices[BOTTLE] <= 15.0


def test_range_price_is_seeded(tiny):
    files = [tiny / n for n in REAL_NAMES]
    draws = {seed: load_products(*files, seed=seed)[2][BOTTLE] for seed in range(8)}
    assert draws[3] == load_products(*files, seed=3)[2][BOTTLE]
    assert len(set(draws.values())) == 8


def test_num_products_limits_records_before_filtering(tiny):
    files = [tiny / n for n in REAL_NAMES]
    assert [p["asin"] for p in load_products(*files, num_products=1)[0]] == [HOODIE]
    # records 3 to 5 are a long asin, a duplicate and 'nan': nothing more is kept
    assert [p["asin"] for p in load_products(*files, num_products=5)[0]] == [HOODIE, BOTTLE]
    assert load_products(*files, num_products=0)[0] == []


def test_human_goals_follow_the_original(tiny):
    products, _, prices = load_products(*(tiny / n for n in REAL_NAMES))
    goals = build_goals(products, prices)
    texts = ["i need a long sleeve hoodie that i can machine wash, in navy blue and size small",
             "i'm looking for a leak proof water bottle", "i need a solid wood dining table"]
    assert [g["asin"] for g in goals] == permuted([HOODIE, BOTTLE, TABLE])  # the empty-attribute one skipped
    by_asin = {g["asin"]: g for g in goals}
    hoodie, bottle, table = by_asin[HOODIE], by_asin[BOTTLE], by_asin[TABLE]
    # 20.33: caps 30, 40, 50, 60; the larger of two draws is 40, 50 or 60
    assert hoodie["price_upper"] in (40.0, 50.0, 60.0)
    cap_text = f", and price lower than {hoodie['price_upper']:.2f} dollars"
    assert hoodie["instruction_text"] == texts[0] + cap_text
    assert bottle["price_upper"] in (30.0, 40.0, 50.0)
    assert bottle["instruction_text"].startswith(texts[1] + ", and price lower than ")
    # 985: only the cap 990 is above it -> no cap and no price text
    assert (table["instruction_text"], table["price_upper"]) == (texts[2], NO_PRICE_CAP)
    assert hoodie["goal_options"] == ["navy | blue", "small"]
    assert hoodie["attributes"] == ["long sleeve", "machine wash"]
    assert {g["weight"] for g in goals} == {1.0}
    assert {k: hoodie[k] for k in ("category", "query", "name", "product_category")} == {
        "category": "fashion", "query": "mens hoodie", "name": "Acme Cotton Hoodie for Men",
        "product_category": "Clothing › Men › Hoodies"}


def test_synthetic_goals_follow_the_original(tiny):
    products, _, prices = load_products(*(tiny / n for n in REAL_NAMES), human_goals=False)
    goals = build_goals(products, prices, human_goals=False)
    combos = [{"color": c, "size": s} for c in ("black", "navy | blue") for s in ("small", "large")]
    expected_options = permuted([*combos, {}, {}])
    assert [g["goal_options"] for g in goals] == expected_options
    hoodies = [g for g in goals if g["asin"] == HOODIE]
    upper = hoodies[0]["price_upper"]
    assert {g["price_upper"] for g in hoodies} == {upper}  # one draw per product
    assert upper in (40.0, 50.0, 60.0)
    first = next(g for g in hoodies if g["goal_options"] == combos[0])
    assert first["instruction_text"] == (
        "Find me long sleeve hoodie that i can machine wash with color: black, "
        f"and size: small, and price lower than {upper:.2f} dollars")
    table = next(g for g in goals if g["asin"] == TABLE)
    assert table["instruction_text"] == "Find me solid wood dining table"
    assert table["price_upper"] == NO_PRICE_CAP
    # goals per attribute: machine wash 4, long sleeve 5, leak proof 1, solid wood 1
    weights = {g["asin"]: g["weight"] for g in goals}
    assert weights == {HOODIE: pytest.approx((1 / 4 + 1 / 5) / 2), BOTTLE: pytest.approx((1 + 1 / 5) / 2),
                       TABLE: 1.0}


def test_price_caps_are_seeded(tiny):
    products, _, prices = load_products(*(tiny / n for n in REAL_NAMES))
    def hoodie_cap(seed):
        return next(g for g in build_goals(products, prices, seed=seed) if g["asin"] == HOODIE)["price_upper"]

    caps = {seed: hoodie_cap(seed) for seed in range(30)}
    assert caps[7] == hoodie_cap(7)
    assert set(caps.values()) == {40.0, 50.0, 60.0}  # the larger of 2 draws among 30, 40, 50, 60


@pytest.mark.parametrize("names", [REAL_NAMES, FULL_NAMES])
def test_data_folder_via_argument_and_environment(tmp_path, monkeypatch, names):
    folder = write_set(tmp_path / "set", names=names)
    data = WebShopData.load(folder)
    assert data.source == str(folder) and len(data.products) == 3 and len(data.goals) == 3
    assert (data.train_ids, data.test_ids) == ([1, 2], [0])
    monkeypatch.setenv("WEBSHOP_DATA", str(folder))
    from_env = WebShopData.load(human_goals=False)
    assert from_env.source == str(folder) and len(from_env.goals) == 6
    assert from_env.search.search("leak proof bottle")[0] == BOTTLE


def test_default_is_the_shipped_set():
    assert WebShopData.load(num_products=20).source == str(SHIPPED)


# -- bad input ---------------------------------------------------------------------------------------


def _broken(change) -> tuple[list, dict, dict]:
    products, attributes, human = copy.deepcopy((RAW_PRODUCTS, ATTRIBUTES, HUMAN))
    change(products, attributes, human)
    return products, attributes, human


BAD_SETS = {
    "name missing": (lambda p, a, h: p[0].pop("name"), "items_shuffle_1000.json", "'name'"),
    "name not a string": (lambda p, a, h: p[1].update(name=["x"]), "B000000002", "'name'"),
    "asin not a string": (lambda p, a, h: p[0].update(asin=12), "product 0", "'asin'"),
    "pricing missing": (lambda p, a, h: p[0].pop("pricing"), "items_shuffle_1000.json", "'pricing'"),
    "pricing without $": (lambda p, a, h: p[0].update(pricing="20.33"), "B000000001", "'pricing'"),
    "pricing a number": (lambda p, a, h: p[0].update(pricing=20.33), "B000000001", "'pricing'"),
    "pricing not a number": (lambda p, a, h: p[0].update(pricing="$ask"), "B000000001", "'pricing'"),
    "options not a list": (lambda p, a, h: p[0]["customization_options"].update(Color="red"), "B000000001",
                           "'customization_options.Color'"),
    "option without value": (lambda p, a, h: p[0]["customization_options"]["Size"].append({"image": None}),
                             "B000000001", "'customization_options.Size'"),
    "images empty": (lambda p, a, h: p[0].update(images=[]), "B000000001", "'images'"),
    "bullets a number": (lambda p, a, h: p[0].update(small_description=3), "B000000001",
                         "'small_description'"),
    "product not an object": (lambda p, a, h: p.append("B000000009"), "product 6", "'<record>'"),
    "attributes not a list": (lambda p, a, h: a[HOODIE].update(attributes="cotton"), "items_ins_v2_1000.json",
                              "'attributes'"),
    "human options missing": (lambda p, a, h: h[BOTTLE][0].pop("instruction_options"), "items_human_ins.json",
                              "'instruction_options'"),
    "human attributes not a list": (lambda p, a, h: h[TABLE][0].update(instruction_attributes="solid wood"),
                                    "items_human_ins.json", "'instruction_attributes'"),
    "human instruction missing": (lambda p, a, h: h[HOODIE][1].pop("instruction"), "instruction 1",
                                  "'instruction'"),
}


@pytest.mark.parametrize("case", sorted(BAD_SETS))
def test_malformed_records_name_file_and_field(tmp_path, case):
    change, where, field = BAD_SETS[case]
    folder = write_set(tmp_path / "bad", *_broken(change))
    with pytest.raises(WebShopDataError) as err:
        WebShopData.load(folder)
    assert where in str(err.value) and field in str(err.value)
    assert str(folder) in str(err.value)


@pytest.mark.parametrize("change, field", [
    (lambda p, a, h: a[BOTTLE].update(instruction_attributes=[]), "'instruction_attributes'"),
    (lambda p, a, h: a.pop(TABLE), "'<entry>'"),
    (lambda p, a, h: a[TABLE].update(instruction=7), "'instruction'"),
])
def test_malformed_synthetic_instructions(tmp_path, change, field):
    folder = write_set(tmp_path / "bad", *_broken(change))
    with pytest.raises(WebShopDataError, match=re.escape(field)) as err:
        WebShopData.load(folder, human_goals=False)
    assert "items_ins_v2_1000.json" in str(err.value)


def test_unreadable_files(tmp_path, tiny):
    (tiny / "items_shuffle_1000.json").write_text('[{"asin": "B1",', encoding="utf-8")
    with pytest.raises(WebShopDataError, match=r"items_shuffle_1000\.json: invalid JSON"):
        WebShopData.load(tiny)
    (tiny / "items_shuffle_1000.json").write_text('{"asin": "B1"}', encoding="utf-8")
    with pytest.raises(WebShopDataError, match="top level must be a JSON list, got dict"):
        WebShopData.load(tiny)
    with pytest.raises(WebShopDataError, match=r"missing\.json: cannot read"):
        load_products(tmp_path / "missing.json", tiny / "items_ins_v2_1000.json", human_goals=False)


def test_missing_files_and_folders(tmp_path):
    with pytest.raises(WebShopDataError, match="does not exist"):
        WebShopData.load(tmp_path / "nowhere")
    write_set(tmp_path / "files")
    with pytest.raises(WebShopDataError, match="is not a directory"):
        WebShopData.load(tmp_path / "files" / REAL_NAMES[0])
    folder = write_set(tmp_path / "no_items", products=None)
    with pytest.raises(WebShopDataError, match=r"no items_shuffle_1000\.json or items_shuffle\.json"):
        WebShopData.load(folder)
    folder = write_set(tmp_path / "no_human", human=None)
    with pytest.raises(WebShopDataError, match="no items_human_ins.json"):
        WebShopData.load(folder)
    assert len(WebShopData.load(folder, human_goals=False).goals) == 6
    with pytest.raises(WebShopDataError, match="human_path"):
        load_products(folder / REAL_NAMES[0], folder / REAL_NAMES[1])


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_bad_arguments(tiny, bad):
    with pytest.raises(ValueError, match="num_products"):
        load_products(*(tiny / n for n in REAL_NAMES), num_products=bad)
    with pytest.raises(ValueError, match="n_goals"):
        split_goals(bad)
    with pytest.raises(ValueError, match="n_products"):
        ws_catalog.generate_catalog(0, bad)


def test_unknown_split_name(shipped_human):
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        shipped_human.split("valid")


# -- split -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_goals, n_test", [(0, 0), (1, 1), (10, 1), (11, 2), (432, 44), (999, 100),
                                             (1000, 500), (1663, 500), (12087, 500)])
def test_split_sizes(n_goals, n_test):
    train, test = split_goals(n_goals)
    assert test == list(range(n_test)) and train == list(range(n_test, n_goals))


@given(st.integers(min_value=0, max_value=30_000))
def test_split_partitions_goals(n_goals):
    train, test = split_goals(n_goals)
    assert test + train == list(range(n_goals))
    assert len(test) == (500 if n_goals >= 1000 else math.ceil(n_goals / 10))


# -- the shipped synthetic catalog -------------------------------------------------------------------


def test_shipped_files_equal_the_generator():
    generated = ws_catalog.generate_catalog(seed=0, n_products=300)
    for name, content in generated.files().items():
        assert json.loads((SHIPPED / name).read_text(encoding="utf-8")) == content, name


def test_cli_writes_the_shipped_files_byte_for_byte(tmp_path, capsys):
    ws_catalog.main(["--out", str(tmp_path / "out"), "--seed", "0", "--n-products", "300"])
    assert "items_shuffle.json" in capsys.readouterr().out
    for name in ws_catalog.CATALOG_FILES:
        assert (tmp_path / "out" / name).read_bytes() == (SHIPPED / name).read_bytes(), name


def test_generator_depends_on_seed_and_keeps_products_when_growing():
    small, large = ws_catalog.generate_catalog(0, 45), ws_catalog.generate_catalog(0, 300)
    by_asin = {p["asin"]: p for p in large.items_shuffle}
    assert all(by_asin[p["asin"]] == p for p in small.items_shuffle)
    other = ws_catalog.generate_catalog(1, 45)
    assert {p["asin"] for p in other.items_shuffle}.isdisjoint(by_asin)


def test_shipped_catalog_shape(shipped_human):
    products = shipped_human.products
    assert len(products) >= 250 and len({p["asin"] for p in products}) == len(products)
    assert all(re.fullmatch(r"B0[0-9A-Z]{8}", p["asin"]) for p in products)
    categories = Counter(p["category"] for p in products)
    assert len(categories) >= 10 and min(categories.values()) >= 10
    paths = Counter(p["product_category"] for p in products)
    assert len(paths) >= 20 and min(paths.values()) >= 5
    assert all(len(p["product_category"].split(" › ")) >= 3 for p in products)
    assert min(Counter(p["query"] for p in products).values()) >= 3
    n_without_options = sum(not p["options"] for p in products)
    n_ranges = sum(len(p["pricing"]) == 2 for p in products)
    assert 0.1 * len(products) <= n_without_options <= 0.4 * len(products)
    assert n_ranges >= 0.1 * len(products)
    assert any(" | " in value for p in products for values in p["options"].values() for value in values)
    assert any(price > 990 for price in shipped_human.prices.values())  # goals without a price cap exist
    attribute_use = Counter(a for p in products for a in p["Attributes"])
    assert "DUMMY_ATTR" not in attribute_use and sum(n >= 10 for n in attribute_use.values()) >= 20


def test_shipped_human_goals_read_like_the_real_ones(shipped_human):
    raw = json.loads((SHIPPED / "items_human_ins.json").read_text(encoding="utf-8"))
    instructions = [i for entries in raw.values() for i in entries]
    n_empty = sum(not i["instruction_attributes"] for i in instructions)
    assert 0 < n_empty < 0.1 * len(instructions)
    goals = shipped_human.goals
    assert len(goals) == len(instructions) - n_empty
    opener = re.compile(r"(i'm|im|i am|i need|i want|i would|i'd|looking|can you|get me|help me|find me) ")
    assert all(opener.match(g["instruction_text"]) for g in goals)
    assert all(g["instruction_text"] == g["instruction_text"].lower() for g in goals)
    for goal in goals:
        product = shipped_human.product_by_asin[goal["asin"]]
        assert goal["attributes"] and set(goal["attributes"]) <= set(product["Attributes"])
        assert set(goal["goal_options"]) <= {v for vs in product["options"].values() for v in vs}
    assert sum(bool(g["goal_options"]) for g in goals) > 0.5 * len(goals)
    assert Counter(len(g["attributes"]) for g in goals).keys() >= {1, 2, 3}


def test_shipped_goals_have_distractors_and_are_findable(shipped_human):
    data = shipped_human
    found, distracted = 0, 0
    for goal in data.goals:
        query = goal["instruction_text"].split(", and price lower than")[0]
        results = data.search.search(query)
        found += goal["asin"] in results[:10]
        rivals = [data.product_by_asin[a] for a in results if a != goal["asin"]]
        distracted += any(p["product_category"] == goal["product_category"]
                          and set(goal["attributes"]) & set(p["Attributes"]) for p in rivals)
    assert found >= 0.9 * len(data.goals)  # search works on these instructions ...
    assert distracted >= 0.9 * len(data.goals)  # ... and shows same-type products sharing goal attributes


def test_shipped_goal_counts_and_splits(shipped_human, shipped_synthetic):
    n_human = len(shipped_human.goals)
    assert n_human < 1000
    assert (len(shipped_human.test_ids), len(shipped_human.train_ids)) == (
        math.ceil(n_human / 10), n_human - math.ceil(n_human / 10))
    synthetic = shipped_synthetic.goals
    combinations = [math.prod(len(v) for v in p["options"].values()) for p in shipped_synthetic.products]
    assert len(synthetic) == sum(combinations)
    assert len(synthetic) >= 1000 and len(shipped_synthetic.test_ids) == 500
    assert all(0 < g["weight"] <= 1 for g in synthetic) and len({g["weight"] for g in synthetic}) > 10
    assert all(isinstance(g["goal_options"], dict) for g in synthetic)
    assert all(g["instruction_text"].startswith("Find me ") for g in synthetic)


# -- determinism across processes ------------------------------------------------------------------

# A fresh interpreter that imports only the WebShop modules (the packages above them are stubbed, so
# torch is not imported): it prints the digests of goals, prices and the test split.
_DIGEST_SCRIPT = """
import hashlib, json, sys, types
for name, path in zip(("torchrl_gagpo", "torchrl_gagpo.envs", "torchrl_gagpo.envs.webshop"), sys.argv[1:]):
    sys.modules[name] = types.ModuleType(name)
    sys.modules[name].__path__ = [path]
from torchrl_gagpo.envs.webshop.data import WebShopData
digests = {}
for human_goals in (True, False):
    data = WebShopData.load(human_goals=human_goals)
    blob = json.dumps([data.goals, data.prices, data.test_ids], sort_keys=True)
    digests[str(human_goals)] = hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()
print(json.dumps(digests))
"""


def goal_digests(seed: int = 0) -> dict[str, str]:
    digests = {}
    for human_goals in (True, False):
        data = WebShopData.load(human_goals=human_goals, seed=seed)
        blob = json.dumps([data.goals, data.prices, data.test_ids], sort_keys=True)
        digests[str(human_goals)] = hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()
    return digests


def test_goals_and_prices_identical_across_processes():
    packages = [str(Path(module.__file__).parent) for module in (torchrl_gagpo, torchrl_gagpo.envs, ws_data)]
    runs = [
        subprocess.Popen([sys.executable, "-c", _DIGEST_SCRIPT, *packages], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONHASHSEED": str(hash_seed)})
        for hash_seed in (1, 2)
    ]
    outputs = [json.loads(run.communicate(timeout=120)[0]) for run in runs]
    assert all(run.returncode == 0 for run in runs)
    assert outputs[0] == outputs[1] == goal_digests()
    assert goal_digests(seed=1) != goal_digests()  # the seed does change prices and caps


# -- search ------------------------------------------------------------------------------------------


def test_document_text_and_analyzer(tiny):
    products, _, _ = load_products(*(tiny / n for n in REAL_NAMES))
    assert document_text(products[0]) == (
        "acme cotton hoodie for men a warm cotton hoodie. machine wash cold color: black, navy | blue, "
        "and size: small, large")
    assert analyze("The women's running shoes, size 8.5 in 1,000 pieces") == [
        "women", "run", "shoe", "size", "8.5", "1,000", "piec"]


def test_title_query_finds_its_product_first(shipped_human):
    search = shipped_human.search
    assert all(search.search(p["Title"])[0] == p["asin"] for p in shipped_human.products)


def test_search_limits_and_empty_queries(shipped_human):
    search = shipped_human.search
    full = search.search("sulfate free shampoo for dry hair")
    assert len(full) == 50 and search.search("sulfate free shampoo for dry hair", k=3) == full[:3]
    assert search.search(["sulfate", "free", "shampoo", "for", "dry", "hair"]) == full
    assert search.search("cookie") and all(
        "cookies" in shipped_human.product_by_asin[a]["Title"].lower() for a in search.search("cookie")[:5])
    for query in ("", "   ", "the of and with", "zzzqqq", []):
        assert search.search(query) == []
    assert search.search("shampoo", k=0) == []
    with pytest.raises(ValueError, match="k must be"):
        search.search("shampoo", k=-1)
    assert BM25Search([]).search("shampoo") == []


def test_search_returns_only_matching_products_in_stable_order():
    def product(asin, title):
        return {"asin": asin, "Title": title, "Description": "", "BulletPoints": ["plain"], "options": {}}

    products = [product("B3", "red mug"), product("B1", "red mug"), product("B2", "blue plate"),
                product("B4", "red mug")]
    assert BM25Search(products).search("red") == ["B3", "B1", "B4"]  # equal scores: catalog order
    assert BM25Search(products[::-1]).search("red") == ["B4", "B1", "B3"]
    assert BM25Search(products).search("plate") == ["B2"]


def test_search_is_deterministic_and_fast(shipped_human):
    start = time.perf_counter()
    rebuilt = BM25Search(shipped_human.products)
    assert time.perf_counter() - start < 1.0
    for goal in shipped_human.goals[:100]:
        query = goal["instruction_text"]
        assert rebuilt.search(query) == shipped_human.search.search(query)


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
