"""A pipeline file into checked stages, or one line saying what is wrong.

``load(path)`` reads the JSON (a syntax error names its line and column),
checks each stage in order (an object with a known ``type``, no unknown
field, every required one, each value good) and that each stage takes
what the one before gives; the first problem is a ``PipelineError``:

    stage 3 (write.mbtiles) takes tiles, stage 2 (write.catalog) gives datasets
    stage 2 (transform.optimize): field "compression": "lzma" is not one of auto, ...

``check_config(pipeline, cfg)`` then checks what needs the configuration
(the layer a stage names exists, draws the collection the stage before
fills, has the keys the datasets carry, the zooms), and gives each
stage's ``Flow``: what its items are, as far as can be known before
running.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import PipelineError, UsageError
from .spec import (DATASETS, FILE, READERS, RASTERS, TILES, TYPES, Context, CrossError, FieldError,
                   Stage, kind_of, placeholders, show)

#: stage types that need the configuration (catalog, store, layers, daemon)
NEEDS_CONFIG = frozenset({"read.catalog", "write.catalog", "transform.pyramid", "read.store",
                          "write.mbtiles", "write.pmtiles"})


@dataclass
class Flow:
    """What a stage gives, as known before it runs: the kind of items and,
    where known, the keys they carry (None: not known), the collection of
    datasets, the layer of tiles (a ``LayerConfig`` once the configuration
    is checked) and whether the tiles are of one tile set only."""

    kind: str
    keys: tuple[str, ...] | None = None
    collection: str | None = None
    where: dict[str, str] = field(default_factory=dict)
    layer: str | None = None
    layer_config: Any = None
    tileset: str | None = None        # one tile set (LAYER/VALUE/...) or None: every one met


@dataclass
class Pipeline:
    path: str
    stages: list[Stage]
    flows: list[Flow]

    @property
    def needs_config(self) -> bool:
        return any(s.type in NEEDS_CONFIG for s in self.stages)

    @property
    def name(self) -> str:
        return self.path


class _Object(dict):
    """A JSON object that remembers the names given twice."""

    def __init__(self, pairs: list[tuple[str, Any]]):
        super().__init__()
        self.twice: list[str] = []
        for k, v in pairs:
            if k in self and k not in self.twice:
                self.twice.append(k)
            self[k] = v


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def read_json(path: str) -> Any:
    """The document of a pipeline file; ``PipelineError`` naming the line and
    column of a syntax error."""
    from ..errors import file_errors_as_usage
    with file_errors_as_usage(f"pipeline {path}"), open(path, "rb") as f:
        raw = f.read(64 * 1024 * 1024 + 1)
    if len(raw) > 64 * 1024 * 1024:
        raise PipelineError(f"pipeline {path} is larger than 64 MB")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise PipelineError(f"pipeline {path} is not UTF-8 text (byte {e.start})") from None
    return parse_json(text, path)


def parse_json(text: str, path: str = "pipeline") -> Any:
    try:
        return json.loads(text, object_pairs_hook=_Object, parse_constant=_constant)
    except json.JSONDecodeError as e:
        raise PipelineError(f"pipeline {path} is not valid JSON: line {e.lineno}, column {e.colno}: "
                            f"{e.msg}") from None
    except ValueError as e:   # NaN, Infinity
        raise PipelineError(f"pipeline {path} is not valid JSON: {e}") from None


def load(path: str) -> Pipeline:
    """Read and check the pipeline file at ``path`` (no configuration needed)."""
    return parse(read_json(path), path, os.path.dirname(os.path.abspath(path)))


def parse(doc: Any, path: str = "pipeline", base: str | None = None) -> Pipeline:
    """Check a decoded pipeline document; relative paths start at ``base``."""
    ctx = Context(base or os.getcwd())
    if not isinstance(doc, list):
        raise PipelineError(f"pipeline {path} must be a JSON list of stages "
                            f"[{{\"type\": ...}}, ...], not {kind_of(doc)}")
    if not doc:
        raise PipelineError(f"pipeline {path} has no stages")
    stages: list[Stage] = []
    flows: list[Flow] = []
    for i, raw in enumerate(doc, start=1):
        stage = _stage(i, raw, ctx)
        before = flows[-1] if flows else None
        flows.append(_link(stage, stages[-1] if stages else None, before))
        stages.append(stage)
    return Pipeline(path, stages, flows)


def _stage(i: int, raw: Any, ctx: Context) -> Stage:
    where = f"stage {i}"
    if not isinstance(raw, dict):
        raise PipelineError(f"{where} must be an object such as {{\"type\": \"read.files\", ...}}, "
                            f"not {kind_of(raw)}")
    if "type" not in raw:
        raise PipelineError(f"{where}: missing field \"type\" (one of {', '.join(TYPES)})")
    kind = raw["type"]
    if not isinstance(kind, str):
        raise PipelineError(f"{where}: field \"type\": must be a string, not {kind_of(kind)}")
    label = f"stage {i} ({kind})"
    spec = TYPES.get(kind)
    if spec is None:
        near = difflib.get_close_matches(kind, list(TYPES), n=1, cutoff=0.6)
        hint = f"did you mean {near[0]}?" if near else f"one of {', '.join(TYPES)}"
        raise PipelineError(f"{label}: unknown type ({hint})")
    twice = getattr(raw, "twice", [])
    if twice:
        raise PipelineError(f"{label}: field {show(twice[0])} is given twice")
    for name in raw:
        if name != "type" and name not in spec.fields:
            near = difflib.get_close_matches(name, list(spec.fields), n=1, cutoff=0.6)
            hint = (f"did you mean {show(near[0])}?" if near
                    else f"{kind} has {', '.join(spec.fields)}")
            raise PipelineError(f"{label}: unknown field {show(name)} ({hint})")
    values: dict[str, Any] = {}
    for name, f in spec.fields.items():
        if name not in raw:
            if f.required:
                raise PipelineError(f"{label}: missing field {show(name)}")
            values[name] = f.default
            continue
        if raw[name] is None and not f.required:
            values[name] = f.default
            continue
        try:
            values[name] = f.check(raw[name], ctx)
        except FieldError as e:
            raise PipelineError(f"{label}: field {show(name)}: {e}") from None
    if spec.cross is not None:
        try:
            spec.cross(values)
        except CrossError as e:
            at = f"field {show(e.field)}: " if e.field else ""
            raise PipelineError(f"{label}: {at}{e}") from None
    return Stage(i, kind, values, {k: v for k, v in raw.items() if k != "type"})


def _link(stage: Stage, prev: Stage | None, before: Flow | None) -> Flow:
    """Check that ``stage`` takes what ``prev`` gives; what ``stage`` gives."""
    spec = stage.spec
    if prev is None:
        if spec.takes is not None:
            raise PipelineError(f"{stage.label} takes {spec.takes}, but nothing comes before it "
                                f"(a pipeline starts with {', '.join(READERS[:-1])} or {READERS[-1]})")
    else:
        assert before is not None
        if spec.takes != before.kind:
            takes = spec.takes or "nothing"
            raise PipelineError(f"{stage.label} takes {takes}, {prev.label} gives {before.kind}")
    kind = stage.type
    if kind == "read.files":
        from ..catalog.pattern import parse_pattern
        keys = parse_pattern(stage["pattern"]).keys
        split = stage.get("split_bands")
        return Flow(RASTERS, keys + ((split["key"],) if split else ()))
    if kind in ("transform.optimize", "transform.reproject"):
        assert before is not None
        name = stage.get("name")
        if name is not None:
            _keys_known(stage, "name", placeholders(name), before.keys, prev)
        return replace(before)
    if kind == "write.catalog":
        assert before is not None
        return Flow(DATASETS, before.keys, collection=stage["collection"])
    if kind == "read.catalog":
        return Flow(DATASETS, None, collection=stage["collection"], where=dict(stage["where"]))
    if kind in ("transform.pyramid", "read.store"):
        return Flow(TILES, layer=stage["layer"])
    return Flow(FILE)


def _keys_known(stage: Stage, field_name: str, wanted: list[str], keys: tuple[str, ...] | None,
                prev: Stage | None) -> None:
    if keys is None:
        return
    for k in wanted:
        if k not in keys:
            have = f"they have {', '.join(keys)}" if keys else "they have none"
            raise PipelineError(f"{stage.label}: field {show(field_name)}: {{{k}}} is not a key of "
                                f"the rasters ({have})")


# --- what needs the configuration ------------------------------------------------------

def check_config(pipeline: Pipeline, cfg: Any) -> None:
    """Check the stages against the configuration; fills each tiles
    ``Flow``'s layer configuration."""
    from ..tilemath import parse_zoom_range

    for i, (stage, flow) in enumerate(zip(pipeline.stages, pipeline.flows)):
        before = pipeline.flows[i - 1] if i else None
        prev = pipeline.stages[i - 1] if i else None
        if stage.type in ("transform.pyramid", "read.store"):
            lyr, values = _layer(stage, cfg)
            flow.layer_config = lyr
            flow.tileset = stage["layer"] if values or not lyr.keys else None
            z = stage.raw["zoom"]
            try:
                parse_zoom_range(str(z), lyr.minzoom, lyr.maxzoom)
            except UsageError as e:
                raise PipelineError(f"{stage.label}: field \"zoom\": "
                                    f"{str(e).replace(f'zoom range {str(z)!r}', show(z))}") from None
            if stage.type == "transform.pyramid":
                _pyramid_layer(stage, lyr, before, prev)
        elif stage.type in ("write.mbtiles", "write.pmtiles"):
            assert before is not None and prev is not None
            _extract_path(stage, before, prev)


