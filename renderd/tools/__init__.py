"""Tools around the cache: seed, expire, coverage, export, stats and
import-meta (with ``metafile``, mod_tile's ``.meta`` format).

Each module holds the logic as plain functions over a ``Store`` and a
``Client``; the click commands in ``renderd/cli`` only parse options and
print. See docs/tools.md.
"""
