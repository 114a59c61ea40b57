"""BM25 product search, standing in for the original's pyserini/Lucene index.

The original indexes one document per product (``search_engine/convert_product_file_format.py``)::

    (Title + " " + Description + " " + BulletPoints[0] + " " + option_text).lower()
    option_text = ", and ".join(f"{name}: {', '.join(values)}" for name, values in options.items())

with pyserini's default English analyzer and Lucene's BM25 (``k1=0.9, b=0.4``), and a search
returns the 50 best asins. :class:`BM25Search` indexes the same text with ``bm25s``
(Lucene's BM25 variant and parameters) and analyses it the way that analyzer does: words
and numbers (``"8.5"``, ``"1,000"`` kept whole), the possessive ``'s`` removed, Lucene's 33
English stopwords dropped, Porter stemming (``snowballstemmer``'s ``porter``, the algorithm of
Lucene's ``PorterStemFilter``). Tokenisation details still differ from Lucene's
``StandardTokenizer`` on rare inputs, so result lists are close to, not identical with,
pyserini's. Only documents with a positive score are returned; equal scores keep catalog order.

Example:
    >>> products = [
    ...     {"asin": "B1", "Title": "Red running shoes", "Description": "", "BulletPoints": [""],
    ...      "options": {}},
    ...     {"asin": "B2", "Title": "Blue yoga mat", "Description": "non slip", "BulletPoints": ["thick"],
    ...      "options": {"color": ["blue", "red"]}},
    ... ]
    >>> search = BM25Search(products)
    >>> search.search("red shoe")
    ['B1', 'B2']
    >>> search.search(["the", "of"])
    []
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from torchrl_gagpo._utils import require

__all__ = ["BM25Search", "analyze", "document_text"]

#: Lucene's BM25 parameters, as pyserini's defaults.
K1 = 0.9
B = 0.4
#: Results the original search returns (SEARCH_RETURN_N).
DEFAULT_K = 50
#: Lucene's English stop words (EnglishAnalyzer.ENGLISH_STOP_WORDS_SET).
STOPWORDS = frozenset((
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it",
    "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these", "they",
    "this", "to", "was", "will", "with",
))
# Numbers with inner separators ("8.5", "1,299.99") stay whole, as in Lucene's StandardTokenizer.
_TOKEN = re.compile(r"\d+(?:[.,]\d+)+|\w+(?:'\w+)*")


def document_text(product: dict) -> str:
    """The searchable text of a loaded product, exactly as the original builds it.

    A product without bullet points contributes an empty first bullet (the original would fail).

    Example:
        >>> document_text({"Title": "Mug", "Description": "Big", "BulletPoints": ["Safe"],
        ...                "options": {"color": ["red", "blue"], "size": ["12 oz"]}})
        'mug big safe color: red, blue, and size: 12 oz'
    """
    options = product.get("options", {})
    option_text = ", and ".join(f"{name}: {', '.join(values)}" for name, values in options.items())
    bullets = product["BulletPoints"]
    first_bullet = bullets[0] if bullets else ""
    return " ".join([product["Title"], product["Description"], first_bullet, option_text]).lower()


class _Analyzer(dict):
    """Lower-case, split, drop possessives and stop words, Porter-stem; maps each word to its term once.

    Words are cached while fewer than ``max_size`` are (``None``: no bound), so that queries of
    never-seen words cannot grow the cache without end.
    """

    def __init__(self, max_size: int | None = None) -> None:
        super().__init__()
        self._stemmer = require("snowballstemmer", "webshop").stemmer("porter")
        self.max_size = max_size

    def __missing__(self, word: str) -> str:
        stripped = word[:-2] if word.endswith("'s") else word
        term = "" if stripped in STOPWORDS else self._stemmer.stemWord(stripped)
        if self.max_size is None or len(self) < self.max_size:
            self[word] = term
        return term

    def __call__(self, text: str) -> list[str]:
        return [term for term in map(self.__getitem__, _TOKEN.findall(text.lower())) if term]


def analyze(text: str) -> list[str]:
    """The index terms of ``text``.

    Example:
        >>> analyze("The women's running shoes, size 8.5")
        ['women', 'run', 'shoe', 'size', '8.5']
    """
    return _Analyzer()(text)


class BM25Search:
    """BM25 index over loaded products; ``search(keywords, k)`` returns the best asins first.

    Args:
        products: loaded products (``asin``, ``Title``, ``Description``, ``BulletPoints``, ``options``).
    """

    #: Query words cached beyond the corpus's own (a bound on memory for any stream of queries).
    QUERY_WORDS_CACHED = 20_000

    def __init__(self, products: Sequence[dict]) -> None:
        bm25s = require("bm25s", "webshop")
        self.asins = [product["asin"] for product in products]
        self._analyze = _Analyzer()
        self._index = None
        if self.asins:
            self._index = bm25s.BM25(k1=K1, b=B, method="lucene")
            corpus = [self._analyze(document_text(product)) for product in products]
            self._index.index(corpus, show_progress=False)
        self._analyze.max_size = len(self._analyze) + self.QUERY_WORDS_CACHED

    def __len__(self) -> int:
        return len(self.asins)

    def search(self, keywords: str | Sequence[str], k: int = DEFAULT_K) -> list[str]:
        """Up to ``k`` asins with a positive score, best first (ties in catalog order).

        ``keywords`` is a string or a list of words (joined with spaces, as the original does).
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"k must be a non-negative int, got {k!r}")
        text = keywords if isinstance(keywords, str) else " ".join(keywords)
        if self._index is None or k == 0:
            return []
        terms = [term for term in self._analyze(text) if term in self._index.vocab_dict]
        if not terms:
            return []
        scores = self._index.get_scores(terms)
        hits = np.flatnonzero(scores > 0)  # in catalog order
        if len(hits) > k:  # keep every hit scoring at least the k-th best, so ties stay in catalog order
            kth_best = np.partition(scores[hits], len(hits) - k)[len(hits) - k]
            hits = hits[scores[hits] >= kth_best]
        best_first = hits[np.argsort(-scores[hits], kind="stable")][:k]
        return [self.asins[i] for i in best_first]