def _layer(stage: Stage, cfg: Any) -> tuple[Any, tuple[str, ...]]:
    from .. import tilesets
    base, values = tilesets.split(stage["layer"])
    try:
        lyr = cfg.layer(base)
    except UsageError as e:
        raise PipelineError(f"{stage.label}: field \"layer\": {e}") from None
    if values and len(values) != len(lyr.keys):
        what = (f"has the keys {', '.join(lyr.keys)}: give a value for each"
                if lyr.keys else "has no keys")
        raise PipelineError(f"{stage.label}: field \"layer\": layer {base} {what}")
    return lyr, values


def _pyramid_layer(stage: Stage, lyr: Any, before: Flow | None, prev: Stage | None) -> None:
    if lyr.kind != "raster":
        raise PipelineError(f"{stage.label}: field \"layer\": layer {lyr.name} is a {lyr.kind} "
                            "layer; a pyramid renders a raster layer from datasets")
    assert before is not None and prev is not None
    if before.collection is not None and lyr.collection != before.collection:
        raise PipelineError(f"{stage.label}: field \"layer\": layer {lyr.name} draws collection "
                            f"{lyr.collection}, {prev.label} gives datasets of collection "
                            f"{before.collection}")
    if before.keys is not None:
        for k in (*lyr.keys, *lyr.where):
            if k not in before.keys:
                role = "names key" if k in lyr.keys else "selects by key"
                have = f"with keys {', '.join(before.keys)}" if before.keys else "without keys"
                raise PipelineError(f"{stage.label}: field \"layer\": layer {lyr.name} {role} {k}, "
                                    f"{prev.label} gives datasets {have}")


def _extract_path(stage: Stage, before: Flow, prev: Stage) -> None:
    lyr = before.layer_config
    if lyr is None:
        return
    path = stage.raw["path"]
    named = placeholders(path)
    for k in named:
        if k not in lyr.keys:
            have = f"it has {', '.join(lyr.keys)}" if lyr.keys else "it has none"
            raise PipelineError(f"{stage.label}: field \"path\": {{{k}}} is not a key of layer "
                                f"{lyr.name} ({have})")
    if before.tileset is None:
        missing = [k for k in lyr.keys if k not in named]
        if missing:
            stem, ext = os.path.splitext(os.path.basename(path))
            example = f"{stem}_" + "_".join(f"{{{k}}}" for k in lyr.keys) + ext
            raise PipelineError(f"{stage.label}: field \"path\": layer {lyr.name} has the keys "
                                f"{', '.join(lyr.keys)}, one file per tile set: name "
                                f"{'them' if len(missing) > 1 else 'it'} in the path "
                                f"(such as {example})")
