"""Seeded synthetic WebShop catalog, written in the original data schemas.

The real WebShop data (1.18M scraped products, Google Drive only) cannot be shipped, so
the package carries a synthetic stand-in generated here: by default 300 products over 10
departments and 30 product types (see :mod:`._vocabulary`), in the three files and
schemas that the original ``load_products`` reads:

* ``items_shuffle.json``: a list of products ``{asin, name, full_description,
  small_description, pricing ("$x" or "$x - $y"), customization_options
  ({Name: [{value, image}]}, empty for some products), images, category, query,
  product_category ("A › B › C")}``;
* ``items_ins_v2.json``: ``{asin: {attributes, instruction, instruction_attributes}}``,
  the synthetic instruction of every product;
* ``items_human_ins.json``: ``{asin: [{instruction, instruction_attributes,
  instruction_options}]}``, instructions written the way the human ones read
  ("i'm looking for ...", "i need ..."), with a few empty attribute lists as in the
  real file (the loader skips those goals).

Products of one type share a category path and one of two search queries, and types of
one department share attributes, so search results and purchases have realistic distractors.
The output depends only on ``seed`` and ``n_products`` (each product draws from
``random.Random(f"webshop/catalog/{seed}/{index}")``), and the files are written
with sorted keys, one record per line. Regenerate the shipped files with::

    python -m torchrl_gagpo.envs.webshop.catalog --out envs/webshop/data --seed 0 --n-products 300

Example:
    >>> catalog = generate_catalog(seed=0, n_products=30)
    >>> len(catalog.items_shuffle), len({p["category"] for p in catalog.items_shuffle})
    (30, 10)
    >>> sorted(catalog.items_ins_v2[catalog.items_shuffle[0]["asin"]])
    ['attributes', 'instruction', 'instruction_attributes']
"""

from __future__ import annotations

import argparse
import json
import random
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ._vocabulary import (
    ATTRIBUTE_AFTER_NOUN,
    BRANDS,
    GENERIC_FACTS,
    OPENERS,
    OPTION_PHRASES,
    PRODUCT_TYPES,
    ProductType,
)

__all__ = ["CATALOG_FILES", "Catalog", "format_catalog_file", "generate_catalog", "main", "write_catalog"]

#: File names of the shipped catalog (the full-size names of the original data).
CATALOG_FILES = ("items_shuffle.json", "items_ins_v2.json", "items_human_ins.json")
DEFAULT_SEED = 0
DEFAULT_N_PRODUCTS = 300

_ASIN_CHARS = string.digits + string.ascii_uppercase
_CENTS = (".99", ".49", ".95", ".00", ".89", ".97", ".50")
_N_INSTRUCTIONS = ((0, 1, 2, 3), (0.1, 0.45, 0.3, 0.15))  # human instructions per product, and weights
_EMPTY_ATTRIBUTES_RATE = 0.03  # the real file has instructions whose attribute list is empty


@dataclass(frozen=True)
class Catalog:
    """The three data files of a catalog, as parsed JSON."""

    items_shuffle: list[dict]
    items_ins_v2: dict[str, dict]
    items_human_ins: dict[str, list[dict]]

    def files(self) -> dict[str, object]:
        """``{file name: content}`` in the order of :data:`CATALOG_FILES`."""
        contents = (self.items_shuffle, self.items_ins_v2, self.items_human_ins)
        return dict(zip(CATALOG_FILES, contents, strict=True))


