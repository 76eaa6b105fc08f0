"""Byte-level BPE for the token cache: the tokenizer's own ids, faster where text repeats, by not re-encoding it.

`tokenizers` spends most of a cache build on text it has already seen: it runs its pre-tokenizer, offset
bookkeeping and a BPE merge loop over every word of every document (about 4 MB/s on one core here). A
byte-level BPE tokenizer (GPT-2's scheme, which the built-in and minimind's tokenizers use) encodes the text
between special tokens piece by piece, each piece on its own:

    text -> cut out added tokens -> cut into pre-tokens by one regex -> BPE on each pre-token alone

so a piece of text always encodes to the same ids wherever it appears, if it starts and ends on pre-token
boundaries. A space that follows a non-space character is always such a boundary (no pre-token has a
space inside it, and a pre-token holding a space is either a run of whitespace or starts with that space),
so `str.split(" ")` cuts a document into segments that can be cached: a document is mostly segments seen
before, looked up and joined in C. A segment not seen yet is cut into pre-tokens with the same regex (the
`regex` module) and its pre-tokens looked up in a second cache; only pre-tokens never seen before go through
the tokenizer's own BPE model. The result is exactly the tokenizer's: tests compare the two on the built-in
corpus, minimind-style markup, generated text of every script and whitespace kind, and each code point.

Two places where an equal result depends on more than the argument above, and what is done about them:
- Unicode versions. The regex's letter / number / whitespace classes come from the Unicode tables inside
  each library, and `tokenizers` (Oniguruma) knows an older Unicode than `regex`: some 17,000 code points,
  letters to `regex` but unassigned to Oniguruma, would split differently. `class_corrections` finds them by
  running the tokenizer's pre-tokenizer over every code point (once per pair of library versions, kept in
  the user's cache folder), and `split_patterns` takes them out of (or adds them to) the regex's classes.
- Tokenizers of another shape (a normalizer, another pre-tokenizer, BPE dropout, added tokens that strip
  spaces): `FastByteLevelBPE.for_tokenizer` returns None and the caller uses the tokenizer as before.

Memory: the caches are cleared when they reach `max_entries`, so it does not grow with the file.

Where text does not repeat (a Chinese corpus: long runs of ideographs, each a pre-token rarely seen twice),
running pre-tokens through the BPE model one call at a time is slower than the tokenizer's own batch call;
engine.data.batch_encode times both and uses the faster.
"""

from __future__ import annotations

import json
import os
import sys
from array import array
from functools import lru_cache
from pathlib import Path
from typing import Any

# Entries per cache before the caches start over. Measured on 100 MB files (bench/RESULTS.md): pretraining ran
# 15-25% faster with 1M entries than with 256K (~100 MiB more RSS); SFT, whose entries also hold token
# lengths, ran no faster above 256K and held ~100 MiB more at 1M.
MAX_ENTRIES = {False: 1 << 20, True: 1 << 18}  # keyed by `lengths`
LONGEST_KEY = 128  # characters: longer text (a paragraph without spaces) seldom recurs, and would fill memory
SHORT_CHUNK = 64  # characters: text between added tokens up to this long is cached whole (role names, newlines)
_TYPECODE = {2: "H", 4: "I"}


