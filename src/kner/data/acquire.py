"""Data acquisition: local copies first, else download from the public source into a cache, checksums verified.

Lookup order for a dataset's folder (layout as in ``shared/datasets``: ``kmou/corpus``,
``kmou/2016klp``, ``klue-ner``):

1. an explicit ``data_dir`` (CLI ``--data-dir``), then ``$KNER_DATA_DIR``;
2. the download cache (``$KNER_CACHE_DIR`` or ``~/.cache/kner/datasets``);
3. a download from the public source, each file verified against the pinned
   SHA-256 in ``resources/datasets/*.sha256`` and moved into the cache atomically.

Local copies are verified too: a file whose digest differs from the pinned one
is an error naming the file (a silently edited corpus would change every number).
KLUE publishes no checksums and its files are not pinned here: the first
download records their digests in ``<cache>/klue-ner/SHA256SUMS`` and later
uses are verified against that record (trust on first use), which kner says.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from kner.errors import KnerError

_MANIFESTS = resources.files("kner") / "resources" / "datasets"


@dataclass(frozen=True)
class Source:
    name: str
    subdir: str  # folder under the data root
    base_url: str
    manifest: str | None = None  # pinned "sha256  filename" lines
    files: tuple[str, ...] = ()  # unpinned files (no published checksums)
    license: str = ""
    accept_local: tuple[str, ...] = field(default=())  # other file names a local copy may hold instead

    def pinned(self) -> dict[str, str]:
        if not self.manifest:
            return {}
        out = {}
        for line in (_MANIFESTS / self.manifest).read_text(encoding="utf-8").splitlines():
            if line.strip():
                digest, name = line.split(None, 1)
                out[name.strip()] = digest
        return out


SOURCES: dict[str, Source] = {
    "kmou": Source(
        "kmou",
        "kmou/corpus",
        "https://raw.githubusercontent.com/kmounlp/NER/master/" + urllib.parse.quote("말뭉치 - 형태소_개체명") + "/",
        manifest="kmou-corpus.sha256",
        license="non-commercial MIT (kmounlp/NER LICENSE)",
    ),
    "klp2016": Source(
        "klp2016",
        "kmou/2016klp",
        "https://raw.githubusercontent.com/kmounlp/NER/master/2016klp/",
        manifest="kmou-2016klp.sha256",
        license="non-commercial MIT (kmounlp/NER LICENSE)",
    ),
    "klue": Source(
        "klue",
        "klue-ner",
        "https://raw.githubusercontent.com/KLUE-benchmark/KLUE/main/klue_benchmark/klue-ner-v1.1/",
        files=("klue-ner-v1.1_train.tsv", "klue-ner-v1.1_dev.tsv"),
        license="CC BY-SA 4.0",
        accept_local=("klue-ner-v1.1_dev.first4000.tsv",),
    ),
}


def cache_root() -> Path:
    return Path(os.environ.get("KNER_CACHE_DIR") or Path.home() / ".cache" / "kner" / "datasets")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _local_candidates(data_dir: str | Path | None) -> list[Path]:
    roots = []
    if data_dir:
        roots.append(Path(data_dir))
    if os.environ.get("KNER_DATA_DIR"):
        roots.append(Path(os.environ["KNER_DATA_DIR"]))
    return roots


def verify_folder(src: Source, folder: Path) -> int:
    """Check pinned digests of the files present; return how many were verified."""
    n = 0
    for name, digest in src.pinned().items():
        p = folder / name
        if p.is_file():
            got = sha256(p)
            if got != digest:
                raise KnerError(
                    f"{p}: SHA-256 {got[:12]}… differs from the pinned {digest[:12]}… of the public "
                    f"{src.name} file; the local copy was modified or is a different release"
                )
            n += 1
    return n


def _complete(src: Source, folder: Path) -> bool:
    if not folder.is_dir():
        return False
    if src.manifest:
        return all((folder / name).is_file() for name in src.pinned())
    return any((folder / f).is_file() for f in src.files + src.accept_local)


def locate(name: str, data_dir: str | Path | None = None, download: bool = True) -> Path:
    """The folder holding dataset ``name`` (``kmou``, ``klp2016``, ``klue``), fetching it if needed."""
    if name not in SOURCES:
        raise KnerError(f"unknown dataset {name!r}; known: {', '.join(SOURCES)}")
    src = SOURCES[name]
    for root in _local_candidates(data_dir):
        folder = root / src.subdir
        if folder.is_dir() and any(folder.iterdir()):
            missing = [n for n in src.pinned() if not (folder / n).is_file()]
            if missing:
                raise KnerError(
                    f"{folder}: {len(missing)} of the {len(src.pinned())} files of {src.name} are missing "
                    f"(first: {missing[0]}); a partial corpus would change every number"
                )
            verify_folder(src, folder)
            return folder
    cached = cache_root() / src.subdir
    if _complete(src, cached):
        verify_folder(src, cached)
        _verify_recorded(cached)
        return cached
    if not download:
        raise KnerError(_placement_help(src, data_dir))
    return fetch(src, cached, data_dir)


def fetch(src: Source, folder: Path, data_dir: str | Path | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pinned = src.pinned()
    todo = [(n, d) for n, d in pinned.items()] + [(n, None) for n in src.files]
    recorded: dict[str, str] = {}
    for fname, digest in todo:
        dest = folder / fname
        if dest.is_file() and (digest is None or sha256(dest) == digest):
            continue
        url = src.base_url + urllib.parse.quote(fname)
        tmp = dest.with_name(dest.name + ".part")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            with urllib.request.urlopen(url, timeout=30) as r, tmp.open("wb") as f:
                while block := r.read(1 << 20):
                    f.write(block)
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            tmp.unlink(missing_ok=True)
            raise KnerError(
                f"could not download {url} ({getattr(err, 'reason', err)}). " + _placement_help(src, data_dir)
            ) from None
        got = sha256(tmp)
        if digest is not None and got != digest:
            tmp.unlink(missing_ok=True)
            raise KnerError(f"{url}: SHA-256 {got[:12]}… differs from the pinned {digest[:12]}…; not using it")
        if digest is None:
            recorded[fname] = got
        tmp.replace(dest)
    if recorded:
        with (folder / "SHA256SUMS").open("a", encoding="utf-8") as f:
            for fname, got in recorded.items():
                f.write(f"{got}  {fname}\n")
    return folder


def _verify_recorded(folder: Path) -> None:
    sums = folder / "SHA256SUMS"
    if not sums.is_file():
        return
    for line in sums.read_text(encoding="utf-8").splitlines():
        digest, fname = line.split(None, 1)
        p = folder / fname.strip()
        if p.is_file() and sha256(p) != digest:
            raise KnerError(f"{p}: changed since it was downloaded (SHA-256 recorded in {sums})")


def _placement_help(src: Source, data_dir: str | Path | None) -> str:
    root = Path(data_dir) if data_dir else Path(os.environ.get("KNER_DATA_DIR") or "DATA_DIR")
    files = list(src.pinned()) or list(src.files)
    sample = ", ".join(files[:3]) + (f", ... ({len(files)} files)" if len(files) > 3 else "")
    return (
        f"No local copy of {src.name}: place its files ({sample}) from {src.base_url} in "
        f"{root / src.subdir} and set KNER_DATA_DIR={root} (or pass --data-dir), or run once with network access."
    )
