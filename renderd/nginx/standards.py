"""The documents of the standard interfaces, built from the configuration
at ``nginx-conf`` time and written beside nginx.conf (``write_support``):

- WMTS 1.0.0 RESTful: ``wmts/1.0.0/WMTSCapabilities.xml``, every layer in the
  ``GoogleMapsCompatible`` tile matrix set, its ``ResourceURL`` a template
  onto the ``/tiles/`` URLs (so a WMTS client hits the same cache). A raster
  layer's keys are WMTS Dimensions whose values the catalog holds: the file
  has markers that the front fills in per request from the catalog
  (``lua/renderd/standards.lua``): ``<Default>@RPY_DEFAULT:LAYER:N@</Default>``
  and ``<Value>@RPY_VALUES:LAYER:N@</Value>`` (N: the key's position, from
  1), and the layer between ``<!--@RPY_LAYER:LAYER@-->`` and
  ``<!--@RPY_END:LAYER@-->`` (left out while the catalog holds no tile set
  of it: a Dimension needs a value).
- OGC API - Tiles (core, tileset, tilesets list) with ``WebMercatorQuad``:
  ``ogcapi/PATH.json`` for ``/ogcapi/PATH`` (``ogcapi/index.json`` for
  ``/ogcapi/``); tile URLs ``/ogcapi/collections/{layer}/map/tiles/
  WebMercatorQuad/{z}/{y}/{x}`` are answered by the front from the same
  cache as ``/tiles/``.

Every URL starts with ``BASE_PLACEHOLDER``; the front puts the request's
base URL there (as for TileJSON).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from functools import lru_cache
from typing import Any, Iterator

from .. import tilesets
from ..config import Config, LayerConfig
from ..tilemath import BBox, tile_range
from .runtime_json import BASE_PLACEHOLDER

WMTS_NS = "http://www.opengis.net/wmts/1.0"
OWS_NS = "http://www.opengis.net/ows/1.1"
XLINK_NS = "http://www.w3.org/1999/xlink"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
WMTS_SCHEMA = "http://schemas.opengis.net/wmts/1.0/wmtsGetCapabilities_response.xsd"
WMTS_CAPABILITIES = "wmts/1.0.0/WMTSCapabilities.xml"

#: the tile matrix set of 256 px tiles: WMTS name and OGC API name
GOOGLE = "GoogleMapsCompatible"
WEB_MERCATOR_QUAD = "WebMercatorQuad"
WKSS = "urn:ogc:def:wkss:OGC:1.0:GoogleMapsCompatible"
CRS_URN = "urn:ogc:def:crs:EPSG::3857"
#: the latitude limit of Web Mercator, for bounds in WGS84
MAX_LAT = 85.0511287798066

OGC_REL = "http://www.opengis.net/def/rel/ogc/1.0/"
CONFORMANCE = [
    "http://www.opengis.net/spec/ogcapi-common-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-common-1/1.0/conf/json",
    "http://www.opengis.net/spec/ogcapi-common-1/1.0/conf/oas30",
    "http://www.opengis.net/spec/ogcapi-common-2/1.0/conf/collections",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/tileset",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/tilesets-list",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/geodata-tilesets",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/png",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/jpeg",
    "http://www.opengis.net/spec/tms/2.0/conf/tilematrixset",
    "http://www.opengis.net/spec/tms/2.0/conf/json-tilematrixset",
    "http://www.opengis.net/spec/tms/2.0/conf/tilesetmetadata",
    "http://www.opengis.net/spec/tms/2.0/conf/json-tilesetmetadata",
]


@lru_cache(maxsize=1)
def web_mercator_quad() -> dict[str, Any]:
    """The OGC TMS 2.0 JSON of ``WebMercatorQuad`` (morecantile's definition)."""
    import json

    import morecantile
    return json.loads(morecantile.tms.get(WEB_MERCATOR_QUAD).model_dump_json(exclude_none=True))


def tile_matrix_set_document() -> dict[str, Any]:
    """``/ogcapi/tileMatrixSets/WebMercatorQuad``: the TMS 2.0 JSON, plus the
    members of the TMS 1.0 JSON encoding that clients of its time read
    (``type``, ``identifier``, ``supportedCRS``; per matrix ``identifier``
    and ``topLeftCorner``). GDAL up to 3.6 (Debian 12's, and so its QGIS)
    parses only those; the names differ from TMS 2.0's, so a TMS 2.0 reader
    sees its own members unchanged."""
    tms = web_mercator_quad()
    doc: dict[str, Any] = {"type": "TileMatrixSetType", "identifier": tms["id"], "supportedCRS": tms["crs"],
                           **tms}
    doc["tileMatrices"] = [{**m, "identifier": m["id"], "topLeftCorner": m["pointOfOrigin"]}
                           for m in tms["tileMatrices"]]
    return doc


def matrix_set_name(tile_size: int) -> str:
    """The WMTS tile matrix set of a layer's tile size: GoogleMapsCompatible
    for 256 px, ``GoogleMapsCompatible_512`` and so on for others."""
    return GOOGLE if tile_size == 256 else f"{GOOGLE}_{tile_size}"


def wgs84_bounds(lyr: LayerConfig) -> BBox:
    """The layer's bounds clamped to what Web Mercator shows."""
    w, s, e, n = lyr.bounds
    return BBox(w, max(s, -MAX_LAT), e, min(n, MAX_LAT))


def matrix_limits(lyr: LayerConfig) -> Iterator[tuple[int, int, int, int, int]]:
    """(z, min row, max row, min col, max col) of the layer's bounds per zoom."""
    box = wgs84_bounds(lyr)
    for z in range(lyr.minzoom, lyr.maxzoom + 1):
        x0, y0, x1, y1 = tile_range(box, z)
        yield z, y0, y1, x0, x1


# --- WMTS ------------------------------------------------------------------------------

def _sub(parent: ET.Element, tag: str, text: str | None = None, ns: str = WMTS_NS,
         **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, f"{{{ns}}}{tag}", attrs)
    if text is not None:
        el.text = text
    return el


def _ows(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    return _sub(parent, tag, text, ns=OWS_NS)


def _wmts_layer(contents: ET.Element, lyr: LayerConfig, scale: int = 1) -> None:
    """The WMTS Layer of ``lyr`` at ``scale``: ``world``, and ``world@2x``
    (512 px tiles in ``GoogleMapsCompatible_512``) for its HiDPI tile set."""
    ident = tilesets.scaled(lyr, scale).name
    tile_size = lyr.tile_size * scale
    if lyr.keys:
        contents.append(ET.Comment(f"@RPY_LAYER:{lyr.name}@"))
    layer = _sub(contents, "Layer")
    _ows(layer, "Title", ident)
    abstract = "; ".join(x for x in (lyr.description, lyr.attribution) if x)
    if abstract:
        _ows(layer, "Abstract", abstract)
    w, s, e, n = wgs84_bounds(lyr)
    box = _ows(layer, "WGS84BoundingBox")
    _ows(box, "LowerCorner", f"{w!r} {s!r}")
    _ows(box, "UpperCorner", f"{e!r} {n!r}")
    _ows(layer, "Identifier", ident)
    style = _sub(layer, "Style", isDefault="true")
    _ows(style, "Identifier", "default")
    _sub(layer, "Format", lyr.content_type)
    for i, key in enumerate(lyr.keys, 1):
        dim = _sub(layer, "Dimension")
        _ows(dim, "Identifier", key)
        _sub(dim, "Default", f"@RPY_DEFAULT:{lyr.name}:{i}@")
        _sub(dim, "Value", f"@RPY_VALUES:{lyr.name}:{i}@")
    link = _sub(layer, "TileMatrixSetLink")
    _sub(link, "TileMatrixSet", matrix_set_name(tile_size))
    limits = _sub(link, "TileMatrixSetLimits")
    for z, r0, r1, c0, c1 in matrix_limits(lyr):
        lim = _sub(limits, "TileMatrixLimits")
        for tag, v in (("TileMatrix", z), ("MinTileRow", r0), ("MaxTileRow", r1),
                       ("MinTileCol", c0), ("MaxTileCol", c1)):
            _sub(lim, tag, str(v))
    path = "/".join([lyr.name, *(f"{{{k}}}" for k in lyr.keys)])
    suffix = f"@{scale}x" if scale > 1 else ""
    _sub(layer, "ResourceURL", format=lyr.content_type, resourceType="tile",
         template=f"{BASE_PLACEHOLDER}/tiles/{path}/{{TileMatrix}}/{{TileCol}}/{{TileRow}}{suffix}.{lyr.ext}")
    if lyr.keys:
        contents.append(ET.Comment(f"@RPY_END:{lyr.name}@"))


def _wmts_matrix_set(contents: ET.Element, tile_size: int, maxzoom: int) -> None:
    tms = web_mercator_quad()
    tset = _sub(contents, "TileMatrixSet")
    _ows(tset, "Identifier", matrix_set_name(tile_size))
    _ows(tset, "SupportedCRS", CRS_URN)
    if tile_size == 256:
        _sub(tset, "WellKnownScaleSet", WKSS)
    for m in tms["tileMatrices"][:maxzoom + 1]:
        tm = _sub(tset, "TileMatrix")
        _ows(tm, "Identifier", m["id"])
        # a larger tile of the same area: finer pixels, a smaller scale
        _sub(tm, "ScaleDenominator", repr(m["scaleDenominator"] * 256 / tile_size))
        x, y = m["pointOfOrigin"]
        _sub(tm, "TopLeftCorner", f"{x!r} {y!r}")
        _sub(tm, "TileWidth", str(tile_size))
        _sub(tm, "TileHeight", str(tile_size))
        _sub(tm, "MatrixWidth", str(m["matrixWidth"]))
        _sub(tm, "MatrixHeight", str(m["matrixHeight"]))


def wmts_capabilities(cfg: Config) -> str:
    """The WMTS 1.0.0 ServiceMetadata document (see the module comment)."""
    for prefix, ns in (("", WMTS_NS), ("ows", OWS_NS), ("xlink", XLINK_NS), ("xsi", XSI_NS)):
        ET.register_namespace(prefix, ns)
    root = ET.Element(f"{{{WMTS_NS}}}Capabilities", {
        "version": "1.0.0", f"{{{XSI_NS}}}schemaLocation": f"{WMTS_NS} {WMTS_SCHEMA}"})
    ident = _ows(root, "ServiceIdentification")
    _ows(ident, "Title", "renderd-py")
    _ows(ident, "ServiceType", "OGC WMTS")
    _ows(ident, "ServiceTypeVersion", "1.0.0")
    contents = _sub(root, "Contents")
    sizes: dict[int, int] = {}
    for lyr in cfg.layers:
        for n in lyr.scales:
            _wmts_layer(contents, lyr, n)
            sizes[lyr.tile_size * n] = max(sizes.get(lyr.tile_size * n, 0), lyr.maxzoom)
    for size, maxzoom in sorted(sizes.items()):
        _wmts_matrix_set(contents, size, maxzoom)
    _sub(root, "ServiceMetadataURL", **{f"{{{XLINK_NS}}}href": f"{BASE_PLACEHOLDER}/{WMTS_CAPABILITIES}"})
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# --- OGC API - Tiles ---------------------------------------------------------------

def _link(href: str, rel: str, title: str, type_: str = "application/json", **more: Any) -> dict[str, Any]:
    return {"href": f"{BASE_PLACEHOLDER}/ogcapi/{href}", "rel": rel, "type": type_, "title": title, **more}


def ogc_layers(cfg: Config) -> list[LayerConfig]:
    """The layers the OGC API offers: those of 256 px tiles (WebMercatorQuad's)."""
    return [lyr for lyr in cfg.layers if lyr.tile_size == 256]


def _extent(lyr: LayerConfig) -> dict[str, Any]:
    return {"spatial": {"bbox": [list(wgs84_bounds(lyr))],
                        "crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84"}}


def _tiles_base(lyr: LayerConfig) -> str:
    return f"collections/{lyr.name}/map/tiles"


def tile_template(lyr: LayerConfig) -> str:
    """The OGC API tile URL template of a layer (keys as query parameters)."""
    query = "&".join(f"{k}={{{k}}}" for k in lyr.keys)
    return (f"{BASE_PLACEHOLDER}/ogcapi/{_tiles_base(lyr)}/{WEB_MERCATOR_QUAD}"
            "/{tileMatrix}/{tileRow}/{tileCol}" + (f"?{query}" if query else ""))


def _tileset(lyr: LayerConfig) -> dict[str, Any]:
    tms = web_mercator_quad()
    item = _link("", "item", f"{lyr.name} tiles", lyr.content_type, templated=True)
    item["href"] = tile_template(lyr)
    if lyr.keys:
        item["variables"] = {k: {"type": "string", "description": f"value of the catalog key {k}"}
                             for k in lyr.keys}
    return {
        "title": lyr.name,
        **({"description": lyr.description} if lyr.description else {}),
        **({"attribution": lyr.attribution} if lyr.attribution else {}),
        "dataType": "map",
        "crs": tms["crs"],
        "tileMatrixSetURI": tms["uri"],
        "boundingBox": {"lowerLeft": list(wgs84_bounds(lyr)[:2]), "upperRight": list(wgs84_bounds(lyr)[2:]),
                        "crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84"},
        "tileMatrixSetLimits": [{"tileMatrix": str(z), "minTileRow": r0, "maxTileRow": r1,
                                 "minTileCol": c0, "maxTileCol": c1}
                                for z, r0, r1, c0, c1 in matrix_limits(lyr)],
        "links": [
            _link(f"{_tiles_base(lyr)}/{WEB_MERCATOR_QUAD}", "self", f"{lyr.name} tileset"),
            _link(f"tileMatrixSets/{WEB_MERCATOR_QUAD}", OGC_REL + "tiling-scheme", WEB_MERCATOR_QUAD),
            _link(f"collections/{lyr.name}", "collection", lyr.name),
            item,
        ],
    }


def _tileset_summary(lyr: LayerConfig) -> dict[str, Any]:
    tms = web_mercator_quad()
    return {"title": lyr.name, "dataType": "map", "crs": tms["crs"], "tileMatrixSetURI": tms["uri"],
            "links": [_link(f"{_tiles_base(lyr)}/{WEB_MERCATOR_QUAD}", "self", f"{lyr.name} tileset"),
                      _link(f"tileMatrixSets/{WEB_MERCATOR_QUAD}", OGC_REL + "tiling-scheme",
                            WEB_MERCATOR_QUAD)]}


def _collection(lyr: LayerConfig) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": lyr.name, "title": lyr.name}
    if lyr.description:
        doc["description"] = lyr.description
    if lyr.attribution:
        doc["attribution"] = lyr.attribution
    doc["extent"] = _extent(lyr)
    doc["links"] = [_link(f"collections/{lyr.name}", "self", lyr.name),
                    _link(_tiles_base(lyr), OGC_REL + "tilesets-map", f"{lyr.name} map tilesets")]
    return doc


OPENAPI_TYPE = "application/vnd.oai.openapi+json;version=3.0"


def _json_op(summary: str, params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"get": {"summary": summary, "parameters": params or [],
                    "responses": {"200": {"description": summary,
                                          "content": {"application/json": {"schema": {"type": "object"}}}},
                                  "404": {"description": "not found"}}}}


def _path_param(name: str, values: list[str] | None = None, integer: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer", "minimum": 0} if integer else {"type": "string"}
    if values is not None:
        schema["enum"] = values
    return {"name": name, "in": "path", "required": True, "schema": schema}


def openapi(cfg: Config) -> dict[str, Any]:
    """The API definition (OpenAPI 3.0) the landing page links as ``service-desc``."""
    names = [lyr.name for lyr in ogc_layers(cfg)]
    collection = _path_param("collectionId", names)
    tms = _path_param("tileMatrixSetId", [WEB_MERCATOR_QUAD])
    tile_params = [collection, tms, *(_path_param(n, integer=True) for n in ("tileMatrix", "tileRow", "tileCol"))]
    keys = sorted({k for lyr in ogc_layers(cfg) for k in lyr.keys})
    tile_params += [{"name": k, "in": "query", "required": False, "schema": {"type": "string"},
                     "description": f"the value of the key {k}, for a collection with that key"} for k in keys]
    types = sorted({lyr.content_type for lyr in ogc_layers(cfg)})
    base = "/collections/{collectionId}/map/tiles"
    return {
        "openapi": "3.0.3",
        "info": {"title": "renderd-py", "version": "1.0.0",
                 "description": "OGC API - Tiles (map tiles in WebMercatorQuad) over the tiles of /tiles/"},
        "servers": [{"url": f"{BASE_PLACEHOLDER}/ogcapi"}],
        "paths": {
            "/": _json_op("landing page"),
            "/conformance": _json_op("conformance classes"),
            "/collections": _json_op("collections"),
            "/collections/{collectionId}": _json_op("a collection", [collection]),
            base: _json_op("the collection's map tilesets", [collection]),
            base + "/{tileMatrixSetId}": _json_op("a tileset's metadata", [collection, tms]),
            base + "/{tileMatrixSetId}/{tileMatrix}/{tileRow}/{tileCol}": {"get": {
                "summary": "a map tile", "parameters": tile_params,
                "responses": {"200": {"description": "the tile",
                                      "content": {t: {"schema": {"type": "string", "format": "binary"}}
                                                  for t in types}},
                              "400": {"description": "a malformed tile path or key value"},
                              "404": {"description": "no such collection, tile matrix set, matrix or tile"},
                              "503": {"description": "the tile could not be rendered in time"}}}},
            "/tileMatrixSets": _json_op("tile matrix sets"),
            "/tileMatrixSets/{tileMatrixSetId}": _json_op("a tile matrix set", [tms]),
        },
    }


def ogcapi_documents(cfg: Config) -> dict[str, dict[str, Any]]:
    """Every OGC API document, by its path under ``/ogcapi/`` (``index`` for the landing page)."""
    tms = web_mercator_quad()
    layers = ogc_layers(cfg)
    docs: dict[str, dict[str, Any]] = {
        "index": {
            "title": "renderd-py", "description": "map tiles of " + ", ".join(lyr.name for lyr in layers),
            "links": [_link("", "self", "this document"),
                      _link("api", "service-desc", "the API definition", OPENAPI_TYPE),
                      _link("conformance", "conformance", "conformance classes"),
                      _link("conformance", OGC_REL + "conformance", "conformance classes"),
                      _link("collections", "data", "collections"),
                      _link("collections", OGC_REL + "data", "collections"),
                      _link("tileMatrixSets", OGC_REL + "tiling-schemes", "tile matrix sets")]},
        "api": openapi(cfg),
        "conformance": {"conformsTo": CONFORMANCE},
        "collections": {"links": [_link("collections", "self", "collections")],
                        "collections": [_collection(lyr) for lyr in layers]},
        "tileMatrixSets": {"tileMatrixSets": [{
            "id": WEB_MERCATOR_QUAD, "title": tms.get("title", WEB_MERCATOR_QUAD), "uri": tms["uri"],
            "links": [_link(f"tileMatrixSets/{WEB_MERCATOR_QUAD}", "self", WEB_MERCATOR_QUAD)]}]},
        f"tileMatrixSets/{WEB_MERCATOR_QUAD}": tile_matrix_set_document(),
    }
    for lyr in layers:
        docs[f"collections/{lyr.name}"] = _collection(lyr)
        docs[_tiles_base(lyr)] = {"links": [_link(_tiles_base(lyr), "self", f"{lyr.name} map tilesets")],
                                  "tilesets": [_tileset_summary(lyr)]}
        docs[f"{_tiles_base(lyr)}/{WEB_MERCATOR_QUAD}"] = _tileset(lyr)
    return docs

