"""Real English Wikipedia prose that works offline: the article dump in the `gensim` package's test data.

106 articles (after dropping redirects). Markup is removed with gensim's `filter_wiki`; a paragraph is a line
of the result that reads as prose (no list, table or heading line, at least `min_words` words, ends with
sentence punctuation). Articles are split into train and test by title (SHA-256 mod 10, as for names), so no
test article is ever seen in training.
"""

from __future__ import annotations

import bz2
import re
from pathlib import Path
from xml.etree import ElementTree

from promptstep.data.names import is_test_key
from promptstep.data.prose import tidy_spacing
from promptstep.errors import InputError
from promptstep.files import check_regular_file

DUMP = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_EMPHASIS = re.compile(r"'{2,}")
_NOT_PROSE = ("*", "#", "|", "{", "!", ":", ";", "=")


def dump_path() -> Path:
    """The Wikipedia dump shipped in gensim's test data."""
    try:
        from gensim.test.utils import datapath
    except ImportError:
        raise InputError("the offline Wikipedia task needs the `gensim` package (a promptstep dependency)") from None
    path = Path(datapath(DUMP))
    if not path.is_file():
        raise InputError(f"{path}: gensim's test data lacks the Wikipedia dump this task reads")
    return path


def article_paragraphs(markup: str, min_words: int) -> list[str]:
    """The prose paragraphs of one article's wiki markup."""
    from gensim.corpora.wikicorpus import filter_wiki

    paragraphs = []
    for line in filter_wiki(markup).splitlines():
        text = tidy_spacing(_EMPHASIS.sub("", line))
        if (text and not text.startswith(_NOT_PROSE) and len(text.split()) >= min_words
                and text.endswith((".", "!", "?", '."', ".)"))):
            paragraphs.append(text)
    return paragraphs


def wiki_offline_paragraphs(split: str, min_words: int = 30, path: Path | None = None) -> list[tuple[str, str]]:
    """(id, paragraph) for every prose paragraph of the articles in `split` ('train' or 'test'), in dump order."""
    from gensim.corpora.wikicorpus import extract_pages

    want_test = split == "test"
    out: list[tuple[str, str]] = []
    source = check_regular_file(path) if path is not None else dump_path()
    try:
        with bz2.open(source) as handle:
            for title, markup, _page_id in extract_pages(handle):
                if markup.lstrip().upper().startswith("#REDIRECT") or is_test_key(title) != want_test:
                    continue
                slug = "_".join(title.split())
                out.extend((f"{slug}-{n}", text) for n, text in enumerate(article_paragraphs(markup, min_words)))
    except (OSError, EOFError) as err:  # not bzip2, or cut short
        raise InputError(f"{source}: not a whole bzip2-compressed Wikipedia XML dump ({err})") from None
    except ElementTree.ParseError as err:
        raise InputError(f"{source}: not a Wikipedia XML dump ({err})") from None
    return out
