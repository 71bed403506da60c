"""docs/configuration.md is generated from renderd/config.py and up to date."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from renderd import config

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "configuration.md"
SCRIPT = ROOT / "scripts" / "gen-config-doc"


def test_doc_is_up_to_date():
    r = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr + "(run scripts/gen-config-doc and commit docs/configuration.md)"


def test_every_option_is_documented():
    text = DOC.read_text()
    for section, schema in (("daemon", config.DAEMON), ("store", config.STORE),
                            ("http", config.HTTP), ("layer", config.LAYER)):
        part = text.split(f"## `[{section}]`" if section != "layer" else "## `[[layer]]`", 1)[1]
        part = part.split("\n## ", 1)[0]
        for key, opt in schema.items():
            row = next((ln for ln in part.splitlines() if ln.startswith(f"| `{key}` |")), None)
            assert row is not None, f"{section}.{key} is not documented"
            assert opt.help.replace("|", "\\|") in row


def test_the_example_file_is_valid_and_holds_the_defaults():
    block = re.search(r"```toml\n(.*?)```", DOC.read_text(), re.S).group(1)
    cfg = config.parse(tomllib.loads(block), str(ROOT / "example.toml"), env={}, check_files=False)
    defaults = config.parse({}, None, env={}, check_files=False)
    assert cfg.daemon == defaults.daemon
    assert cfg.store == defaults.store
    assert cfg.http == defaults.http
    (layer,) = cfg.layers
    for key, opt in config.LAYER.items():
        if opt.default is not None and key not in ("style", "font_dir"):
            assert getattr(layer, key) == opt.default, key


def test_check_notices_a_stale_doc(tmp_path):
    """--check compares the real file: a copy with a changed line fails."""
    import shutil
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    (root / "docs").mkdir()
    shutil.copy(SCRIPT, root / "scripts" / "gen-config-doc")
    shutil.copytree(ROOT / "renderd", root / "renderd")
    (root / "docs" / "configuration.md").write_text(DOC.read_text().replace("log level", "LOG LEVEL"))
    r = subprocess.run([sys.executable, str(root / "scripts" / "gen-config-doc"), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip() == ("gen-config-doc: docs/configuration.md is out of date; "
                                "run scripts/gen-config-doc")
