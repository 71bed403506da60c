#!/usr/bin/env python3
"""Writes styles/osm.xml: an OpenStreetMap-like Mapnik style for zooms 10-19.

Reads osm2pgsql's classic pgsql output (planet_osm_polygon, _line, _roads,
_point in EPSG:3857). The road table is repeated per zoom band and class, so
the XML is generated: edit this file and run ``python3 styles/make_osm_style.py``.

Connection settings live in one Map-level ``<Datasource name="osm">`` with
``${host}`` ``${port}`` ``${dbname}`` ``${user}`` ``${password}``
placeholders that the renderer fills from the layer's ``params``; every
layer inherits it with ``base="osm"`` (Mapnik's XML reader has no entities).
"""

from __future__ import annotations

import os
from xml.sax.saxutils import escape, quoteattr

# zoom N is scale denominators 0.75 * S(N) .. 1.5 * S(N), S(N) = 559082264 / 2^N
S = {z: 559082264.028 / 2 ** z for z in range(0, 21)}


def zmax(z: int) -> int:
    """max-scale-denominator of "zoom >= z"."""
    return round(S[z] * 1.5)


def scale_tags(zlo: int, zhi: int | None = None) -> str:
    """Scale denominators for zooms zlo..zhi (inclusive; zhi None = no upper zoom)."""
    out = f"<MaxScaleDenominator>{zmax(zlo)}</MaxScaleDenominator>"
    if zhi is not None:
        out += f"<MinScaleDenominator>{zmax(zhi + 1)}</MinScaleDenominator>"
    return out


def attrs(**kw: object) -> str:
    return " ".join(f"{k.replace('_', '-')}={quoteattr(str(v))}" for k, v in kw.items())


def rule(body: str, zlo: int, zhi: int | None = None, flt: str | None = None) -> str:
    f = f"<Filter>{escape(flt)}</Filter>" if flt else ""
    return f"    <Rule>{scale_tags(zlo, zhi)}{f}\n      {body}\n    </Rule>"


def style(name: str, rules: list[str], **kw: object) -> str:
    a = (" " + attrs(**kw)) if kw else ""
    return f'  <Style name="{name}"{a}>\n' + "\n".join(rules) + "\n  </Style>\n"


def layer(name: str, sql: str, styles: list[str], zlo: int, **kw: object) -> str:
    a = (" " + attrs(**kw)) if kw else ""
    names = "".join(f"\n    <StyleName>{s}</StyleName>" for s in styles)
    return (f'  <Layer name="{name}" srs="epsg:3857" maximum-scale-denominator="{zmax(zlo)}"{a}>{names}\n'
            f'    <Datasource base="osm">\n'
            f'      <Parameter name="table">{escape(sql)}</Parameter>\n'
            f"    </Datasource>\n  </Layer>\n")


def line(**kw: object) -> str:
    return f"<LineSymbolizer {attrs(**kw)} />"


def poly(**kw: object) -> str:
    return f"<PolygonSymbolizer {attrs(**kw)} />"


# --- colours (close to the OpenStreetMap Carto palette) --------------------
LAND = "#f2efe9"
WATER = "#aad3df"
LANDUSE = [
    ("residential", "#e0dfdf", 10), ("commercial", "#f2dad9", 12), ("retail", "#ffd6d1", 12),
    ("industrial", "#ebdbe8", 12), ("railway", "#ebdbe8", 12), ("construction", "#c7c7b4", 13),
    ("brownfield", "#c7c7b4", 13), ("cemetery", "#aacbaf", 12), ("allotments", "#c9e1bf", 13),
    ("farmland", "#eef0d5", 10), ("grass", "#cdebb0", 12), ("meadow", "#cdebb0", 12),
    ("village_green", "#cdebb0", 12), ("recreation_ground", "#dffce2", 12),
    ("forest", "#add19e", 10), ("wood", "#add19e", 10), ("scrub", "#c8d7ab", 12),
    ("heath", "#d6d99f", 12), ("park", "#c8facc", 10), ("garden", "#cdebb0", 13),
    ("playground", "#dffce2", 14), ("pitch", "#aae0cb", 13), ("sports_centre", "#dffce2", 13),
    ("stadium", "#dffce2", 13), ("beach", "#fff1ba", 12), ("sand", "#f5e9c6", 12),
    ("bare_rock", "#eee5dc", 12), ("parking", "#eeeeee", 15), ("school", "#ffffe5", 14),
    ("university", "#ffffe5", 14), ("hospital", "#ffffe5", 14), ("college", "#ffffe5", 14),
    ("wetland", "#ddecec", 12), ("marina", "#b5d0d0", 14), ("square", "#dddde8", 14),
]

