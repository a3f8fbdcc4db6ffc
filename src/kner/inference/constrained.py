"""Constrained decoding: at every step only tokens that keep the output a valid tag list.

The grammar is the one :mod:`kner.model.prompt` writes and parses::

    [one leading space or newline] (tag (SEP tag)*)? EOS        tag := "<" LABEL ":" etext ">"

with three extra rules that make :func:`kner.model.prompt.align` place every entity
exactly where the decoder meant it:

* LABEL is a name of the active scheme (a trie over their UTF-8 bytes);
* etext, unescaped, is a substring of the input text that starts at or after
  the end of the previous entity (the "cursor"). Among the places it occurs the
  leftmost one is the entity, which is also the one ``align`` finds, and its end
  becomes the next cursor;
* etext neither starts nor ends with whitespace (``align`` strips it) and
  ``\\``, ``<``, ``>`` inside it are written ``\\\\``, ``\\<``, ``\\>`` (``:`` may be
  written ``:`` or ``\\:``).

Everything runs on bytes (see :mod:`kner.inference.vocab`): the state tracks the
set of byte positions in the input where the entity text written so far could
continue ("live" positions), so a token that is a third of a Hangul syllable
simply advances those positions by one byte; closing ``>`` is only legal where
the live positions sit on a character boundary.

Speed: the allowed set of a state is found by walking the vocabulary's byte
trie along the bytes the state accepts, so only tokens that can match are ever
looked at. States that do not depend on the input (inside a label, between
tags) are cached per grammar; the expensive "entity may start anywhere after
the cursor" state is a union of per-start-position walks, each computed once
per text. The union is exact except for tokens that close an entity and run on
into the *next* entity's text, where the per-position walk may be stricter than
necessary: the constraint is never weaker than the grammar, so outputs always
parse.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Collection, Sequence

import numpy as np

from kner.inference.vocab import TokenTable

LT, GT, BS, COLON = 0x3C, 0x3E, 0x5C, 0x3A
MUST_ESCAPE = frozenset((BS, LT, GT))
AFTER_BACKSLASH = frozenset((BS, LT, GT, COLON))
LEADING_WS = (0x20, 0x0A)

# State kinds; a state is a tuple whose first item is its kind.
S0, AFTER, SEP, LTK, LAB, E0, ENT, ESC, END = range(9)
_STATIC = (S0, AFTER, SEP, LTK, LAB)


class TextContext:
    """Per input text: its bytes, where entities may start and end, and per-text caches."""

    def __init__(self, text: str, cycle: bool = False):
        self.text = text
        self.tb = text.encode("utf-8")
        self.n = len(self.tb)
        self.cycle = cycle  # benchmark only: when the text is used up, start over at 0 instead of stopping
        can_end = bytearray(self.n + 1)
        starts = []
        self.byte_to_char: dict[int, int] = {}
        pos = 0
        for ci, ch in enumerate(text):
            self.byte_to_char[pos] = ci
            width = len(ch.encode("utf-8"))
            if not ch.isspace():
                starts.append(pos)
                can_end[pos + width] = 1
            pos += width
        self.byte_to_char[self.n] = len(text)
        self.starts = starts
        self.can_end = can_end
        self._starts_from: dict[int, tuple[int, ...]] = {}
        self.single: dict[int, np.ndarray] = {}  # start position -> tokens allowed at an entity's first byte there
        self.e0: dict[int, np.ndarray] = {}  # cursor -> tokens allowed at an entity start
        self.dyn: dict[tuple, np.ndarray] = {}  # other text-dependent states

    def starts_from(self, c: int) -> tuple[int, ...]:
        got = self._starts_from.get(c)
        if got is None:
            got = self._starts_from[c] = tuple(self.starts[bisect_left(self.starts, c) :])
        return got

    def has_start(self, c: int) -> bool:
        return bisect_left(self.starts, c) < len(self.starts)


class _StaticContext:
    """Stands in for a text when walking text-independent states."""

    cycle = False

    def __init__(self, has_start: bool):
        self._has = has_start

    def has_start(self, c: int) -> bool:
        return self._has


class TagGrammar:
    """The tag grammar for one scheme and vocabulary; shared by all sequences."""

    def __init__(self, table: TokenTable, labels: Sequence[str], separator: str = " ", ignore_eos: bool = False):
        if not separator or separator.strip():
            raise ValueError("the tag separator must be whitespace, or the parser would read it as text")
        self.table = table
        self.sep = separator.encode("utf-8")
        self.ignore_eos = ignore_eos
        self.eos = np.array(sorted(table.eos_ids), dtype=np.int64)
        # Label trie over UTF-8 bytes.
        self.lab_children: list[dict[int, int]] = [{}]
        self.lab_end: list[str | None] = [None]
        for name in labels:
            node = 0
            for b in name.encode("utf-8"):
                nxt = self.lab_children[node].get(b)
                if nxt is None:
                    nxt = len(self.lab_children)
                    self.lab_children[node][b] = nxt
                    self.lab_children.append({})
                    self.lab_end.append(None)
                node = nxt
            self.lab_end[node] = name
        self._static: dict[tuple, tuple[np.ndarray, list[int]]] = {}

    # -- byte level ---------------------------------------------------------------
    def start_state(self) -> tuple:
        return (S0, 0)

    def _after(self, c: int, ctx) -> tuple:
        if ctx.cycle and not ctx.has_start(c):
            c = 0
        return (AFTER, c)

    def step(self, st: tuple, b: int, ctx) -> tuple | None:
        """The state after writing byte ``b`` in state ``st``; None if the grammar forbids it."""
        k = st[0]
        if k == ENT or k == E0:
            if k == ENT:
                live, started = st[1], st[2]
            else:
                live, started = ctx.starts_from(st[1]), False
            if b == GT:
                if started and ctx.can_end[live[0]]:
                    return self._after(live[0], ctx)  # leftmost occurrence wins, as in align()
                return None
            tb, n = ctx.tb, ctx.n
            if b == BS:
                nl = tuple(p for p in live if p < n and tb[p] in AFTER_BACKSLASH)
                return (ESC, nl, started) if nl else None
            if b == LT:
                return None
            nl = tuple(p + 1 for p in live if p < n and tb[p] == b)
            return (ENT, nl, True) if nl else None
        if k == ESC:
            if b not in AFTER_BACKSLASH:
                return None
            tb, n = ctx.tb, ctx.n
            nl = tuple(p + 1 for p in st[1] if p < n and tb[p] == b)
            return (ENT, nl, True) if nl else None
        if k == LAB:
            node = st[1]
            child = self.lab_children[node].get(b)
            if child is not None:
                return (LAB, child, st[2])
            if b == COLON and self.lab_end[node] is not None:
                return (E0, st[2])
            return None
        if k == AFTER:
            if b == self.sep[0] and ctx.has_start(st[1]):
                return (SEP, 1, st[1]) if len(self.sep) > 1 else (LTK, st[1])
            return None
        if k == SEP:
            i = st[1]
            if b == self.sep[i]:
                return (SEP, i + 1, st[2]) if i + 1 < len(self.sep) else (LTK, st[2])
            return None
        if k == LTK:
            return (LAB, 0, st[1]) if b == LT else None
        if k == S0:
            if b == LT:
                return (LAB, 0, 0) if ctx.has_start(0) else None
            if st[1] == 0 and b in LEADING_WS and ctx.has_start(0):
                return (S0, 1)
            return None
        return None  # END

    def _bytes_for(self, st: tuple, ctx) -> Collection[int]:
        """Bytes worth trying in state ``st`` (a superset of those ``step`` accepts)."""
        k = st[0]
        if k == ENT or k == E0 or k == ESC:
            live = st[1] if k != E0 else ctx.starts_from(st[1])
            tb, n = ctx.tb, ctx.n
            if k == ESC:
                return {tb[p] for p in live if p < n}
            out = {BS if tb[p] in MUST_ESCAPE else tb[p] for p in live if p < n}
            out.add(GT)
            return out
        if k == LAB:
            node = st[1]
            kids = self.lab_children[node]
            return (*kids, COLON) if self.lab_end[node] is not None else tuple(kids)
        if k == AFTER:
            return (self.sep[0],)
        if k == SEP:
            return (self.sep[st[1]],)
        if k == LTK:
            return (LT,)
        if k == S0:
            return (LT, *LEADING_WS) if st[1] == 0 else (LT,)
        return ()

    def _walk(self, node0: int, st0: tuple, ctx, stop_at_e0: bool = False) -> tuple[list[int], list[int]]:
        """Tokens whose bytes, written from trie node ``node0`` in state ``st0``, stay in the grammar."""
        children, ends = self.table.children, self.table.ends
        toks: list[int] = []
        crossings: list[int] = []
        stack = [(node0, st0)]
        while stack:
            node, st = stack.pop()
            kids = children[node]
            for b in self._bytes_for(st, ctx):
                child = kids.get(b)
                if child is None:
                    continue
                ns = self.step(st, b, ctx)
                if ns is None:
                    continue
                if ends[child]:
                    toks.extend(ends[child])
                if not children[child]:
                    continue
                if stop_at_e0 and ns[0] == E0:
                    crossings.append(child)
                else:
                    stack.append((child, ns))
        return toks, crossings

    # -- token level ----------------------------------------------------------------
    def allowed(self, st: tuple, ctx: TextContext) -> np.ndarray:
        """Token ids allowed in state ``st`` for the text of ``ctx`` (EOS included where legal)."""
        k = st[0]
        if k in _STATIC:
            c = st[-1] if k != S0 else 0
            has = k == LAB or k == LTK or ctx.has_start(c)
            key = (k, st[1] if k in (S0, SEP, LAB) else None, has)
            cached = self._static.get(key)
            if cached is None:
                toks, crossings = self._walk(0, st, _StaticContext(has), stop_at_e0=True)
                arr = np.array(sorted(set(toks)), dtype=np.int64)
                if k in (S0, AFTER) and not self.ignore_eos:
                    arr = np.concatenate([arr, self.eos])
                cached = self._static[key] = (arr, crossings)
            arr, crossings = cached
            if crossings:  # tokens that run from ':' into the entity text depend on the text
                dkey = ("x", key, c)
                extra = ctx.dyn.get(dkey)
                if extra is None:
                    found: list[int] = []
                    for node in crossings:
                        found.extend(self._walk(node, (E0, c), ctx)[0])
                    extra = ctx.dyn[dkey] = np.array(found, dtype=np.int64)
                if len(extra):
                    arr = np.concatenate([arr, extra])
            return arr
        if k == E0:
            c = st[1]
            got = ctx.e0.get(c)
            if got is None:
                parts = []
                for p in ctx.starts_from(c):
                    one = ctx.single.get(p)
                    if one is None:
                        one = ctx.single[p] = np.array(self._walk(0, (ENT, (p,), False), ctx)[0], dtype=np.int64)
                    parts.append(one)
                got = ctx.e0[c] = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
            return got
        if k == ENT or k == ESC:
            got = ctx.dyn.get(st)
            if got is None:
                got = ctx.dyn[st] = np.array(self._walk(0, st, ctx)[0], dtype=np.int64)
            return got
        return np.zeros(0, dtype=np.int64)


class TagConstraint:
    """One sequence's walk through the grammar."""

    __slots__ = ("grammar", "ctx", "state", "out", "complete_upto", "done")

    def __init__(self, grammar: TagGrammar, text: str, cycle: bool = False):
        self.grammar = grammar
        self.ctx = TextContext(text, cycle)
        self.state = grammar.start_state()
        self.out = bytearray()
        self.complete_upto = 0  # bytes of ``out`` that form a complete tag list
        self.done = False

    def allowed(self) -> np.ndarray:
        if self.done:
            return np.zeros(0, dtype=np.int64)
        return self.grammar.allowed(self.state, self.ctx)

    def accepts(self, tid: int) -> bool:
        """Whether ``tid`` is legal now (slower than ``allowed`` for many ids; for checks)."""
        if self.done:
            return False
        if tid in self.grammar.table.eos_ids:
            return self.state[0] in (S0, AFTER) and not self.grammar.ignore_eos
        b = self.grammar.table.token_bytes[tid] if tid < len(self.grammar.table) else None
        if not b:
            return False
        st = self.state
        for byte in b:
            nxt = self.grammar.step(st, byte, self.ctx)
            if nxt is None:
                return False
            st = nxt
        return True

    def advance(self, tid: int) -> None:
        if self.done:
            return
        g = self.grammar
        if tid in g.table.eos_ids:
            if self.state[0] not in (S0, AFTER):
                raise ValueError("EOS inside a tag: the constraint was bypassed")
            self.state = (END,)
            self.done = True
            return
        b = g.table.token_bytes[tid] if tid < len(g.table) else None
        if not b:
            raise ValueError(f"token {tid} writes nothing the tag grammar accepts")
        st = self.state
        for i, byte in enumerate(b):
            nxt = g.step(st, byte, self.ctx)
            if nxt is None:
                raise ValueError(f"token {tid} ({b!r}) breaks the tag grammar at byte {i}")
            st = nxt
            if st[0] == AFTER or st[0] == S0:
                self.complete_upto = len(self.out) + i + 1
        self.state = st
        self.out += b

    @property
    def complete(self) -> bool:
        return self.state[0] in (S0, AFTER, END)

    def output(self) -> tuple[str, bool]:
        """(text of the complete tags, whether an unfinished last tag was cut off)."""
        if self.complete:
            return self.out.decode("utf-8"), False
        return bytes(self.out[: self.complete_upto]).decode("utf-8"), True