def generate_catalog(seed: int = DEFAULT_SEED, n_products: int = DEFAULT_N_PRODUCTS) -> Catalog:
    """Generate ``n_products`` products (cycling over the 30 product types) from ``seed``.

    Example:
        >>> generate_catalog(seed=1, n_products=5) == generate_catalog(seed=1, n_products=5)
        True
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if isinstance(n_products, bool) or not isinstance(n_products, int) or n_products < 1:
        raise ValueError(f"n_products must be a positive int, got {n_products!r}")
    brand_orders = [
        random.Random(f"webshop/catalog/{seed}/brands/{t}").sample(brands, len(brands))
        for t, brands in enumerate(BRANDS[ptype.category] for ptype in PRODUCT_TYPES)
    ]
    items, ins_v2, human = [], {}, {}
    asins: set[str] = set()
    for index in range(n_products):
        rng = random.Random(f"webshop/catalog/{seed}/{index}")
        type_index, rank = index % len(PRODUCT_TYPES), index // len(PRODUCT_TYPES)
        ptype = PRODUCT_TYPES[type_index]
        brand = brand_orders[type_index][rank % len(brand_orders[type_index])]
        asin = _new_asin(rng, asins)
        product, attributes = _product(rng, ptype, rank, asin, brand)
        items.append(product)
        ins_v2[asin] = _synthetic_instruction(rng, ptype, attributes)
        instructions = _human_instructions(rng, ptype, product, brand, attributes)
        if instructions:
            human[asin] = instructions
    random.Random(f"webshop/catalog/{seed}/order").shuffle(items)
    return Catalog(items, ins_v2, human)


def format_catalog_file(content: list | dict) -> str:
    """Stable JSON text of a catalog file: sorted keys, one product (or asin) per line.

    Example:
        >>> print(format_catalog_file({"B2": [1], "B1": {"b": 1, "a": 2}}), end="")
        {
        "B1": {"a": 2, "b": 1},
        "B2": [1]
        }
    """
    def dump(obj: object) -> str:
        return json.dumps(obj, sort_keys=True, ensure_ascii=False)

    if isinstance(content, list):
        lines = [dump(item) for item in content]
        return "[\n" + ",\n".join(lines) + "\n]\n"
    lines = [f"{dump(key)}: {dump(content[key])}" for key in sorted(content)]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def write_catalog(out_dir: str | Path, *, seed: int = DEFAULT_SEED,
                  n_products: int = DEFAULT_N_PRODUCTS) -> dict[str, Path]:
    """Generate a catalog and write its three files into ``out_dir`` (created); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, content in generate_catalog(seed, n_products).files().items():
        paths[name] = out / name
        paths[name].write_text(format_catalog_file(content), encoding="utf-8")
    return paths


# -- one product ---------------------------------------------------------------------------------


def _new_asin(rng: random.Random, taken: set[str]) -> str:
    while True:
        asin = "B0" + "".join(rng.choice(_ASIN_CHARS) for _ in range(8))
        if asin not in taken:
            taken.add(asin)
            return asin


def _title_case(phrase: str) -> str:
    return " ".join(word[:1].upper() + word[1:] for word in phrase.split())


def _price_text(value: float) -> str:
    return f"${value:,.2f}"


def _pricing(rng: random.Random, ptype: ProductType, has_options: bool) -> str:
    low, high = ptype.price
    base = int(low + (high - low) * rng.random() ** 1.5) + float(rng.choice(_CENTS))
    if has_options and rng.random() < 0.35:
        top = int(base * rng.uniform(1.2, 2.2)) + float(rng.choice(_CENTS))
        return f"{_price_text(base)} - {_price_text(top)}"
    return _price_text(base)


def _options(rng: random.Random, ptype: ProductType) -> dict[str, list[str]]:
    if not ptype.options or rng.random() < ptype.no_options:
        return {}
    names = list(ptype.options)
    if len(names) > 1 and rng.random() < 0.25:
        names.remove(rng.choice(names))
    chosen = {}
    for name in names:
        pool = ptype.options[name]
        picked = set(rng.sample(pool, rng.randint(2, min(len(pool), 5))))
        chosen[name] = [value for value in pool if value in picked]
    return chosen


def _product(
    rng: random.Random, ptype: ProductType, rank: int, asin: str, brand: str
) -> tuple[dict, list[str]]:
    noun, qualifier = rng.choice(ptype.nouns), rng.choice(ptype.qualifiers)
    purpose = rng.choice(ptype.purposes)
    attributes = rng.sample(ptype.attributes, min(rng.randint(3, 5), len(ptype.attributes)))
    first, second = (_title_case(a) for a in attributes[:2])
    title = rng.choice((
        f"{brand} {qualifier} {noun} {purpose} - {first}, {second}",
        f"{brand} {noun}, {qualifier} {purpose}, {first} and {second}",
        f"{brand} {first} {qualifier} {noun} {purpose}",
    ))
    facts = rng.sample(ptype.facts, len(ptype.facts))
    adjectives = [a for a in attributes if a not in ATTRIBUTE_AFTER_NOUN]
    description = [f"{brand} {qualifier} {noun} {purpose}.", *(f"{fact}." for fact in facts[:3])]
    if adjectives:
        description.append(f"Highlights: {', '.join(adjectives)}.")
    description.append(f"{rng.choice(GENERIC_FACTS)}.")
    pairs = zip(attributes, facts[: len(attributes)], strict=True)
    bullets = [f"{attribute.upper()} - {fact}." for attribute, fact in pairs]
    bullets = bullets[: rng.randint(3, len(bullets))]
    if rng.random() < 0.5:
        bullets.append(f"{rng.choice(GENERIC_FACTS)}.")
    options = _options(rng, ptype)
    product = {
        "asin": asin,
        "category": ptype.category,
        "customization_options": {
            name: [{"image": None, "value": value} for value in values] for name, values in options.items()
        },
        "full_description": " ".join(description),
        "images": [f"https://images.webshop.invalid/{asin}/main.jpg"],
        "name": title,
        "pricing": _pricing(rng, ptype, bool(options)),
        "product_category": " › ".join(ptype.path),
        "query": ptype.queries[rank % len(ptype.queries)],
        "small_description": bullets,
    }
    return product, attributes


