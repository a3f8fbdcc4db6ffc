"""The one place that opens user text files, for reading and for writing.

Reading: UTF-8 unless the user chose another encoding (``--encoding cp949`` on
the command line enters :func:`input_encoding`, which every reader below sees
without passing it down through each signature). A byte-order mark is dropped,
CRLF and lone CR line ends are read as LF. A file that does not decode is a
``DataError`` naming the file and the line of the first bad byte, with a hint
at the encoding it probably is (CP949/EUC-KR for most Korean corpora that are
not UTF-8).

Writing: :func:`check_output` refuses an output path that cannot be written
before any work starts (and creates nothing), and :func:`atomic_write` writes
to a temporary file beside the target and renames it, so an interrupted or
failed write leaves neither a half file nor a temporary file behind.
"""

from __future__ import annotations

import codecs
import contextvars
import functools
import json
import os
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, ParamSpec, TypeVar, cast

from kner.errors import ConfigError, DataError

DEFAULT_ENCODING = "utf-8"
ENCODING_HELP = (
    "Encoding of the input text files (default utf-8), e.g. cp949 or euc-kr for older Korean "
    "corpora. A byte-order mark is always dropped."
)

P = ParamSpec("P")
T = TypeVar("T")

_encoding: contextvars.ContextVar[str] = contextvars.ContextVar("kner_input_encoding", default=DEFAULT_ENCODING)


def _codec(name: str) -> str:
    try:
        return codecs.lookup(name).name
    except LookupError:
        raise ConfigError(f"unknown encoding {name!r} (e.g. utf-8, cp949, euc-kr)") from None


@contextmanager
def input_encoding(name: str | None) -> Iterator[str]:
    """Within the block, input files are read in ``name`` (None: keep the current one)."""
    if name is None:
        yield current_encoding()
        return
    token = _encoding.set(_codec(name))
    try:
        yield _encoding.get()
    finally:
        _encoding.reset(token)


def current_encoding() -> str:
    return _encoding.get()


def _resolve(encoding: str | None) -> str:
    codec = _codec(encoding) if encoding is not None else _encoding.get()
    # utf-8-sig reads files with and without a BOM alike; other codecs get the BOM stripped by hand.
    return "utf-8-sig" if codec == "utf-8" else codec


_EOL = re.compile(rb"\r\n|\r|\n")


def _decode_error(path: Path, codec: str) -> DataError:
    """The first undecodable byte of ``path``, as file:line plus a hint at the likely encoding."""
    data = path.read_bytes()
    shown = "UTF-8" if codec == "utf-8-sig" else codec
    try:
        data.decode(codec)
    except UnicodeDecodeError as err:
        line = len(_EOL.findall(data, 0, err.start)) + 1
        what = f"not {shown} text (bytes {data[err.start : err.start + 2].hex(' ')} at byte {err.start} of the file)"
    else:  # the stream decoder failed where the whole-file decode did not: report without a line
        return DataError(f"not {shown} text", path)
    return DataError(f"{what}; {_hint(data, codec)}", path, line)


def _hint(data: bytes, codec: str) -> str:
    if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        return "it starts like UTF-16: try --encoding utf-16"
    for name, label in (("utf-8", "UTF-8"), ("cp949", "CP949/EUC-KR")):
        if _resolve(name) == codec:
            continue
        try:
            data.decode(name)
        except UnicodeDecodeError:
            continue
        return f"it decodes as {label}: try --encoding {name}"
    return "give the file's encoding with --encoding (e.g. cp949, euc-kr, utf-16)"


@contextmanager
def _reading(path: Path, codec: str) -> Iterator[None]:
    """Turn the ways opening or decoding a file fails into one-line ``DataError``s."""
    try:
        yield
    except UnicodeDecodeError:
        raise _decode_error(path, codec) from None
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    except IsADirectoryError:
        raise DataError("is a folder; a file was expected here", path) from None
    except PermissionError:
        raise DataError("cannot read this file (permission denied)", path) from None