class ConstrainedChooser:
    """Greedy choice among allowed tokens for many sequences, one step at a time.

    ``texts`` maps each row key to its input text (a list: keys 0..n-1).
    ``choose(logits, keys)`` picks, for each row, the highest-scoring token the
    grammar allows and advances that row's state; a row with nothing left to
    write (only EOS allowed and EOS ignored) is reported as done.
    """

    def __init__(self, grammar: TagGrammar, texts, cycle: bool = False):
        self.grammar = grammar
        self.texts = texts
        self.cycle = cycle
        self._rows: dict[int, TagConstraint] = {}

    def row(self, key: int) -> TagConstraint:
        got = self._rows.get(key)
        if got is None:
            got = self._rows[key] = TagConstraint(self.grammar, self.texts[key], self.cycle)
        return got

    @property
    def rows(self) -> list[TagConstraint]:
        """Rows in key order (list-of-texts use)."""
        return [self.row(k) for k in range(len(self.texts))]

    def reset(self, key: int) -> None:
        self._rows.pop(key, None)

    def output(self, key: int) -> tuple[str, bool]:
        return self.row(key).output()

    def release(self, key: int) -> None:
        self._rows.pop(key, None)

    def choose(self, logits, keys: Sequence[int]) -> list[int]:
        rows = [self.row(k) for k in keys]
        arrays = [r.allowed() for r in rows]
        lens = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
        fill = int(next(iter(self.grammar.table.eos_ids), 0))
        chosen = [fill] * len(rows)
        live = np.nonzero(lens)[0]
        if len(live):
            best = allowed_only(logits, live, [arrays[i] for i in live]).argmax(dim=-1).tolist()
            for i in live.tolist():
                chosen[i] = best[i]
        for i, r in enumerate(rows):
            if lens[i] == 0:
                r.done = True
            else:
                r.advance(chosen[i])
        return chosen

    def done(self, key: int) -> bool:
        return self.row(key).done