# -- instructions --------------------------------------------------------------------------------


def _join(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _with_article(type_article: str, noun: str, phrase: str) -> str:
    """``phrase`` (ending in ``noun``) with the article a shopper would use: "some cookies", "an easy ...".

    Plural nouns take "some" (or the type's "a pair of"); singular ones take "a"/"an", or "some"
    where the type's article is "some" (mass nouns such as tea or litter).
    """
    plural = noun.endswith("s") and not noun.endswith("ss")
    if plural:
        article = "a pair of" if type_article == "a pair of" else "some"
    elif type_article == "some":
        article = "some"
    else:
        article = "an" if phrase[:1] in "aeiou" else "a"
    return f"{article} {phrase}"


def _synthetic_instruction(rng: random.Random, ptype: ProductType, attributes: list[str]) -> dict:
    chosen = rng.sample(attributes, rng.randint(1, min(3, len(attributes))))
    before = [a for a in chosen if a not in ATTRIBUTE_AFTER_NOUN]
    after = [ATTRIBUTE_AFTER_NOUN[a] for a in chosen if a in ATTRIBUTE_AFTER_NOUN]
    words = ["Find me", ", ".join(before), rng.choice(ptype.goal_nouns), ", ".join(after)]
    return {
        "attributes": attributes,
        "instruction": " ".join(word for word in words if word),
        "instruction_attributes": chosen,
    }


def _human_instructions(
    rng: random.Random, ptype: ProductType, product: dict, brand: str, attributes: list[str]
) -> list[dict]:
    options = {
        name.lower(): [item["value"] for item in values]
        for name, values in product["customization_options"].items()
    }
    instructions = []
    for _ in range(rng.choices(*_N_INSTRUCTIONS)[0]):
        chosen = rng.sample(attributes, min(rng.choice((1, 1, 2, 2, 2, 3)), len(attributes)))
        n_options = min(rng.choice((0, 1, 1, 2, 2, 2)), len(options))
        picked = {name: rng.choice(options[name]) for name in rng.sample(sorted(options), n_options)}
        text = _human_text(rng, ptype, brand, chosen, picked)
        instructions.append({
            "instruction": text,
            "instruction_attributes": [] if rng.random() < _EMPTY_ATTRIBUTES_RATE else chosen,
            # as the site shows them (the loaded form); the text names them as a shopper would
            "instruction_options": [value.strip().replace("/", " | ").lower() for value in picked.values()],
        })
    return instructions


def _human_text(rng: random.Random, ptype: ProductType, brand: str, attributes: list[str],
                options: dict) -> str:
    noun = rng.choice(ptype.goal_nouns)
    if rng.random() < 0.12:
        noun = f"{brand.lower()} {noun}"
    before, after, adjectives_after = [], [], []
    for attribute in attributes:
        if attribute in ATTRIBUTE_AFTER_NOUN:
            after.append(ATTRIBUTE_AFTER_NOUN[attribute])
        elif not before and rng.random() < 0.7:
            before.append(attribute)
        else:
            adjectives_after.append(attribute)
    if adjectives_after:
        after.append("that is " + _join(adjectives_after))
    text = f"{rng.choice(OPENERS)} {_with_article(ptype.article, noun, ' '.join([*before, noun]))}"
    for i, phrase in enumerate(after):
        text += (" " if i == 0 else rng.choice((" and ", ", ", " and also "))) + phrase
    if options:
        phrases = [rng.choice(OPTION_PHRASES[name]).format(v=v.lower()) for name, v in options.items()]
        text += rng.choice((", ", " ", ". i want it ")) + _join(phrases)
    return text + rng.choice(("", "", "", "."))


def main(argv: Sequence[str] | None = None) -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--out", required=True, help="output directory (created)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--n-products", type=int, default=DEFAULT_N_PRODUCTS)
    args = parser.parse_args(argv)
    paths = write_catalog(args.out, seed=args.seed, n_products=args.n_products)
    print(f"wrote {', '.join(map(str, paths.values()))}")  # noqa: T201


if __name__ == "__main__":
    main()
