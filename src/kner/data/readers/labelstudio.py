"""Label Studio exports: the JSON export (a list of tasks) and JSON-MIN.

JSON (the full export)::

    [{"id": 12, "data": {"text": "..."},
      "annotations": [{"id": 3, "was_cancelled": false, "ground_truth": false, "updated_at": "...",
                       "result": [{"type": "labels", "value": {"start": 0, "end": 3, "text": "...",
                                                               "labels": ["PS"]}, ...}]}],
      "predictions": [{"result": [...], "model_version": "..."}]}, ...]

JSON-MIN: ``[{"id": 12, "text": "...", "label": [{"start": 0, "end": 3, "text": "...",
"labels": ["PS"]}], "annotator": ..., ...}]`` (one object per annotation).

Which annotation of a task is used, deterministically: the non-cancelled
ones; among them the ``ground_truth`` ones if any; then the latest by
``updated_at`` (else ``created_at``), ties broken by the larger ``id``. Tasks
with more than one candidate are counted. A task with no usable annotation
is skipped with a problem row, unless ``predictions=True``: then its latest
prediction (by ``created_at``, then position) is used and counted. Only
span results (``value.labels``) are read; choices, relations and other
result types are counted and ignored. A result with two labels keeps the
first (a ``two-labels`` problem, as for any span labelled twice). The
text is ``data[text_key]`` (default ``text``; a task whose
``data`` has exactly one string field uses that field, counted).

Offsets are checked against ``value.text`` where it is present (the UTF-16
reading is taken when only it matches); without it they are characters,
or UTF-16 code units with ``offsets="utf16"``. Problems name the line where
the task starts and the task id. Each task is its own document unless its
``data`` has a ``doc`` field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kner.data.example import Example
from kner.data.readers.annotation import SpanChecker, check_offsets_option, json_array_items
from kner.data.readers.base import ReadResult, build_entities
from kner.textio import read_text


def read(path: Path, text_key: str = "text", predictions: bool = False, offsets: str = "chars") -> ReadResult:
    res = ReadResult(scheme=None, files=1)
    checker = SpanChecker(path, res, check_offsets_option(offsets))
    for k, line, task in _latest_min(list(json_array_items(path, read_text(path))), res):
        sid = str(task.get("id", k)) if isinstance(task, dict) else str(k)

        def skip(kind: str, reason: str) -> None:
            checker.problem(line, f"task {sid}", kind, reason + "; task skipped")
            res.skipped += 1

        if not isinstance(task, dict):
            skip("not-an-object", f"task {k} is not a JSON object")
            continue
        if isinstance(task.get("data"), dict):
            data = task["data"]
            text = _text(data, text_key, res)
            results, why = _choose(task, predictions, res)
            doc = data.get("doc")
        else:  # JSON-MIN: the data fields and the span list are top-level keys
            data = task
            text = task.get(text_key)
            results, why = _min_results(task), None
            doc = task.get("doc")
        if not isinstance(text, str):
            skip("no-text", f"no string field {text_key!r} in the task data (choose it with text_key=NAME)")
            continue
        if why:
            skip(*why)
            continue
        raw = []
        for r in results:
            value = r.get("value") if isinstance(r, dict) else None
            if not isinstance(value, dict) or "labels" not in value:
                res.notes["results that are not spans (choices, relations, ...) ignored"] += 1
                continue
            labels = value["labels"]
            if not isinstance(labels, list) or not labels:
                raw.append((value.get("start"), value.get("end"), None, value.get("text")))
                continue
            for lab in labels:
                raw.append((value.get("start"), value.get("end"), lab, value.get("text")))
        spans = checker.spans(text, raw, line, f"task {sid}")
        ents, notes = build_entities(text, spans)
        for kind, msg in notes:
            checker.problem(line, f"task {sid}", kind, msg)
        meta = {"doc": str(doc) if doc is not None else f"{path.name}:{sid}", "source": f"{path.name}:{line}"}
        res.examples.append(Example(sid, text, ents, meta))
    return res


def _text(data: dict[str, Any], key: str, res: ReadResult) -> Any:
    if key in data:
        return data[key]
    strings = [k for k, v in data.items() if isinstance(v, str)]
    if len(strings) == 1:
        res.notes[f"tasks whose only text field {strings[0]!r} was used (no {key!r})"] += 1
        return data[strings[0]]
    return None


def _when(a: dict[str, Any]) -> tuple[Any, ...]:
    stamp = a.get("updated_at") or a.get("created_at") or ""
    aid = a.get("id")
    return (str(stamp), aid if isinstance(aid, (int, float)) else -1, str(aid))


def _choose(task: dict[str, Any], use_predictions: bool, res: ReadResult) -> tuple[list[Any], tuple[str, str] | None]:
    anns = [a for a in task.get("annotations") or [] if isinstance(a, dict)]
    ok = [a for a in anns if not a.get("was_cancelled")]
    if ok:
        gt = [a for a in ok if a.get("ground_truth")]
        pool = gt or ok
        if len(ok) > 1:
            res.notes["tasks with several annotations (used the ground truth one, else the latest)"] += 1
        best = max(pool, key=_when)
        return _results(best), None
    preds = [p for p in task.get("predictions") or [] if isinstance(p, dict)]
    if use_predictions and preds:
        res.notes["tasks read from their latest prediction (no annotation)"] += 1
        best = max(enumerate(preds), key=lambda ip: (str(ip[1].get("created_at") or ""), ip[0]))[1]
        return _results(best), None
    if anns:
        return [], ("cancelled", f"all {len(anns)} annotation(s) of the task were cancelled")
    hint = " (it has predictions: predictions=true reads them)" if preds else ""
    return [], ("unannotated", f"the task has no annotation{hint}")


def _results(a: dict[str, Any]) -> list[Any]:
    r = a.get("result")
    return r if isinstance(r, list) else []


def _latest_min(items: list[Any], res: ReadResult) -> list[Any]:
    """JSON-MIN has one object per annotation: of objects with the same task id keep the latest."""
    best: dict[str, Any] = {}
    for k, _line, task in items:
        if isinstance(task, dict) and not isinstance(task.get("data"), dict) and "id" in task:
            key = str(task["id"])
            when = (
                str(task.get("updated_at") or task.get("created_at") or ""),
                task.get("annotation_id") if isinstance(task.get("annotation_id"), int) else -1,
                k,
            )
            if key in best:
                res.notes["JSON-MIN annotations left out for a later one of the same task"] += 1
            if key not in best or when > best[key][0]:
                best[key] = (when, k)
    keep = {k for _, k in best.values()}
    return [
        it
        for it in items
        if not (isinstance(it[2], dict) and not isinstance(it[2].get("data"), dict) and "id" in it[2]) or it[0] in keep
    ]


def _min_results(task: dict[str, Any]) -> list[Any]:
    out = []
    for v in task.values():
        if isinstance(v, list) and any(isinstance(x, dict) and "labels" in x for x in v):
            out += [{"value": x} for x in v if isinstance(x, dict)]
    return out
