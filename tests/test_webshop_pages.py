"""WebShop pages: the HTML site's pages read back exactly as the page model's text and clickables.

Golden strings pin the original's " [SEP] " layout of every page kind (environments.md §2.3);
the round trips check that ``html_to_text``/``html_clickables`` (the original's parsing) of
``render_html(page)`` give ``page_text(page)``/``clickables(page)``. Hand-written products only.
"""

from __future__ import annotations

import base64
import hashlib
import re

import pytest

pytest.importorskip("bs4")
pytest.importorskip("jinja2")

from torchrl_gagpo.envs.webshop.html import (  # noqa: E402
    OPTION_SCRIPT_CSP,
    html_clickables,
    html_to_text,
    parse_html,
    render_error_page,
    render_html,
)
from torchrl_gagpo.envs.webshop.pages import Page, clickables, has_search_bar, page_text  # noqa: E402

INSTRUCTION = "i need a red mug, and price lower than 20.00 dollars"
HEAD = f"Instruction: [SEP] {INSTRUCTION} [SEP] Back to Search"

MUG = {
    "asin": "B000000001",
    "Title": "Red Ceramic Mug",
    "Price": "$8.09",
    "Rating": "N.A.",
    "options": {"color": ["red", "blue | green"], "size": ["12 oz", "16 oz"]},
    "Description": "A sturdy mug.",
    "BulletPoints": ["dishwasher safe", "holds 12 oz"],
    "Reviews": [
        {"title": "great", "score": 5, "body": "love it"},
        {"title": "meh", "score": "3", "body": "ok"},
    ],
    "Attributes": ["dishwasher safe", "microwave safe"],
    "category": "kitchen",
    "query": "coffee mug",
    "product_category": "Home \u203a Kitchen \u203a Mugs",
}
PLAIN = dict(
    MUG, asin="B000000002", Title="Plain Glass", Price="$3.00 to $4.50", Rating="4.5", options={}, Reviews=[]
)


def _results(page_number, items, total=12):
    return Page(
        "results",
        instruction=INSTRUCTION,
        keywords=("red", "mug"),
        page=page_number,
        total=total,
        results=tuple(items),
    )


PAGES = {
    "start": Page("start", instruction=INSTRUCTION),
    "results page 1": _results(1, [MUG, PLAIN]),
    "results page 2": _results(2, [PLAIN]),
    "results past the end": _results(3, []),
    "item with options": Page("item", instruction=INSTRUCTION, product=MUG, options=(("size", "16 oz"),)),
    "item without options": Page("item", instruction=INSTRUCTION, product=PLAIN),
    "item with attributes": Page("item", instruction=INSTRUCTION, product=MUG, show_attrs=True),
    "description": Page("description", instruction=INSTRUCTION, product=MUG),
    "features": Page("features", instruction=INSTRUCTION, product=MUG),
    "reviews": Page("reviews", instruction=INSTRUCTION, product=MUG),
    "reviews, none": Page("reviews", instruction=INSTRUCTION, product=PLAIN),
    "attributes": Page("attributes", instruction=INSTRUCTION, product=MUG, show_attrs=True),
    "done": Page("done", product=MUG, options=(("color", "red"), ("size", "12 oz")), score=0.75),
    "done with code": Page("done", product=PLAIN, score=1.0, session="0123abcd"),
    "done, odd option": Page("done", product=MUG, options=(("color", "\u00e9cru <b> & 'x'"),), score=0.0),
}