class TagLogitsProcessor:
    """The same constraint as a ``transformers`` ``LogitsProcessor`` for ``model.generate``.

    ``texts`` are the inputs of the batch rows, in order; ``prompt_len`` the
    (padded) prompt length, so the processor knows which ids are generated (left
    padding: every row's new tokens start there). ``cycle`` as in
    :class:`TextContext` (benchmarks with EOS ignored). The mask is the one
    :class:`ConstrainedChooser` applies, so greedy ``generate`` picks the engine's
    tokens. Each row keeps its own state, so beam search (which reorders rows) is
    not supported; greedy decoding and sampling are.
    """

    def __init__(self, grammar: TagGrammar, texts: Sequence[str], prompt_len: int, cycle: bool = False):
        self.rows = [TagConstraint(grammar, t, cycle) for t in texts]
        self.prompt_len = prompt_len
        self.eos = np.array([next(iter(grammar.table.eos_ids), 0)], dtype=np.int64)

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] > self.prompt_len:
            for row, tid in zip(self.rows, input_ids[:, -1].tolist()):
                if not row.done:
                    row.advance(tid)
        arrays = [a if len(a := row.allowed()) else self.eos for row in self.rows]
        return allowed_only(scores, np.arange(len(arrays)), arrays)


def allowed_only(logits, rows: np.ndarray, arrays: Sequence[np.ndarray]):
    """``logits`` with -inf everywhere but each listed row's allowed token ids (one scatter for the batch)."""
    import torch  # noqa: PLC0415  lazy: torch; kner.config imports kner.inference

    lens = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    dev = logits.device
    toks = torch.from_numpy(np.concatenate(arrays)).to(dev, non_blocking=True)
    ridx = torch.from_numpy(np.repeat(np.asarray(rows, dtype=np.int64), lens)).to(dev, non_blocking=True)
    masked = torch.full_like(logits, float("-inf"))
    masked[ridx, toks] = logits[ridx, toks]
    return masked
