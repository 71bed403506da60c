"""docs/pipelines.md documents every stage type and every field of each,
with the help text, default and requiredness of renderd/pipeline/spec.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

from renderd.pipeline import TYPES

DOC = Path(__file__).resolve().parents[1] / "docs" / "pipelines.md"


def section(text: str, kind: str) -> str:
    heads = [f"### `{kind}`", "### `write.mbtiles` and `write.pmtiles`"]
    for head in heads:
        if head in text and (head == heads[0] or kind.startswith("write.")):
            return text.split(head, 1)[1].split("\n#", 1)[0]
    raise AssertionError(f"docs/pipelines.md has no section for {kind}")


def test_every_field_is_documented():
    text = DOC.read_text()
    for kind, spec in TYPES.items():
        assert re.search(rf"^\|[^|]*`{re.escape(kind)}`[^|]*\| ", text, re.M), \
            f"{kind} is not in the table of stage types"
        part = section(text, kind)
        for name, f in spec.fields.items():
            row = next((ln for ln in part.splitlines() if ln.startswith(f"| `{name}` |")), None)
            assert row is not None, f"{kind}.{name} is not documented"
            value = f.default
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            shown = value if isinstance(value, str) else json.dumps(value)
            default = "required" if f.required else "" if value is None else f"`{shown}`"
            assert row == f"| `{name}` | {default} | {f.help} |".replace("|  |", "| |"), row


def test_no_field_is_documented_that_does_not_exist():
    text = DOC.read_text()
    for kind, spec in TYPES.items():
        part = section(text, kind)
        rows = [ln.split("`")[1] for ln in part.splitlines() if ln.startswith("| `")]
        assert rows == list(spec.fields), kind