GOLDEN_TEXT = {
    "start": f"WebShop [SEP] Instruction: [SEP] {INSTRUCTION} [SEP] Search",
    "results page 1": (
        f"{HEAD} [SEP] Page 1 (Total results: 12) [SEP] Next > [SEP] B000000001"
        " [SEP] Red Ceramic Mug [SEP] $8.09 [SEP] B000000002 [SEP] Plain Glass"
        " [SEP] $3.00 to $4.50"
    ),
    "results page 2": (
        f"{HEAD} [SEP] Page 2 (Total results: 12) [SEP] < Prev [SEP] Next > [SEP] B000000002"
        " [SEP] Plain Glass [SEP] $3.00 to $4.50"
    ),
    "results past the end": f"{HEAD} [SEP] Page 3 (Total results: 12) [SEP] < Prev [SEP] Next >",
    "item with options": (
        f"{HEAD} [SEP] < Prev [SEP] color [SEP] red [SEP] blue | green [SEP] size [SEP] 12 oz"
        " [SEP] 16 oz [SEP] Red Ceramic Mug [SEP] Price: $8.09 [SEP] Rating: N.A."
        " [SEP] Description [SEP] Features [SEP] Reviews [SEP] Buy Now"
    ),
    "item without options": (
        f"{HEAD} [SEP] < Prev [SEP] Plain Glass [SEP] Price: $3.00 to $4.50 [SEP] Rating: 4.5"
        " [SEP] Description [SEP] Features [SEP] Reviews [SEP] Buy Now"
    ),
    "item with attributes": (
        f"{HEAD} [SEP] < Prev [SEP] color [SEP] red [SEP] blue | green [SEP] size [SEP] 12 oz"
        " [SEP] 16 oz [SEP] Red Ceramic Mug [SEP] Price: $8.09 [SEP] Rating: N.A."
        " [SEP] Description [SEP] Features [SEP] Reviews [SEP] Attributes [SEP] Buy Now"
    ),
    "description": f"{HEAD} [SEP] < Prev [SEP] A sturdy mug.",
    "features": f"{HEAD} [SEP] < Prev [SEP] dishwasher safe [SEP] holds 12 oz",
    "reviews": f'{HEAD} [SEP] < Prev [SEP] "great" [SEP] 5 [SEP] love it [SEP] "meh" [SEP] 3 [SEP] ok',
    "reviews, none": f"{HEAD} [SEP] < Prev",
    "attributes": (
        f"{HEAD} [SEP] < Prev [SEP] dishwasher safe [SEP] microwave safe [SEP] kitchen"
        " [SEP] coffee mug [SEP] Home \u203a Kitchen \u203a Mugs"
    ),
    "done": (
        "Thank you for shopping with us! [SEP] Your code: [SEP] None"
        " [SEP] (Paste it in your MTurk interface.) [SEP] Purchased [SEP] asin"
        ' [SEP] B000000001 [SEP] options [SEP] {"color": "red", "size": "12 oz"} [SEP] attrs'
        " [SEP] None [SEP] category [SEP] None [SEP] query [SEP] None [SEP] product category"
        " [SEP] None [SEP] Target [SEP] asin [SEP] options [SEP] attrs [SEP] price upper"
        " [SEP] instuction text [SEP] category [SEP] product category [SEP] query [SEP] Goal"
        " [SEP] None [SEP] Reward [SEP] Your score (min 0.0, max 1.0) [SEP] 0.75"
        " [SEP] Reward Details [SEP] None"
    ),
    "done with code": (
        "Thank you for shopping with us! [SEP] Your code: [SEP] 0123abcd"
        " [SEP] (Paste it in your MTurk interface.) [SEP] Purchased [SEP] asin"
        " [SEP] B000000002 [SEP] options [SEP] {} [SEP] attrs [SEP] None [SEP] category"
        " [SEP] None [SEP] query [SEP] None [SEP] product category [SEP] None [SEP] Target"
        " [SEP] asin [SEP] options [SEP] attrs [SEP] price upper [SEP] instuction text"
        " [SEP] category [SEP] product category [SEP] query [SEP] Goal [SEP] None"
        " [SEP] Reward [SEP] Your score (min 0.0, max 1.0) [SEP] 1.0 [SEP] Reward Details"
        " [SEP] None"
    ),
    "done, odd option": (  # the options as JSON with Jinja's ``tojson`` escapes
        "Thank you for shopping with us! [SEP] Your code: [SEP] None"
        " [SEP] (Paste it in your MTurk interface.) [SEP] Purchased [SEP] asin [SEP] B000000001"
        ' [SEP] options [SEP] {"color": "\\u00e9cru \\u003cb\\u003e \\u0026 \\u0027x\\u0027"}'
        " [SEP] attrs [SEP] None [SEP] category [SEP] None [SEP] query [SEP] None [SEP] product category"
        " [SEP] None [SEP] Target [SEP] asin [SEP] options [SEP] attrs [SEP] price upper"
        " [SEP] instuction text [SEP] category [SEP] product category [SEP] query [SEP] Goal"
        " [SEP] None [SEP] Reward [SEP] Your score (min 0.0, max 1.0) [SEP] 0.0"
        " [SEP] Reward Details [SEP] None"
    ),
}

