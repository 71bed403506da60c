"""File patterns with ``{key}`` placeholders: which files, and their keys.

``data/S2_{date}_{band}.tif`` matches ``data/S2_20200601_B04.tif`` with keys
``date = "20200601"`` and ``band = "B04"``. ``{}`` matches a part that is no
key (any characters but ``/``). A key's value is ``[A-Za-z0-9_.-]{1,64}``,
never ``.`` or ``..``; a key named twice must have the same value in both
places. Everything else in the pattern is literal (``*`` too). A
placeholder never spans a ``/``.

A file name that two readings split differently (``S2_{date}_{band}.tif``
on ``S2_2020_06_B04.tif``: ``date`` may be ``2020`` or ``2020_06``) is
refused as ambiguous, naming the file: a separator between placeholders
that values do not contain avoids it.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass

from ..config import KEY_RE
from ..errors import IngestError
from ..tilesets import valid_key_value

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_VALUE = r"[A-Za-z0-9_.\-]{1,64}"


@dataclass(frozen=True)
class Pattern:
    """A parsed pattern. Its regular expressions name the value of the i-th
    key (of ``keys``) ``g{i}``: key names such as ``a.b`` are no Python
    identifiers."""

    text: str
    keys: tuple[str, ...]      # in the order they first appear
    glob: str
    greedy: re.Pattern[str]
    lazy: re.Pattern[str]
    loose: re.Pattern[str]     # key values of any characters but /, to say what is wrong

    def _keys(self, m: re.Match[str]) -> dict[str, str]:
        return {k: m.group(f"g{i}") for i, k in enumerate(self.keys, 1)}

    def match(self, path: str) -> dict[str, str]:
        """The keys of ``path`` (as ``glob`` gives it), or ``IngestError``."""
        a, b = self.greedy.fullmatch(path), self.lazy.fullmatch(path)
        if a is None or b is None:
            loose = self.loose.fullmatch(path)
            for k, v in (self._keys(loose) if loose else {}).items():
                if not v:
                    raise IngestError(f"{path}: no value for key {k!r} of pattern {self.text}")
                if not valid_key_value(v):
                    raise IngestError(f"{path}: value {v!r} of key {k!r} is not valid ({KEY_RE}, "
                                      "not . or ..)")
            raise IngestError(f"{path} does not fit pattern {self.text}")
        ka, kb = self._keys(a), self._keys(b)
        if ka != kb:
            diff = next(k for k in self.keys if ka[k] != kb[k])
            raise IngestError(f"{path}: ambiguous for pattern {self.text}: key {diff!r} may be "
                              f"{kb[diff]!r} or {ka[diff]!r}")
        for k, v in ka.items():
            if not valid_key_value(v):
                raise IngestError(f"{path}: value {v!r} of key {k!r} is not valid ({KEY_RE}, not . or ..)")
        return ka

    def files(self) -> list[tuple[str, dict[str, str]]]:
        """Every regular file the pattern matches, sorted, with its keys.
        ``IngestError`` when there is none, or for the first file without
        a value for every key."""
        paths = sorted(p for p in glob.glob(self.glob) if os.path.isfile(p))
        if not paths:
            raise IngestError(f"pattern {self.text} matches no file")
        return [(p, self.match(p)) for p in paths]


def parse_pattern(text: str) -> Pattern:
    """A ``Pattern``, or ``IngestError`` naming the bad placeholder."""
    if not text:
        raise IngestError("the pattern is empty")
    keys: list[str] = []
    globbed: list[str] = []
    greedy: list[str] = []
    lazy: list[str] = []
    loose: list[str] = []

    def literal(part: str) -> None:
        if "{" in part or "}" in part:
            raise IngestError(f"pattern {text}: unbalanced {{ or }}")
        globbed.append(glob.escape(part))
        for rx in (greedy, lazy, loose):
            rx.append(re.escape(part))

    pos = 0
    for m in _PLACEHOLDER.finditer(text):
        literal(text[pos:m.start()])
        pos = m.end()
        name = m.group(1)
        globbed.append("*")
        if name == "":
            greedy.append(r"[^/]+")
            lazy.append(r"[^/]+?")
            loose.append(r"[^/]*")
        elif not valid_key_value(name):
            raise IngestError(f"pattern {text}: {{{name}}} is not a key name ({KEY_RE}, not . or ..)")
        elif name in keys:
            ref = f"(?P=g{keys.index(name) + 1})"
            for rx in (greedy, lazy, loose):
                rx.append(ref)
        else:
            keys.append(name)
            greedy.append(f"(?P<g{len(keys)}>{_VALUE})")
            lazy.append(f"(?P<g{len(keys)}>{_VALUE}?)")
            loose.append(f"(?P<g{len(keys)}>[^/]*)")
    literal(text[pos:])
    return Pattern(text, tuple(keys), "".join(globbed),
                   *(re.compile("".join(rx)) for rx in (greedy, lazy, loose)))
