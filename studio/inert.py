"""Text from a model, a tool result or a tools file made safe to show in a terminal: every character that
would act on the terminal instead of being read is replaced by a visible stand-in.

A model can write anything its tokenizer can spell, and a tool result or spec file is whatever was on
disk: ESC sequences (clear the screen, move the cursor, set the window title, OSC 8 links, OSC 52
clipboard writes), C0/C1 controls (`\\r` overwriting a line, `\\b`, the bell, `\\x9b` as a one-byte CSI),
bidi overrides that make text read in another order than it is (CVE-2021-42574, "Trojan Source"), NUL,
and lone surrogates that a JSON `\\ud800` escape produces and a UTF-8 terminal writer cannot encode.

The stand-ins follow `bat --show-all`, the most careful viewer we know: C0 controls and DEL become their
Unicode Control Pictures (ESC is `␛`, so `\\x1b[2J` reads `␛[2J`; one cell each, never mistaken for text the
model typed as `^[` or `\\x1b`), and characters that have no picture (C1 controls, bidi controls, lone
surrogates) become `\\u{9b}`, bat's code-point notation. `\\n` and `\\t` stay: they are layout. A `\\r` right
before `\\n` is dropped as `less` does, so a tool result file with CRLF line ends reads as lines.
Rich markup (`[bold red]`) is not this module's business: the printers pass text as text (Rich's
`escape`, `Text(...)`), never as markup. Pure Python, no UI: the CLI's printers and the Chat tab both use it.
"""

from __future__ import annotations

KEEP = {"\n", "\t"}
# Bidirectional embeddings, overrides, isolates and marks: the Trojan Source set plus the three marks.
BIDI = [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]


def _stand_ins() -> dict[int, str]:
    table = {code: chr(0x2400 + code) for code in range(0x20) if chr(code) not in KEEP}  # ␀ … ␟
    table[0x7F] = "\u2421"  # ␡ (DEL)
    no_picture = [*range(0x80, 0xA0), *BIDI, *range(0xD800, 0xE000)]  # C1, bidi, surrogates
    table.update({code: f"\\u{{{code:x}}}" for code in no_picture})
    return table


STAND_INS = _stand_ins()


def inert(text: str) -> str:
    """`text` with every control character, bidi control and lone surrogate shown as a visible stand-in."""
    return text.replace("\r\n", "\n").translate(STAND_INS)
