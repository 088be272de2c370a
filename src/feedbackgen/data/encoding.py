"""Which encoding a text file is in, and decoding it one line (one record) at a time.

`--encoding` (the `encoding` argument of the loaders) is either a codec name Python knows
("utf-8", "cp1252", "latin-1", "utf-16", ...) or "auto", the default:

1. A byte-order mark names the encoding (UTF-8, UTF-16 or UTF-32) and is removed.
2. JSON files are UTF-8: RFC 8259 §8.1 makes it the only encoding of JSON exchanged between
   systems, so a byte that is not UTF-8 is damage, and costs its record. Only UTF-8's BOM is
   honoured there; a UTF-16 JSON file (PowerShell's `>` writes one) is read with `--encoding utf-16`.
3. Delimited text (CSV, RecBole atomic files) declares no encoding, so the file is scanned once:
   - valid UTF-8 (pure ASCII included) → UTF-8;
   - holding valid multi-byte UTF-8 sequences and also invalid bytes → UTF-8 with damaged lines
     (each costs its own record);
   - invalid UTF-8 with no valid multi-byte sequence at all → windows-1252, the WHATWG Encoding
     Standard's decoding of text labelled latin-1 or cp1252 (its five unassigned bytes decode to
     the C1 controls, as ISO-8859-1 does), so every ISO-8859-1 file decodes to the same text too.
   The choice, and the first line that was not UTF-8, go to the file's manifest entry and to the
   `prepare` output, so the guess is never silent; `--encoding` overrides it. (A statistical
   detector is not used: charset-normalizer 3.5 calls both field-case files — a cp1252 CSV and
   MovieLens' ISO-8859-1 titles — cp1250, which decodes 18 of MovieLens' title characters wrongly.)

A line that does not decode in the file's encoding costs that line's record, reported with the
line number, the encoding and the byte; the lines around it are read as usual.
"""

from __future__ import annotations

import codecs
import io
import re
from collections.abc import Callable, Iterator
from typing import IO, Any

from feedbackgen.errors import ConfigError, RecordProblem

AUTO = "auto"
LEGACY = "windows-1252"
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
# One well-formed multi-byte UTF-8 sequence (RFC 3629 §4; surrogates D800-DFFF excluded).
_MULTIBYTE = re.compile(rb"[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]|[\xe1-\xec\xee\xef][\x80-\xbf]{2}"
                        rb"|\xed[\x80-\x9f][\x80-\xbf]|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}"
                        rb"|\xf4[\x80-\x8f][\x80-\xbf]{2}")
_SCAN_BLOCK = 1 << 20


def _c1(error: UnicodeDecodeError) -> tuple[str, int]:
    """windows-1252 as WHATWG decodes it: the bytes cp1252 leaves unassigned are C1 controls."""
    return "".join(chr(b) for b in error.object[error.start:error.end]), error.end


codecs.register_error("feedbackgen-whatwg-c1", _c1)


def check_encoding(name: str | None) -> str:
    """`name` as Python's codec name, or "auto"; a `ValueError` naming the choices otherwise."""
    if name is None or name.strip().lower() == AUTO:
        return AUTO
    try:
        return codecs.lookup(name.strip()).name
    except LookupError:
        raise ConfigError(f"unknown encoding {name!r}; give a codec name such as utf-8, cp1252, latin-1 "
                          "or utf-16, or auto (BOM, else UTF-8, else windows-1252 for delimited text)") from None


def _ascii_compatible(name: str) -> bool:
    """Whether lines can be split on the byte 0x0A before decoding (false for UTF-16/32, EBCDIC)."""
    try:
        return "a,\t\n".encode(name) == b"a,\t\n"
    except (UnicodeError, LookupError):
        return False


def _bom(head: bytes) -> tuple[str, int] | None:
    for mark, name in _BOMS:
        if head.startswith(mark):
            return name, len(mark)
    return None