# road classes: (name, filter, fill, casing, widths by band z10-11, 12-13, 14-15, 16-17, 18-19, min zoom)
ROADS = [
    ("motorway", "[highway] = 'motorway' or [highway] = 'motorway_link'", "#e892a2", "#dc2a67",
     (1.6, 3.0, 7.0, 11.0, 18.0), 10),
    ("trunk", "[highway] = 'trunk' or [highway] = 'trunk_link'", "#f9b29c", "#c84e2f",
     (1.4, 2.8, 7.0, 11.0, 18.0), 10),
    ("primary", "[highway] = 'primary' or [highway] = 'primary_link'", "#fcd6a4", "#a06b00",
     (1.0, 2.4, 6.5, 10.0, 17.0), 10),
    ("secondary", "[highway] = 'secondary' or [highway] = 'secondary_link'", "#f7fabf", "#707d05",
     (0.8, 2.0, 6.0, 9.5, 16.0), 11),
    ("tertiary", "[highway] = 'tertiary' or [highway] = 'tertiary_link'", "#ffffff", "#8f8f8f",
     (0.0, 1.4, 5.0, 9.0, 15.0), 12),
    ("minor", "[highway] = 'residential' or [highway] = 'unclassified' or [highway] = 'living_street' "
              "or [highway] = 'road'", "#ffffff", "#b5b5b5", (0.0, 0.8, 4.0, 8.0, 14.0), 12),
    ("pedestrian", "[highway] = 'pedestrian'", "#dddde8", "#999999", (0.0, 0.0, 3.0, 6.0, 11.0), 14),
    ("service", "[highway] = 'service'", "#ffffff", "#b5b5b5", (0.0, 0.0, 2.0, 4.0, 7.0), 14),
]
BANDS = [(10, 11), (12, 13), (14, 15), (16, 17), (18, None)]
PATHS = [  # (filter, colour, dash, widths z14-15, 16-17, 18-19)
    ("[highway] = 'footway' or [highway] = 'path' or [highway] = 'steps' or [highway] = 'platform' "
     "or [highway] = 'corridor' or [highway] = 'trail'", "#fa8072", "2,2", (0.8, 1.2, 1.8)),
    ("[highway] = 'cycleway'", "#0000ff", "3,2", (0.8, 1.2, 1.8)),
    ("[highway] = 'track' or [highway] = 'bridleway'", "#996600", "5,3", (0.8, 1.3, 2.0)),
]


def landuse_style() -> str:
    rules = []
    for value, colour, z in LANDUSE:
        rules.append(rule(poly(fill=colour), z, flt=f"[feature] = '{value}'"))
    return style("landuse", rules)


def water_styles() -> str:
    out = style("water-areas", [rule(poly(fill=WATER), 10)])
    rules = [
        rule(line(stroke=WATER, stroke_width=1.0), 12, 13, "[waterway] = 'river' or [waterway] = 'canal'"),
        rule(line(stroke=WATER, stroke_width=3.0, stroke_linecap="round"), 14, 15,
             "[waterway] = 'river' or [waterway] = 'canal'"),
        rule(line(stroke=WATER, stroke_width=6.0, stroke_linecap="round"), 16, None,
             "[waterway] = 'river' or [waterway] = 'canal'"),
        rule(line(stroke=WATER, stroke_width=1.5), 14, 15, "[waterway] = 'stream' or [waterway] = 'ditch' or [waterway] = 'drain'"),
        rule(line(stroke=WATER, stroke_width=2.5), 16, None, "[waterway] = 'stream' or [waterway] = 'ditch' or [waterway] = 'drain'"),
    ]
    return out + style("waterways", rules)