def _byte_chars() -> list[str]:
    """GPT-2's byte -> printable character table, which byte-level BPE vocabularies are written in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


_BYTE_CHARS = dict(enumerate(_byte_chars()))  # str.translate table over latin-1 decoded bytes


class FastByteLevelBPE:
    """Encodes texts to the ids the wrapped byte-level BPE tokenizer gives them (add_special_tokens=False:
    added tokens in the text are encoded as the tokenizer encodes them, nothing is added around it).

    `encode(texts)` -> per text, its ids as array bytes of `itemsize` (2: uint16, 4: uint32). With
    `lengths=True`, `encode_with_lengths(texts)` -> per text, (ids bytes, uint32 bytes of each token's length in
    UTF-8 bytes), what a loss mask needs to place tokens in the text.
    """

    def __init__(self, backend: Any, added: dict[str, int], itemsize: int, lengths: bool = False,
                 max_entries: int | None = None) -> None:
        import regex

        self.backend, self.model = backend, backend.model
        self.max_entries = max_entries or MAX_ENTRIES[lengths]
        self.typecode, self.lengths = _TYPECODE[itemsize], lengths
        # Longest first, so that at each position the longest added token wins, as tokenizers' matcher does.
        names = sorted(added, key=len, reverse=True)
        self.added_re = regex.compile("(" + "|".join(regex.escape(n) for n in names) + ")") if names else None
        split, ws_then_space = split_patterns()
        self.split_re = regex.compile(split)
        # On ASCII both libraries' classes agree (tested on every code point), and the plain pattern runs about
        # twice as fast as the corrected one.
        self.ascii_split_re = regex.compile(split_patterns(corrected=False)[0])
        self.ws_then_space = regex.compile(ws_then_space)  # a space after whitespace is not a segment boundary
        # Values are ids bytes, or (ids bytes, lengths bytes) with lengths=True.
        self.first: dict[str, Any] = {}  # a chunk's first segment (no leading space)
        self.spaced: dict[str, Any] = {}  # segment s -> the encoding of " " + s
        self.words: dict[str, Any] = {}  # pre-token -> its BPE
        # Text between added tokens: the added tokens themselves, an empty chunk, short chunks seen before.
        self.added_encodings = {name: self._pack([i], [len(name.encode("utf-8"))]) for name, i in added.items()}
        self.added_encodings[""] = self._pack([], [])
        self.pieces: dict[str, Any] = dict(self.added_encodings)

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, itemsize: int, lengths: bool = False,
                      max_entries: int | None = None) -> FastByteLevelBPE | None:
        """The fast encoder of a transformers tokenizer, or None when its pipeline is not plain byte-level BPE."""
        backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
        try:
            spec = json.loads(backend.to_str())
        except Exception:  # noqa: BLE001 - not a tokenizers backend: the caller's path handles it
            return None
        added = _plain_added_tokens(spec)
        if added is None or not _plain_byte_level(spec):
            return None
        return cls(backend, added, itemsize, lengths, max_entries)

    # ------------------------------------------------------------------------------------------
    def encode(self, texts: list[str]) -> list[bytes]:
        self._bound_caches()
        if self.lengths:
            return [ids for ids, _ in map(self._text, texts)]
        return list(map(self._text, texts))

    def encode_with_lengths(self, texts: list[str]) -> list[tuple[bytes, bytes]]:
        assert self.lengths, "built without lengths=True"
        self._bound_caches()
        return list(map(self._text, texts))

    def _bound_caches(self) -> None:
        """Start the caches over once one is full (checked per batch: a batch adds a bounded number of entries)."""
        if max(len(self.first), len(self.spaced), len(self.words), len(self.pieces)) > self.max_entries:
            for cache in (self.first, self.spaced, self.words, self.pieces):
                cache.clear()
            self.pieces.update(self.added_encodings)

    def _pack(self, ids: list[int], lengths: list[int]) -> Any:
        packed = array(self.typecode, ids).tobytes()
        return (packed, array("I", lengths).tobytes()) if self.lengths else packed

    def _join(self, parts: list[Any]) -> Any:
        if self.lengths:
            return b"".join([p[0] for p in parts]), b"".join([p[1] for p in parts])
        return b"".join(parts)

    def _text(self, text: str) -> Any:
        careful = self.ws_then_space.search(text) is not None  # one scan of the document, not one per chunk
        if self.added_re is None:
            return self._chunk(text, careful)
        pieces = self.added_re.split(text)  # chunks at even positions, the added tokens between them
        parts: list[Any] = list(map(self.pieces.get, pieces))  # added tokens and short repeated chunks ("\n", "user\n")
        k = -1
        try:
            while True:
                k = parts.index(None, k + 1)
                parts[k] = self._chunk(pieces[k], careful)
                if len(pieces[k]) <= SHORT_CHUNK:
                    self.pieces[pieces[k]] = parts[k]
        except ValueError:
            pass
        return self._join(parts)

    def _chunk(self, text: str, careful: bool) -> Any:
        """Text without added tokens, cut into space-led segments that are looked up whole. `careful`: the
        document holds whitespace before a space somewhere."""
        if careful and self.ws_then_space.search(text):  # two spaces, a newline then a space: pre-tokens straddle cuts
            return self._segment(text)
        parts = text.split(" ")
        got: list[Any] = list(map(self.spaced.get, parts))  # parts[0] has no space before it: replaced below
        head = got[0] = self.first.get(parts[0])
        if head is None:
            got[0] = self._segment(parts[0])
            if len(parts[0]) <= LONGEST_KEY:
                self.first[parts[0]] = got[0]
        k = 0
        try:
            while True:
                k = got.index(None, k + 1)  # scans in C: most segments were seen before
                value = self.spaced.get(parts[k])
                if value is None:
                    value = self._segment(" " + parts[k])
                    if len(parts[k]) <= LONGEST_KEY:
                        self.spaced[parts[k]] = value
                got[k] = value
        except ValueError:
            pass
        return self._join(got)

    def _segment(self, text: str) -> Any:
        """Text seen for the first time: its pre-tokens, each looked up or run through BPE."""
        words = self.words
        parts = []
        for word in (self.ascii_split_re if text.isascii() else self.split_re).findall(text):
            got = words.get(word)
            if got is None:
                try:
                    raw = word.encode("utf-8")
                except UnicodeEncodeError:  # a lone surrogate (JSON's "\\ud800"): whatever the tokenizer does with it
                    return self._by_tokenizer(text)
                tokens = self.model.tokenize(raw.decode("latin-1").translate(_BYTE_CHARS))
                # A vocabulary entry is written one character per byte (GPT-2's table): its length is its byte count.
                got = self._pack([t.id for t in tokens], [len(t.value) for t in tokens])
                if len(word) <= LONGEST_KEY:
                    words[word] = got
            parts.append(got)
        return self._join(parts)

    def _by_tokenizer(self, text: str) -> Any:
        """The tokenizer's own encoding of text (one UTF-8 cannot hold)."""
        ids = self.backend.encode(text, add_special_tokens=False).ids
        return self._pack(ids, [len(self.backend.id_to_token(i)) for i in ids] if self.lengths else [])