def scan_utf8(stream: IO[bytes]) -> tuple[bool, bool, int | None]:
    """(valid UTF-8, holds a multi-byte sequence, line of the first invalid byte) of a byte stream.
    Stops as soon as a multi-byte sequence is seen: from then on the file counts as UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    valid, lines, first_bad, tail = True, 1, None, b""
    while block := stream.read(_SCAN_BLOCK):
        if valid:
            try:
                decoder.decode(block)
            except UnicodeDecodeError as e:
                valid = False
                first_bad = lines + block.count(b"\n", 0, max(0, e.start))
            lines += block.count(b"\n")
        if not block.isascii() and _MULTIBYTE.search(tail + block):
            return valid, True, first_bad
        tail = block[-3:]
    if valid:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            valid, first_bad = False, lines
    return valid, False, first_bad


class LineDecoder:
    """Decodes one file's lines in the encoding chosen by the rules of the module docstring.

    `open_binary()` opens the file's raw bytes (decompressed); `detect` says whether the file is
    delimited text (scanned when `encoding` is auto) rather than JSON (UTF-8)."""

    def __init__(self, open_binary: Callable[[], IO[bytes]], encoding: str = AUTO, *, detect: bool = True):
        self.declared = check_encoding(encoding)
        self.encoding, self.note, self._skip, self._from_bom = self.declared, None, 0, False
        self.first_not_utf8: int | None = None
        with open_binary() as f:
            head = f.read(4)
        bom = _bom(head)
        if bom is not None and bom[0] != "utf-8" and not detect:
            bom = None  # JSON: only UTF-8's BOM is honoured (RFC 8259 §8.1); UTF-16 JSON must be declared
        if self.declared == AUTO:
            if bom is not None:
                self.encoding, self._from_bom = bom[0], True
                self._skip = bom[1] if bom[0] == "utf-8" else 0  # the UTF-16/32 codecs read their own BOM
                self.note = f"byte-order mark: {self.encoding}"
            elif detect:
                with open_binary() as f:
                    valid, multibyte, first_bad = scan_utf8(f)
                self.encoding = "utf-8" if valid or multibyte else LEGACY
                self.first_not_utf8 = first_bad
                if not valid and not multibyte:
                    self.note = (f"not UTF-8 (first at line {first_bad}) and no UTF-8 text anywhere: decoded "
                                 f"as {LEGACY} (pass --encoding if it is another)")
                elif not valid:
                    self.note = f"UTF-8, with bytes that are not (first at line {first_bad}): those lines are skipped"
            else:
                self.encoding = "utf-8"
        elif bom is not None and bom[0] == "utf-8" and self.declared in ("utf-8", "utf-8-sig"):
            self._skip = bom[1]  # a BOM is not text
        if self.encoding == "utf-8-sig":  # its BOM is skipped above; per line it would strip any
            self.encoding, self._skip = "utf-8", self._skip
        self.name = LEGACY if self.encoding == LEGACY else codecs.lookup(self.encoding).name
        self._ascii = _ascii_compatible(self.encoding)

    def lines(self, stream: IO[bytes]) -> Iterator[bytes | str]:
        """The file's lines: bytes split on "\\n" (to `decode` one by one) for an ASCII-compatible
        encoding; else (UTF-16/32) text lines decoded as a stream — a byte that does not decode
        there stops the file (the `UnicodeDecodeError` is the caller's to report)."""
        if self._skip:
            stream.read(self._skip)
        if self._ascii:
            yield from stream
            return
        text = io.TextIOWrapper(stream, encoding=self.encoding.replace("-sig", ""), newline="")
        pending = ""
        for line in text:  # newline="" also ends a line at a lone "\r": join up to "\n" only
            pending += line
            if pending.endswith("\n"):
                yield pending
                pending = ""
        if pending:
            yield pending

    def decode(self, raw: bytes | str) -> str:
        """One line as text; `UndecodableLine` naming the encoding and the byte when it is not."""
        if isinstance(raw, str):
            return raw
        if self.encoding == LEGACY:
            return raw.decode("cp1252", errors="feedbackgen-whatwg-c1")
        try:
            return raw.decode(self.encoding)
        except UnicodeDecodeError as e:
            bad = raw[e.start:e.start + 1].hex()
            hint = ("the file is UTF-8 elsewhere, so this line is damaged" if self.declared == AUTO
                    else "pass --encoding if the file is in another encoding")
            raise UndecodableLine(f"not valid {self.name} text: byte 0x{bad} at byte {e.start + 1} of the line "
                                  f"({hint})") from None

    def describe(self) -> dict[str, Any]:
        """The manifest entry: the encoding used, and how it was chosen."""
        out: dict[str, Any] = {"encoding": self.name, "encoding_from": "declared" if self.declared != AUTO
                               else "byte-order mark" if self._from_bom else "detected"}
        if self.note:
            out["encoding_note"] = self.note
        return out


class UndecodableLine(RecordProblem):
    """A line whose bytes are not text in the file's encoding."""

    def __init__(self, reason: str):
        super().__init__(None, reason)