def building_style() -> str:
    return style("buildings", [
        rule(poly(fill="#d9d0c9"), 14, 14),
        rule(poly(fill="#d9d0c9") + "\n      " + line(stroke="#c4b6ab", stroke_width=0.5), 15, None),
    ])


def road_styles(table_zooms: tuple[int, int | None]) -> tuple[str, str]:
    """Casing and fill styles for the zoom range the table serves."""
    lo, hi = table_zooms
    casing, fill = [], []
    for name, flt, colour, case_colour, widths, minz in ROADS:
        for (blo, bhi), w in zip(BANDS, widths):
            if w <= 0:
                continue
            zlo = max(blo, minz, lo)
            zhi = bhi if hi is None else (hi if bhi is None else min(bhi, hi))
            if zhi is not None and zlo > zhi:
                continue
            if blo >= 12:
                casing.append(rule(line(stroke=case_colour, stroke_width=round(w + (1.0 if blo < 16 else 1.6), 2),
                                        stroke_linecap="round", stroke_linejoin="round"), zlo, zhi, flt))
            fill.append(rule(line(stroke=colour if blo >= 12 else case_colour if name in ("tertiary", "minor") else colour,
                                  stroke_width=w, stroke_linecap="round", stroke_linejoin="round"), zlo, zhi, flt))
    for flt, colour, dash, widths in PATHS:
        for (blo, bhi), w in zip(BANDS[2:], widths):
            zlo, zhi = max(blo, lo), bhi
            if hi is not None and zlo > hi:
                continue
            fill.append(rule(line(stroke="#ffffff", stroke_width=w + 1.2, stroke_opacity=0.5), zlo, zhi, flt)
                        + "\n" + rule(line(stroke=colour, stroke_width=w, stroke_dasharray=dash), zlo, zhi, flt))
    return casing, fill


def railway_style() -> str:
    rail = "[railway] = 'rail' or [railway] = 'light_rail' or [railway] = 'subway' or [railway] = 'narrow_gauge'"
    return style("railways", [
        rule(line(stroke="#8c8c8c", stroke_width=1.0), 10, 12, "[railway] = 'rail'"),
        rule(line(stroke="#707070", stroke_width=2.0), 13, 15, rail),
        rule(line(stroke="#707070", stroke_width=3.0) + "\n      "
             + line(stroke="#ffffff", stroke_width=1.0, stroke_dasharray="8,8"), 16, None, rail),
        rule(line(stroke="#6e6e6e", stroke_width=1.0), 14, 15, "[railway] = 'tram'"),
        rule(line(stroke="#6e6e6e", stroke_width=1.6), 16, None, "[railway] = 'tram'"),
    ])


def text(size: float, **kw: object) -> str:
    base = dict(face_name="DejaVu Sans Book", size=size, fill="#333333", halo_fill="rgba(255,255,255,0.85)",
                halo_radius=1.5)
    base.update(kw)
    return f"<TextSymbolizer {attrs(**base)}>[name]</TextSymbolizer>"