def _plain_byte_level(spec: dict[str, Any]) -> bool:
    """True when tokenizer.json describes plain GPT-2 byte-level BPE (what FastByteLevelBPE reproduces)."""
    pre, model = spec.get("pre_tokenizer") or {}, spec.get("model") or {}
    return (spec.get("normalizer") is None
            and pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space")
            and model.get("type") == "BPE" and model.get("dropout") is None and not model.get("byte_fallback")
            and not model.get("continuing_subword_prefix") and not model.get("end_of_word_suffix")
            and not model.get("ignore_merges"))


def _plain_added_tokens(spec: dict[str, Any]) -> dict[str, int] | None:
    """Added tokens as {content: id} when they are matched literally, else None (stripping, single-word or
    a mix of normalized and raw tokens: tokenizers matches those in passes this module does not copy)."""
    tokens = spec.get("added_tokens") or []
    if any(t.get("lstrip") or t.get("rstrip") or t.get("single_word") for t in tokens):
        return None
    if len({bool(t.get("normalized")) for t in tokens}) > 1:
        return None
    return {t["content"]: t["id"] for t in tokens if t.get("content")}


# ----------------------------------------------------------------------------------------------
# The pre-tokenizer's regex, with the tokenizers library's Unicode classes


def _hf_classes(code_points: list[int]) -> dict[int, str]:
    """Each code point's class for the tokenizers pre-tokenizer: L(etter), N(umber), S(pace) or O(ther),
    read off how it splits between neighbours: '.c.' is one piece only for O; in 'ac1' c joins 'a' when it
    is a letter and '1' when it is a number; S stays alone in both."""
    from tokenizers.pre_tokenizers import ByteLevel

    pre = ByteLevel(add_prefix_space=False, use_regex=True)

    def starts(template: str, cps: list[int]) -> set[int]:
        text = "".join(template.replace("c", chr(c)) for c in cps)
        return {start for _, (start, _) in pre.pre_tokenize_str(text)}

    dotted = starts(".c.", code_points)
    classes, rest = {}, []
    for k, c in enumerate(code_points):
        if 3 * k + 1 not in dotted and 3 * k + 2 not in dotted:
            classes[c] = "O"
        else:
            rest.append(c)
    between = starts("ac1", rest)
    for k, c in enumerate(rest):
        classes[c] = "L" if 3 * k + 1 not in between else "N" if 3 * k + 2 not in between else "S"
    classes[0x20] = "S"  # ' ' joins the digit after it (' ?\p{N}+'), but it is whitespace
    return classes


