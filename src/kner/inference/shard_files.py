"""The files of a sharded run (``OUTPUT.shards/``), read and written by the parent and the workers.

What identifies a run (input digest, model fingerprint, settings differences),
the result lines workers append, and the small JSON state files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from kner.errors import DataError
from kner.textio import atomic_write

FORMAT = 1
MANIFEST_NAME = "manifest.json"
DEFAULT_FLUSH_EVERY = 512


def input_digest(examples, new_tokens: Sequence[int] | None = None) -> str:
    h = hashlib.sha256()
    for i, ex in enumerate(examples):
        rec = [ex.id, ex.text, ex.meta, None if new_tokens is None else int(new_tokens[i])]
        # surrogatepass: a lone surrogate (a text the workers will skip) must not stop the digest.
        h.update(json.dumps(rec, ensure_ascii=False, sort_keys=True).encode("utf-8", "surrogatepass") + b"\n")
    return h.hexdigest()


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".pt")


def files_fingerprint(path: Path) -> list:
    """Names, sizes and modification times of the weight/config files of a local model folder."""
    out = []
    if path.is_file():
        st = path.stat()
        return [[path.name, st.st_size, st.st_mtime_ns]]
    for sub in ("", "adapter", "model", "tokenizer"):
        d = path / sub if sub else path
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            if f.is_file() and f.suffix in WEIGHT_SUFFIXES:
                st = f.stat()
                out.append([str(f.relative_to(path)), st.st_size, st.st_mtime_ns])
    return out


def model_fingerprint(model: str, adapter: str | None) -> dict:
    """Enough to notice a retrained adapter or another base in the same folder; hub ids by name only."""
    fp = {}
    for key, value in (("model", model), ("adapter", adapter)):
        if value is None:
            continue
        p = Path(value)
        fp[key] = files_fingerprint(p) if p.exists() else value
        man = p / "kner.json"
        if man.is_file():
            base = json.loads(man.read_text(encoding="utf-8")).get("load", {}).get("model")
            if base and Path(base).is_dir():
                fp[key + "_base"] = files_fingerprint(Path(base))
    return fp


def shard_dir_for(output: Path) -> Path:
    return output.with_name(output.name + ".shards")


def shard_tag(k: int, n: int) -> str:
    return f"{k:02d}of{n:02d}"


def write_json_atomic(path: Path, obj) -> None:
    with atomic_write(path) as f:
        f.write(json.dumps(obj, ensure_ascii=False, indent=1))


def scan_shards(shard_dir: Path, total: int, repair: bool = True) -> tuple[dict[int, dict], int, int]:
    """Finished results in every shard file: ``({index: example dict}, cut partial lines, duplicates)``.

    A crash can leave half a line at the end of a file; it is cut off (the file
    is truncated to its last complete line, so the next run can append;
    ``repair=False`` only skips it). Any
    other unreadable line is a ``DataError`` with its file and line.
    """
    done: dict[int, dict] = {}
    partial = dups = 0
    for path in sorted(shard_dir.glob("shard-*.jsonl")):
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            partial += 1
            if repair:
                with path.open("r+b") as f:
                    f.truncate(end)
            data = data[:end]
        for lineno, raw in enumerate(data.decode("utf-8").splitlines(), 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
                i = rec["index"]
                ex = rec["example"]
            except (ValueError, KeyError, TypeError):
                raise DataError("not a shard result line (delete the folder or pass --restart)", path, lineno) from None
            if not isinstance(i, int) or not 0 <= i < total or not isinstance(ex, dict):
                raise DataError(
                    f"input index {i!r} outside 0..{total - 1} (delete the folder or pass --restart)", path, lineno
                )
            if i in done:
                dups += 1
                continue
            done[i] = ex
    return done, partial, dups


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    diffs = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += differences(a, b, f"{prefix}{k}.")
        elif prefix.endswith("fingerprint."):
            diffs.append(f"{k} files changed")
        else:
            diffs.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return diffs


def read_state(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
