"""Text from users and models, made safe to print on a terminal."""

from __future__ import annotations

import re

# Characters a terminal acts on rather than shows: C0 but tab/newline, DEL, C1 (ANSI/OSC escapes
# start with ESC or CSI/OSC), and the bidi controls that reorder what a reviewer reads.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def visible(text: str) -> str:
    """``text`` with every control character spelled out (``\\x1b``, ``\\u202e``): nothing in it
    can move the cursor, recolour, retitle or link the reviewer's terminal, or reorder the line."""
    return _CONTROL.sub(
        lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", text
    )


def layer_span(layers: list[int]) -> str:
    """Layers as runs, short enough for an 80-column table: ``[15, ..., 29]`` -> ``15-29``, ``[1, 3]`` -> ``1, 3``."""
    runs: list[list[int]] = []
    for layer in layers:
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs)


def repeats_note(n: int) -> str:
    """ ", N repeat(s) decided once" for a label count's parenthesis; nothing when there are none."""
    return f", {n} repeat{'s' if n != 1 else ''} decided once" if n else ""