_ITEM_BUTTONS = ["back to search", "< prev", "description", "features", "reviews"]
GOLDEN_CLICKABLES = {
    "start": ["search"],
    "results page 1": ["back to search", "next >", "b000000001", "b000000002"],
    "results page 2": ["back to search", "< prev", "next >", "b000000002"],
    "results past the end": ["back to search", "< prev", "next >"],
    "item with options": [*_ITEM_BUTTONS, "buy now", "red", "blue | green", "12 oz", "16 oz"],
    "item without options": [*_ITEM_BUTTONS, "buy now"],
    "item with attributes": [
        *_ITEM_BUTTONS,
        "attributes",
        "buy now",
        "red",
        "blue | green",
        "12 oz",
        "16 oz",
    ],
    "description": ["back to search", "< prev"],
    "features": ["back to search", "< prev"],
    "reviews": ["back to search", "< prev"],
    "reviews, none": ["back to search", "< prev"],
    "attributes": ["back to search", "< prev"],
    "done": [],
    "done with code": [],
    "done, odd option": [],
}


@pytest.mark.parametrize("name", list(PAGES))
def test_page_text_golden(name):
    assert page_text(PAGES[name]) == GOLDEN_TEXT[name]
    assert clickables(PAGES[name]) == GOLDEN_CLICKABLES[name]
    assert has_search_bar(PAGES[name]) == (name == "start")


@pytest.mark.parametrize("name", list(PAGES))
def test_html_round_trip(name):
    page = PAGES[name]
    html = render_html(page, session_id="0f" * 16)
    assert html_to_text(html) == page_text(page)
    assert html_clickables(html) == {"has_search_bar": has_search_bar(page), "clickables": clickables(page)}
    soup = parse_html(html)  # the parsed form is accepted too (one parse for both, as a benchmark may want)
    assert html_to_text(soup) == page_text(page)
    instruction = soup.find(id="instruction-text")
    assert (instruction is None) == (page.kind == "done")
    if instruction is not None:
        assert instruction.h4.get_text(" ", strip=True) == f"Instruction: {INSTRUCTION}"


@pytest.mark.parametrize("name", list(PAGES))
def test_buttons_and_links_send_their_own_click(name):
    """Every button's command (and link's URL) is ``click[<its text, lower-cased>]`` for this session."""
    soup = parse_html(render_html(PAGES[name], session_id="ab" * 16, base_url="http://h:1"))
    for form in soup.find_all("form"):
        assert form["action"] == f"http://h:1/s/{'ab' * 16}/act" and form["method"] == "post"
    for button in soup.find_all(class_="btn"):  # buttons carry no name, as the original's
        assert not button.has_attr("name")
        if button.get_text() != "Search":
            (command,) = button.find_parent("form").find_all("input", attrs={"name": "cmd"})
            assert command["type"] == "hidden" and command["value"] == f"click[{button.get_text().lower()}]"
    for link in soup.find_all(class_="product-link"):
        assert link["href"] == f"http://h:1/s/{'ab' * 16}/act?cmd=click%5B{link.get_text().lower()}%5D"


def test_start_page_has_the_search_form():
    soup = parse_html(render_html(PAGES["start"], session_id="s1"))
    box = soup.find(id="search_input")
    assert box["name"] == "search_query" and box.has_attr("required")
    assert box.find_parent("form")["action"] == "/s/s1/act"


def test_item_radios_name_value_and_selection():
    soup = parse_html(render_html(PAGES["item with options"], session_id="s1"))
    radios = soup.select('input[type="radio"]')
    assert [(r["name"], r["value"]) for r in radios] == [
        ("color", "red"),
        ("color", "blue | green"),
        ("size", "12 oz"),
        ("size", "16 oz"),
    ]
    assert [r["value"] for r in radios if r.has_attr("checked")] == ["16 oz"]
    assert radios[1]["data-url"] == "/s/s1/act?cmd=click%5Bblue%20%7C%20green%5D"
    for radio in radios:  # each radio's label says its value and points at it
        assert soup.find("label", attrs={"for": radio["id"]}).get_text() == radio["value"]


