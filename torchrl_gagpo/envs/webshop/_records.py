"""Reading and checking WebShop data files: one loaded product record, as the original builds it.

Every problem is a :class:`WebShopDataError` whose message names the file, the record and the field.
:func:`product_record` turns one raw ``items_shuffle`` record into the loaded product of the
original ``load_products`` (``Title``, ``Description``, ``BulletPoints``, ``pricing``, ``Price``,
``options``, ``option_to_image``, ``MainImage``, ``Reviews``, ``Rating``, lower-cased ``query``).

Example:
    >>> raw = {"asin": "B000000001", "name": "Mug", "full_description": "Big", "small_description": "Safe",
    ...        "pricing": "$5.00 - $9.50", "customization_options": {"Color": [{"value": "Red/Blue"}]},
    ...        "images": ["img.jpg"], "category": "home", "query": " Mug ", "product_category": "A › B"}
    >>> p = product_record(raw, "B000000001", Path("items.json"), "product 0")
    >>> p["Price"], p["options"], p["BulletPoints"], p["query"]
    ('$5.0 to $9.5', {'color': ['red | blue']}, ['Safe'], 'mug')
"""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path

__all__ = [
    "WebShopDataError", "check", "check_human_instructions", "is_str_list", "product_record", "read_json",
]


class WebShopDataError(ValueError):
    """A WebShop data file is missing or malformed; the message names the file and the field."""


# Fields the original drops from every product record on load.
_DROPPED_KEYS = (
    "product_information", "brand", "brand_url", "list_price", "availability_quantity", "availability_status",
    "total_reviews", "total_answered_questions", "seller_id", "seller_name", "fulfilled_by_amazon",
    "fast_track_message", "aplus_present", "small_description_old",
)


def read_json(path: str | Path, kind: type) -> object:
    """The parsed content of ``path``, which must be a JSON ``kind`` (``list`` or ``dict``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise WebShopDataError(f"{path}: cannot read WebShop data file ({err.strerror or err})") from err
    except UnicodeDecodeError as err:
        raise WebShopDataError(f"{path}: not UTF-8 text ({err})") from None
    try:
        content = json.loads(text)
    except json.JSONDecodeError as err:
        raise WebShopDataError(f"{path}: invalid JSON ({err})") from err
    except RecursionError:
        raise WebShopDataError(f"{path}: invalid JSON (nested too deeply)") from None
    if not isinstance(content, kind):
        found = type(content).__name__
        raise WebShopDataError(f"{path}: top level must be a JSON {kind.__name__}, got {found}")
    return content


def check(ok: bool, path: Path, where: str, field: str, expected: str, value: object) -> None:
    """Raise a :class:`WebShopDataError` naming ``path``, ``where`` and ``field`` unless ``ok``."""
    if not ok:
        raise WebShopDataError(f"{path}: {where}: field {field!r} must be {expected}, got {value!r:.80}")


def is_str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


_PRICING_FORMAT = 'a string such as "$12.99" or "$5.00 - $9.50"'
#: Prices above this (in dollars) are refused as corrupt: no product costs a trillion dollars.
MAX_PRICE = 1e12


def parse_pricing(pricing: object, path: Path, where: str) -> list[float]:
    """``"$x"`` -> ``[x]``, ``"$x - $y"`` -> ``[x, y]`` (digits and dots of each part, as the original).

    A price above :data:`MAX_PRICE` (such as "$1" and 400 zeros, infinite as a float) is refused.
    """
    if pricing is None or pricing == "":
        return [100.0]  # the original's price for products without one
    check(isinstance(pricing, str), path, where, "pricing", _PRICING_FORMAT, pricing)
    values = []
    for part in pricing.split("$")[1:]:
        try:
            values.append(float(Decimal(re.sub(r"[^\d.]", "", part))))
        except InvalidOperation:
            values = []
            break
    check(bool(values), path, where, "pricing", _PRICING_FORMAT, pricing)
    check(all(v <= MAX_PRICE for v in values), path, where, "pricing", f"at most ${MAX_PRICE:,.0f}", pricing)
    return values[:2]


def parse_options(raw: object, path: Path, where: str) -> tuple[dict[str, list[str]], dict[str, str | None]]:
    """``(options, option_to_image)``: names and values lower-cased, values stripped, "/" as " | "."""
    options: dict[str, list[str]] = {}
    option_to_image: dict[str, str | None] = {}
    if not raw:
        return options, option_to_image
    check(isinstance(raw, dict), path, where, "customization_options", "an object or null", raw)
    for name, contents in raw.items():
        if contents is None:
            continue
        field = f"customization_options.{name}"
        check(isinstance(contents, list), path, where, field, "a list of {value, image}", contents)
        values = []
        for item in contents:
            ok = isinstance(item, dict) and isinstance(item.get("value"), str)
            check(ok, path, where, field, "a list of {value, image}", item)
            value = item["value"].strip().replace("/", " | ").lower()
            values.append(value)
            option_to_image[value] = item.get("image")
        options[name.lower()] = values
    return options, option_to_image


def product_record(raw: dict, asin: str, path: Path, where: str) -> dict:
    """The loaded product of one raw record (other fields kept, the original's dropped ones removed)."""
    for field in ("name", "full_description", "category", "query", "product_category"):
        check(isinstance(raw.get(field), str), path, where, field, "a string", raw.get(field, "<missing>"))
    for field in ("pricing", "customization_options"):
        check(field in raw, path, where, field, "present", "<missing>")
    bullets = raw.get("small_description", "<missing>")
    check(isinstance(bullets, str) or is_str_list(bullets), path, where, "small_description",
          "a string or a list of strings", bullets)
    images = raw.get("images", "<missing>")
    check(isinstance(images, list) and len(images) > 0, path, where, "images", "a non-empty list", images)
    pricing = parse_pricing(raw["pricing"], path, where)
    options, option_to_image = parse_options(raw["customization_options"], path, where)
    product = {key: value for key, value in raw.items() if key not in _DROPPED_KEYS}
    product.update(
        asin=asin,
        Title=raw["name"],
        Description=raw["full_description"],
        Reviews=[],
        Rating="N.A.",
        BulletPoints=list(bullets) if isinstance(bullets, list) else [bullets],
        pricing=pricing,
        Price=f"${pricing[0]}" if len(pricing) == 1 else f"${pricing[0]} to ${pricing[1]}",
        options=options,
        option_to_image=option_to_image,
        MainImage=images[0],
        query=raw["query"].lower().strip(),
    )
    return product


def check_human_instructions(entries: object, path: Path, asin: str) -> list[dict]:
    """``entries`` (the human instructions of ``asin``) after checking their fields."""
    check(isinstance(entries, list), path, f"asin {asin!r}", "<value>", "a list of instructions", entries)
    for k, entry in enumerate(entries):
        where = f"asin {asin!r}, instruction {k}"
        check(isinstance(entry, dict), path, where, "<value>", "an object", entry)
        check(isinstance(entry.get("instruction"), str), path, where, "instruction", "a string",
              entry.get("instruction", "<missing>"))
        for field in ("instruction_attributes", "instruction_options"):
            value = entry.get(field, "<missing>")
            check(is_str_list(value), path, where, field, "a list of strings", value)
    return entries
