"""The time of each band of a netCDF variable, as GDAL reports it.

GDAL's netCDF driver makes a variable's extra dimension (``time``) its
bands and tags each band with the coordinate value (``NETCDF_DIM_time``);
the dataset's tags hold the coordinate's CF ``units`` (``hours since
1-1-1 00:00:0.0``) and ``calendar``. CF's default calendar, ``standard``, is
Julian before 1582-10-15 and Gregorian after, so a reference date in year 1
is two days off if read as a (proleptic Gregorian) Python date: HadISST's
``17633208 hours since 1-1-1`` is 2012-08-01, not 2012-08-03.

``python -m renderd.tools.nctime netcdf:FILE:VAR`` prints ``BAND YYYY-MM-DD``
per band (what ``scripts/prepare-rasters`` names the SST files by).
"""

from __future__ import annotations

import re
import sys
from datetime import datetime, timedelta

_UNITS = {"day": 86400.0, "hour": 3600.0, "minute": 60.0, "second": 1.0}
_REF = re.compile(r"^\s*(day|hour|minute|second)s?\s+since\s+(-?\d+)-(\d+)-(\d+)"
                  r"(?:[ T](\d+):(\d+)(?::(\d+(?:\.\d*)?))?)?", re.I)
_GREGORIAN_START = (1582, 10, 15)


def _julian_day_number(y: int, m: int, d: int, julian: bool) -> int:
    a = (14 - m) // 12
    y2, m2 = y + 4800 - a, m + 12 * a - 3
    jdn = d + (153 * m2 + 2) // 5 + 365 * y2 + y2 // 4 - 32083
    if not julian:
        jdn += -(y2 // 100) + y2 // 400 + 38
    return jdn


def decode(value: float, units: str, calendar: str = "standard") -> datetime:
    """A CF time coordinate value as a (proleptic Gregorian) datetime.
    ``ValueError`` for units or calendars this does not handle."""
    m = _REF.match(units)
    if not m:
        raise ValueError(f"time units {units!r} are not '<unit> since <date>'")
    cal = (calendar or "standard").lower()
    if cal not in ("standard", "gregorian", "proleptic_gregorian"):
        raise ValueError(f"calendar {calendar!r} is not handled")
    unit, y, mo, d = m.group(1).lower(), int(m.group(2)), int(m.group(3)), int(m.group(4))
    hh, mm = int(m.group(5) or 0), int(m.group(6) or 0)
    ss = float(m.group(7) or 0)
    julian = cal != "proleptic_gregorian" and (y, mo, d) < _GREGORIAN_START
    ordinal = _julian_day_number(y, mo, d, julian) - 1721425   # date.toordinal()'s count
    seconds = float(value) * _UNITS[unit] + hh * 3600 + mm * 60 + ss
    days, rest = divmod(seconds, 86400.0)
    return datetime.fromordinal(ordinal + int(days)) + timedelta(seconds=rest)


def band_times(name: str, dim: str = "time") -> list[datetime | None]:
    """The time of each band of ``name`` (None where it cannot be decoded)."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        ds = rasterio.open(name)
    with ds:
        tags = ds.tags()
        units = tags.get(f"{dim}#units", "")
        calendar = tags.get(f"{dim}#calendar", "standard")
        out: list[datetime | None] = []
        for i in range(1, ds.count + 1):
            v = ds.tags(i).get(f"NETCDF_DIM_{dim}")
            try:
                out.append(decode(float(v), units, calendar) if v is not None else None)
            except ValueError:
                out.append(None)
        return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m renderd.tools.nctime netcdf:FILE:VAR", file=sys.stderr)
        return 2
    for i, t in enumerate(band_times(argv[0]), start=1):
        print(i, t.strftime("%Y-%m-%d") if t else "-")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