def numbered_lines(path: str | Path, encoding: str | None = None) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its end-of-line) for each line of a text file.

    ``encoding`` None means the current :func:`input_encoding` (utf-8 unless the user chose one).
    The encoding is fixed when this is called, not when iteration starts.
    """
    path = Path(path)
    codec = _resolve(encoding)

    def lines() -> Iterator[tuple[int, str]]:
        with _reading(path, codec):
            if path.is_dir():
                raise IsADirectoryError(path)
            with path.open(encoding=codec, newline=None) as f:
                for lineno, line in enumerate(f, 1):
                    if lineno == 1 and line.startswith("\ufeff"):
                        line = line[1:]
                    yield lineno, line.rstrip("\n")

    return lines()


def read_text(path: str | Path, encoding: str | None = None) -> str:
    """A whole text file as one string, read as :func:`numbered_lines` reads it (BOM dropped, LF line ends)."""
    path = Path(path)
    codec = _resolve(encoding)
    with _reading(path, codec):
        if path.is_dir():
            raise IsADirectoryError(path)
        text = path.read_text(encoding=codec)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text[1:] if text.startswith("\ufeff") else text


def check_output(path: str | Path, folder: bool = False, what: str = "output") -> Path:
    """Refuse an output path that cannot be written, before any work starts; create nothing.

    ``folder``: the output is a folder (files are written inside it), else a file.
    Raises one ``ConfigError`` for a file where a folder is wanted or the other way round, a
    parent path that runs through a file, or a place this process may not write to.
    """
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            raise ConfigError(f"{what} {path} is a file; a folder is expected here")
        if not folder and path.is_dir():
            raise ConfigError(f"{what} {path} is a folder; give a file name")
        target = path if folder else path.parent
    else:
        target = path.parent
    # The nearest existing folder above is where missing folders would be created.
    probe = target if str(target) else Path(".")
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"cannot write {what} {path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {what} {path}: no permission to write in {probe}")
    return path


@contextmanager
def atomic_write(path: str | Path, encoding: str = "utf-8", what: str = "output") -> Iterator[IO[str]]:
    """A text file handle whose content replaces ``path`` only when the block finishes without error.

    Writes to a hidden temporary file in the same folder (same file system, so the rename is
    atomic) and removes it if anything fails, KeyboardInterrupt included.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = tmp.open("x", encoding=encoding, newline="\n")
    except OSError as err:
        raise ConfigError(f"cannot write {what} {path}: {err.strerror or err}") from None
    try:
        with f:
            yield f
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise ConfigError(f"cannot write {what} {path}: {err.strerror or err}") from None
        raise


def write_text(path: str | Path, text: str, what: str = "output") -> None:
    """``Path.write_text`` through :func:`atomic_write`."""
    with atomic_write(path, what=what) as f:
        f.write(text)


def reads_text(command: Callable[P, T]) -> Callable[P, T]:
    """Decorator for a CLI command with an ``encoding`` parameter: its body reads input files in it.

    Put it below the ``@app.command()`` line; the signature is kept, so the command's options are too.
    """

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        with input_encoding(cast("str | None", kwargs.get("encoding"))):
            return command(*args, **kwargs)

    return run


def text_problem(text: object) -> str | None:
    """Why ``text`` cannot be given to a model (None: it can): not a string, or not valid Unicode.

    A lone surrogate (half of a UTF-16 pair, e.g. a JSON ``"\\ud83d"`` cut from an emoji) cannot
    be encoded as UTF-8, so no tokenizer can take it. The message names the code point, never the
    character itself, so it can be printed and sent as JSON.
    """
    if not isinstance(text, str):
        return f"not a string ({type(text).__name__})"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return (
            f"not valid Unicode: character {err.start + 1} is a lone surrogate U+{ord(text[err.start]):04X} "
            f"(half of a UTF-16 pair, e.g. an emoji cut in two)"
        )
    return None


def json_line(obj: Any) -> str:
    """One JSON line (no newline) with characters as they are, or as ``\\uXXXX`` escapes when the
    record holds a lone surrogate: the line is then still valid UTF-8 and reads back identical."""
    line = json.dumps(obj, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(obj, ensure_ascii=True)
    return line