def label_styles() -> str:
    streets = style("street-names", [
        rule(text(9, placement="line", spacing=300, max_char_angle_delta=30, minimum_distance=60,
                  fill="#222222"), 15, 16,
             "[highway] = 'primary' or [highway] = 'secondary' or [highway] = 'tertiary' or [highway] = 'trunk'"),
        rule(text(10, placement="line", spacing=300, max_char_angle_delta=30, minimum_distance=60,
                  fill="#222222"), 17, None,
             "[highway] != '' and [highway] != 'footway' and [highway] != 'steps' and [highway] != 'platform'"),
        rule(text(9, placement="line", spacing=300, max_char_angle_delta=30, minimum_distance=60,
                  fill="#222222"), 16, 16,
             "[highway] = 'residential' or [highway] = 'unclassified' or [highway] = 'pedestrian' "
             "or [highway] = 'living_street'"),
    ])
    places = style("place-names", [
        rule(text(14, face_name="DejaVu Sans Bold", fill="#222222", wrap_width=100), 10, 13,
             "[place] = 'city' or [place] = 'town'"),
        rule(text(12, fill="#444444", wrap_width=90), 13, 15, "[place] = 'suburb' or [place] = 'borough'"),
        rule(text(11, fill="#555555", wrap_width=80), 15, 17,
             "[place] = 'neighbourhood' or [place] = 'quarter' or [place] = 'square'"),
    ])
    areas = style("area-names", [
        rule(text(10, fill="#3a6b3a", placement="interior", wrap_width=70), 16, None,
             "[leisure] = 'park' or [landuse] = 'cemetery' or [leisure] = 'garden'"),
        rule(text(10, fill="#4a6fa5", placement="interior", wrap_width=70, face_name="DejaVu Sans Oblique"),
             16, None, "[natural] = 'water' or [landuse] = 'reservoir'"),
    ])
    return streets + places + areas


DATASOURCE = """  <Datasource name="osm">
    <Parameter name="type">postgis</Parameter>
    <Parameter name="host">${host}</Parameter>
    <Parameter name="port">${port}</Parameter>
    <Parameter name="dbname">${dbname}</Parameter>
    <Parameter name="user">${user}</Parameter>
    <Parameter name="password">${password}</Parameter>
    <Parameter name="srid">3857</Parameter>
    <Parameter name="geometry_field">way</Parameter>
    <Parameter name="extent">-20037508.34,-20037508.34,20037508.34,20037508.34</Parameter>
    <Parameter name="estimate_extent">false</Parameter>
    <Parameter name="max_size">2</Parameter>
  </Datasource>
"""

LANDUSE_SQL = """(SELECT way, COALESCE(leisure, landuse, "natural", amenity) AS feature
  FROM planet_osm_polygon
  WHERE (landuse IS NOT NULL OR leisure IS NOT NULL OR amenity IN ('parking', 'school', 'university', 'hospital', 'college')
     OR "natural" IN ('wood', 'scrub', 'heath', 'beach', 'sand', 'bare_rock', 'wetland', 'grassland'))
    AND building IS NULL
  ORDER BY way_area DESC) AS landuse"""
WATER_SQL = """(SELECT way FROM planet_osm_polygon
  WHERE "natural" = 'water' OR water IS NOT NULL OR landuse IN ('reservoir', 'basin') OR waterway = 'riverbank'
  ORDER BY way_area DESC) AS water"""
WATERWAY_SQL = """(SELECT way, waterway FROM planet_osm_line
  WHERE waterway IN ('river', 'canal', 'stream', 'ditch', 'drain') AND (tunnel IS NULL OR tunnel = 'no')) AS waterways"""
BUILDING_SQL = """(SELECT way FROM planet_osm_polygon WHERE building IS NOT NULL AND building != 'no'
  ORDER BY way_area DESC) AS buildings"""
ROADS_LOW_SQL = """(SELECT way, highway FROM planet_osm_roads WHERE highway IS NOT NULL
  ORDER BY z_order) AS roads_low"""
ROADS_SQL = """(SELECT way, highway FROM planet_osm_line
  WHERE highway IS NOT NULL AND (tunnel IS NULL OR tunnel = 'no')
  ORDER BY z_order, osm_id) AS roads"""
TUNNELS_SQL = """(SELECT way, highway FROM planet_osm_line
  WHERE highway IS NOT NULL AND tunnel IS NOT NULL AND tunnel != 'no'
  ORDER BY z_order, osm_id) AS tunnels"""
