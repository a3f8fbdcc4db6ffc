"""spaCy ``DocBin`` files (``.spacy``): text and ``doc.ents`` as character offsets.

Read with spaCy's own ``DocBin`` and a blank ``Vocab`` (the file carries its
strings, so no pipeline is needed). Only ``doc.ents`` is read; entities are
token-aligned, but a whitespace token at an entity's edge is trimmed and
reported. Example ids are ``file:N`` (N = the doc's position from 1), which
is also what problems give as the line; with ``store_user_data=True`` files
a ``user_data["id"]`` / ``["doc"]`` is used when present. Each doc is its own
document (a DocBin does not record which docs belong together).
"""

from __future__ import annotations

from pathlib import Path

from kner.data.example import Example
from kner.data.readers.annotation import SpanChecker
from kner.data.readers.base import ReadResult, build_entities
from kner.errors import DataError


def read(path: Path) -> ReadResult:
    # lazy: spaCy takes seconds to import; only this format needs it
    from spacy.tokens import DocBin  # noqa: PLC0415
    from spacy.vocab import Vocab  # noqa: PLC0415

    res = ReadResult(scheme=None, files=1)
    checker = SpanChecker(path, res, "chars")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    try:
        db = DocBin().from_bytes(data)
        docs = list(db.get_docs(Vocab()))
    except Exception as err:  # spaCy raises ValueError, zlib/srsly errors alike on a file that is not a DocBin
        raise DataError(f"not a spaCy DocBin file ({type(err).__name__}: {str(err)[:120]})", path) from None
    for n, doc in enumerate(docs, 1):
        user = doc.user_data if isinstance(doc.user_data, dict) else {}
        sid = str(user.get("id", f"{path.name}:{n}"))
        raw = [(e.start_char, e.end_char, e.label_, None) for e in doc.ents]
        spans = checker.spans(doc.text, raw, n, sid)
        ents, notes = build_entities(doc.text, spans)
        for kind, msg in notes:
            checker.problem(n, sid, kind, msg)
        doc_id = user.get("doc")
        res.examples.append(
            Example(
                sid, doc.text, ents, {"doc": str(doc_id) if doc_id is not None else sid, "source": f"{path.name}:{n}"}
            )
        )
    return res
