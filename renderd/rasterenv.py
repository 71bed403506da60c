"""rasterio's PROJ database, whatever was imported first.

The mapnik wheel, when imported, sets ``PROJ_LIB`` (if unset) to a folder
of its own that holds no ``proj.db``. rasterio reads ``PROJ_DATA`` /
``PROJ_LIB`` each time an ``Env`` starts (every ``rasterio.open`` without
one), and then knows no CRS ("Cannot find proj.db"): a process that
renders Mapnik layers and reads rasters (a worker, the test suite) breaks
whichever it imported first. ``rasterio_proj()`` sets ``PROJ_DATA`` (read
before ``PROJ_LIB``) to the database the rasterio wheel ships when the
folder named has none; Mapnik's own projections keep working with it.
``import_rasterio()`` is ``import rasterio`` with that check (cheap: call it
before each use, as mapnik may be imported at any time).
"""

from __future__ import annotations

import os
from types import ModuleType


def rasterio_proj() -> str | None:
    """Point PROJ at the rasterio wheel's data if PROJ_DATA / PROJ_LIB name
    a folder without ``proj.db``; the folder now used, or None if unchanged."""
    given = os.environ.get("PROJ_DATA") or os.environ.get("PROJ_LIB")
    if not given or os.path.exists(os.path.join(given, "proj.db")):
        return None
    from rasterio.env import PROJDataFinder, set_proj_data_search_path

    wheel = PROJDataFinder().search_wheel()
    if not wheel:
        return None
    os.environ["PROJ_DATA"] = wheel
    set_proj_data_search_path(wheel)
    return wheel


def import_rasterio() -> ModuleType:
    """``rasterio``, with a PROJ database it can use."""
    import rasterio
    rasterio_proj()
    return rasterio