RAIL_SQL = """(SELECT way, railway FROM planet_osm_line
  WHERE railway IN ('rail', 'light_rail', 'subway', 'narrow_gauge', 'tram')
    AND (tunnel IS NULL OR tunnel = 'no')
  ORDER BY z_order) AS railways"""
STREET_NAMES_SQL = """(SELECT way, highway, name FROM planet_osm_line
  WHERE highway IS NOT NULL AND name IS NOT NULL
  ORDER BY z_order DESC, osm_id) AS street_names"""
AREA_NAMES_SQL = """(SELECT way, leisure, landuse, "natural", name FROM planet_osm_polygon
  WHERE name IS NOT NULL AND (leisure IN ('park', 'garden') OR landuse IN ('cemetery', 'reservoir') OR "natural" = 'water')
    AND way_area > 2000
  ORDER BY way_area DESC) AS area_names"""
PLACE_SQL = """(SELECT way, place, name FROM planet_osm_point
  WHERE place IN ('city', 'town', 'suburb', 'borough', 'neighbourhood', 'quarter', 'square') AND name IS NOT NULL
  ORDER BY CASE place WHEN 'city' THEN 0 WHEN 'town' THEN 1 WHEN 'suburb' THEN 2 WHEN 'borough' THEN 2 ELSE 3 END,
    osm_id) AS places"""


def build() -> str:
    casing_low, fill_low = road_styles((10, 12))
    casing, fill = road_styles((13, None))
    parts = [
        '<?xml version="1.0" encoding="utf-8"?>\n',
        "<!-- Generated by styles/make_osm_style.py: edit that file, not this one.\n\n"
        "  An OpenStreetMap-like style for zooms 10-19 over osm2pgsql's classic\n"
        "  pgsql tables (EPSG:3857). ${host} ${port} ${dbname} ${user} ${password}\n"
        "  and ${font_dir} are filled in by the renderer from the layer's params.\n\n"
        "  Street, place and area names keep Mapnik's label collision detection\n"
        "  (legibility needs it), so whether a label is drawn can depend on labels\n"
        "  elsewhere in the metatile: those tiles are not guaranteed to equal the\n"
        "  tile rendered alone. Everything else (areas, lines, buildings) is.\n"
        "  The sea is not drawn: osm2pgsql's classic tables have no coastline\n"
        "  polygons. -->\n",
        f'<Map srs="epsg:3857" background-color="{LAND}" font-directory="${{font_dir}}">\n',
        DATASOURCE,
        landuse_style(),
        water_styles(),
        building_style(),
        style("roads-low-casing", casing_low) if casing_low else "",
        style("roads-low-fill", fill_low),
        style("tunnels", [rule(line(stroke="#bbbbbb", stroke_width=3.0, stroke_dasharray="4,3",
                                    stroke_opacity=0.7), 15, None)]),
        style("roads-casing", casing),
        style("roads-fill", fill),
        railway_style(),
        label_styles(),
        layer("landuse", LANDUSE_SQL, ["landuse"], 10),
        layer("water", WATER_SQL, ["water-areas"], 10),
        layer("waterways", WATERWAY_SQL, ["waterways"], 12),
        layer("buildings", BUILDING_SQL, ["buildings"], 14),
        layer("roads-low", ROADS_LOW_SQL, (["roads-low-casing"] if casing_low else []) + ["roads-low-fill"], 10,
              minimum_scale_denominator=zmax(13)),
        layer("tunnels", TUNNELS_SQL, ["tunnels"], 15),
        layer("roads", ROADS_SQL, ["roads-casing", "roads-fill"], 13),
        layer("railways", RAIL_SQL, ["railways"], 10),
        layer("area-names", AREA_NAMES_SQL, ["area-names"], 16),
        layer("street-names", STREET_NAMES_SQL, ["street-names"], 15),
        layer("place-names", PLACE_SQL, ["place-names"], 10),
        "</Map>\n",
    ]
    return "".join(parts)


if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "osm.xml")
    with open(out, "w", encoding="utf-8") as f:
        f.write(build())
    print(f"wrote {out}")