def test_option_script_is_the_one_the_csp_allows():
    soup = parse_html(render_html(PAGES["item with options"]))
    (script,) = soup.find_all("script")
    digest = base64.b64encode(hashlib.sha256(script.string.encode()).digest()).decode()
    assert OPTION_SCRIPT_CSP == f"'sha256-{digest}'"
    assert all(
        not parse_html(render_html(PAGES[n])).find_all("script") for n in PAGES if not n.startswith("item")
    )


def test_done_page_shows_the_score_outside_hidden_parts():
    soup = parse_html(render_html(PAGES["done"]))
    reward = soup.find(id="reward")
    assert reward.pre.get_text() == "0.75"
    assert not any(
        parent.has_attr("hidden") or "hidden-details" in parent.get("class", [])
        for parent in reward.parents
        if parent.name
    )


def test_values_are_escaped_and_never_evaluated():
    evil = dict(
        MUG,
        Title="<script>alert(1)</script> {{7*7}}",
        Description="../../etc/passwd & <b>bold</b>",
        options={"c<o>": ['"><img src=x onerror=alert(1)>']},
    )
    page = Page("item", instruction="{% for x in [1] %}loop{% endfor %} <i>x</i>", product=evil)
    html = render_html(page, session_id="s1")
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; {{7*7}}" in html
    assert "49" not in html and "<img" not in html
    assert "{% for x in [1] %}loop{% endfor %} &lt;i&gt;x&lt;/i&gt;" in html
    assert html_to_text(html) == page_text(page)
    assert "<script>alert(1)</script> {{7*7}}" in html_to_text(html)
    description = render_html(Page("description", instruction="i", product=evil))
    assert "../../etc/passwd &amp; &lt;b&gt;bold&lt;/b&gt;" in description
    assert html_clickables(html)["clickables"][-1] == '"><img src=x onerror=alert(1)>'


def test_error_page_escapes_its_message():
    html = render_error_page(
        400, "Bad Request", "'<script>{{7*7}}</script>' is not an action", back_url="/s/x"
    )
    assert "&lt;script&gt;{{7*7}}&lt;/script&gt;" in html and "<script>" not in html
    assert parse_html(html).find("a")["href"] == "/s/x"


# -- the original's parsing rules, on hand-written HTML --------------------------------------------


def test_html_to_text_follows_the_original_rules():
    html = (
        "<!DOCTYPE html><html><head><title>T</title><style>p {}</style></head><body>\n"
        "<h4>Instruction: <br>find it</h4><!-- hidden comment --><script>var a = 1;</script>\n"
        "<p>  padded  </p> <span>x</span><pre>\n  </pre><p>a\nb</p></body></html>"
    )
    # the lone " " between </p> and <span> and the whitespace in <pre> give empty parts, as in the original
    assert html_to_text(html) == "Instruction: [SEP] find it [SEP] padded [SEP]  [SEP] x [SEP]  [SEP] a\nb"


def test_html_clickables_order_and_duplicates():
    html = (
        '<a class="product-link">B01</a><button class="btn x">Next &gt;</button>'
        '<input type="radio" name="size" value="Large"><input type="checkbox" value="no">'
        '<button class="btn">next &gt;</button><input type="radio" name="fit" value="b01">'
    )
    assert html_clickables(html) == {"has_search_bar": False, "clickables": ["next >", "b01", "Large"]}
    assert html_clickables('<input id="search_input">')["has_search_bar"] is True


def test_render_html_rejects_what_is_not_a_page():
    with pytest.raises(TypeError, match="needs a Page"):
        render_html({"kind": "start"})


def test_whitespace_between_tags_never_makes_an_empty_part():
    """Whitespace-only text nodes of the site all hold a newline (parsed as a skipped "\\n")."""
    for name, page in PAGES.items():
        html = render_html(page)
        body = html[html.index("<body") :]
        assert not re.search(r">[ \t]+<", body), name