def _regex_classes(code_points: list[int]) -> dict[int, str]:
    import regex

    letter, number, space = regex.compile(r"\p{L}"), regex.compile(r"\p{N}"), regex.compile(r"\s")
    return {c: "L" if letter.match(chr(c)) else "N" if number.match(chr(c)) else "S" if space.match(chr(c)) else "O"
            for c in code_points}


def _ranges(code_points: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for c in code_points:
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return out


def class_corrections() -> dict[str, dict[str, list[list[int]]]]:
    """For each class the `regex` module's \\p{L} / \\p{N} / \\s misplaces against the tokenizers library: the
    code point ranges to take out of it ("out") and to add to it ("in"). Surrogates are left out: UTF-8
    cannot hold them, and text with one goes to the tokenizer itself."""
    code_points = [c for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]
    ours, theirs = _regex_classes(code_points), _hf_classes(code_points)
    return {name: {"out": _ranges([c for c in code_points if ours[c] == name != theirs[c]]),
                   "in": _ranges([c for c in code_points if theirs[c] == name != ours[c]])}
            for name in ("L", "N", "S")}


def _class(base: str, fix: dict[str, list[list[int]]]) -> str:
    """`base` (a regex class like \\p{L}) corrected by `fix`, in the regex module's V1 set syntax."""

    def body(ranges: list[list[int]]) -> str:
        return "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)

    expr = f"[{base}--[{body(fix['out'])}]]" if fix["out"] else f"[{base}]"
    return f"[{expr}[{body(fix['in'])}]]" if fix["in"] else expr


@lru_cache(maxsize=2)
def split_patterns(corrected: bool = True) -> tuple[str, str]:
    """(GPT-2's pre-tokenizer regex, "whitespace then a space") for the `regex` module, with its character
    classes made to match the tokenizers library's; the corrections are computed once per pair of library
    versions (about 3 s) and kept in the user's cache folder. corrected=False: the module's own classes."""
    import regex
    import tokenizers

    if not corrected:
        return _split_pattern(r"\p{L}", r"\p{N}", r"\s"), r"\s "

    folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "minimind-studio"
    path = folder / f"bytelevel-classes-tokenizers-{tokenizers.__version__}-regex-{regex.__version__}.json"
    try:
        fixes = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        fixes = class_corrections()
        try:
            from engine.atomic import write_text_atomic

            folder.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, json.dumps(fixes))
        except OSError:
            pass  # a read-only home: computed again next time
    space = _class(r"\s", fixes["S"])
    return "(?V1)" + _split_pattern(_class(r"\p{L}", fixes["L"]), _class(r"\p{N}", fixes["N"]), space), f"(?V1){space} "


def _split_pattern(letter: str, number: str, space: str) -> str:
    """GPT-2's pre-tokenizer regex over the given letter / number / whitespace classes."""
    return (f"'s|'t|'re|'ve|'m|'ll|'d| ?{letter}+| ?{number}+| ?[^{space}{letter}{number}]+"
            f"|{space}+(?![^{space}])|{space}+")
