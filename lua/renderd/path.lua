-- renderd.path: parse and validate a tile request before any I/O. Pure
-- functions, no ngx.* calls, so every rule is testable on strings.
--
--   local path = require "renderd.path"
--   local t, status, msg = path.parse(raw_uri, layers)
--   -- t = { layer = <layer table>, tileset = "name" or "name/v1/.../vn",
--   --       part = "name" or "name@2x" (the tile set's layer part: its scale),
--   --       values = { v1, ..., vn }, z =, x =, y =, ext =,
--   --       n =, x0 =, y0 =, mx =, my =, i = <0-based x-major index> }
--   -- or nil, 400|404, "short reason"
--
-- raw_uri is the request line's URI as the client sent it
-- ($request_uri: not decoded, not normalised, with the query string).
-- layers maps a layer name to its table (name, minzoom, maxzoom, metatile,
-- ext, keys). A layer with n keys takes n value segments after its name:
-- /tiles/{layer}/{v1}/.../{vn}/{z}/{x}/{y}.{ext}, values of
-- [A-Za-z0-9_.-], at most 64 bytes, not "." (the tile set "layer/v1/.../vn",
-- renderd/tilesets.py); another count of segments is 400. The query string
-- is ignored (cache busters); percent signs, "..", empty segments,
-- non-digits, numbers longer than the grid allows, and paths over 256
-- bytes (URIs over 2048 with the query) are 400. A HiDPI tile,
-- {y}@2x.{ext}, is the tile set "name@2x[/v1/.../vn]"; a scale not in the
-- layer's `scales` is 404.

local find = string.find
local sub = string.sub
local match = string.match
local gmatch = string.gmatch
local gsub = string.gsub
local concat = table.concat
local tonumber = tonumber

local _M = { _VERSION = "0.1.0" }

--- Longest path (without the query string), and longest request URI
-- with it; anything longer is 400.
_M.MAX_URI = 256
_M.MAX_REQUEST_URI = 2048
--- Highest zoom the grid allows (tilemath.MAX_ZOOM).
_M.MAX_ZOOM = 30
--- Most key values a path may carry (renderd/tilesets.py MAX_KEYS).
_M.MAX_KEYS = 8
local NO_VALUES = {}

local PREFIX = "/tiles/"

--- The metatile of tile (z, x, y) for a layer metatile size `meta`.
-- Returns n, x0, y0, mx, my, i (i: 0-based x-major position of the tile).
function _M.metatile(z, x, y, meta)
    local n = 2 ^ z
    if meta < n then
        n = meta
    end
    local x0 = x - x % n
    local y0 = y - y % n
    return n, x0, y0, x0 / n, y0 / n, (x - x0) * n + (y - y0)
end

-- the common case in one match: a well-formed origin-form path, then the
-- end or a query string (such a path holds no "%", "..", "//" or other
-- byte outside the allowed ones)
local FAST = "^/tiles/([A-Za-z0-9_%-]+)/(%d+)/(%d+)/(%d+)%.([a-z0-9]+)(.?)"

-- every rule, one at a time, for the rest (and their 400 reasons)
local function slow(uri)
    local q = find(uri, "?", 1, true)
    if q then
        uri = sub(uri, 1, q - 1)
    end
    -- absolute-form request target: "GET http://host/tiles/... HTTP/1.1"
    uri = match(uri, "^[hH][tT][tT][pP][sS]?://[^/]*(/.*)$") or uri
    if #uri > _M.MAX_URI then
        return nil, "URI too long"
    end
    if sub(uri, 1, #PREFIX) ~= PREFIX then
        return nil, "not a tile path"
    end
    -- only these bytes may appear at all: no %, no NUL, no "..", no "//"
    if find(uri, "[^A-Za-z0-9_%-%./@]") or find(uri, "..", 1, true) or find(uri, "//", 1, true) then
        return nil, "malformed tile path"
    end
    local name, rest = match(uri, "^/tiles/([A-Za-z0-9_%-]+)/(.*)$")
    local prefix, zs, xs, ys, scale, ext
    if rest then
        -- (a HiDPI tile: {y}@2x.{ext}; "@" nowhere else)
        prefix, zs, xs, ys, scale, ext = match(rest, "^([^@]-)(%d+)/(%d+)/(%d+)@([2-9])x%.([a-z0-9]+)$")
        if not prefix then
            prefix, zs, xs, ys, ext = match(rest, "^([^@]-)(%d+)/(%d+)/(%d+)%.([a-z0-9]+)$")
        end
    end
    if not prefix or (prefix ~= "" and sub(prefix, -1) ~= "/") then
        return nil, "malformed tile path"
    end
    local values = NO_VALUES
    if prefix ~= "" then
        values = {}
        for v in gmatch(prefix, "([^/]+)/") do
            if v == "." or #v > 64 or find(v, "[^A-Za-z0-9_%-%.]") or #values >= _M.MAX_KEYS then
                return nil, "malformed tile path"
            end
            values[#values + 1] = v
        end
    end
    return name, zs, xs, ys, ext, values, tonumber(scale)
end

--- Whether name is a tile set's name: a layer name, then "/" and a value
-- per key (the values' rules of parse).
function _M.is_tileset(name)
    local base, rest = match(name, "^([A-Za-z0-9_%-]+)(.*)$")
    if not base or #base > 64 then
        return false
    end
    if find(rest, "^@[2-4]x") then      -- a scale (renderd/tilesets.py)
        rest = sub(rest, 4)
    end
    local n = 0
    for v in gmatch(rest, "/([^/]*)") do
        n = n + 1
        if v == "" or v == "." or v == ".." or #v > 64 or find(v, "[^A-Za-z0-9_%-%.]") or n > _M.MAX_KEYS then
            return false
        end
    end
    return #gsub(rest, "/[^/]*", "") == 0
end

--- Parse a raw request URI. See the module comment.
function _M.parse(uri, layers)
    if not uri or #uri > _M.MAX_REQUEST_URI then
        return nil, 400, "URI too long"
    end
    local name, zs, xs, ys, ext, rest, scale
    local values = NO_VALUES
    if #uri <= _M.MAX_URI then
        name, zs, xs, ys, ext, rest = match(uri, FAST)
    end
    if not name or (rest ~= "" and rest ~= "?") then
        name, zs, xs, ys, ext, values, scale = slow(uri)
        if not name then
            return nil, 400, zs
        end
    end
    if #name > 64 or #zs > 2 or #xs > 10 or #ys > 10 or #ext > 8 then
        return nil, 400, "malformed tile path"
    end
    local layer = layers[name]
    if not layer then
        return nil, 404, "unknown layer"
    end
    local part = name
    if scale then
        if not (layer.scale_set and layer.scale_set[scale]) then
            return nil, 404, "scale not configured"
        end
        part = name .. "@" .. scale .. "x"
    end
    local tileset = part
    if #values ~= #layer.keys then
        return nil, 400, #layer.keys == 0 and "malformed tile path" or "wrong number of key values"
    elseif values ~= NO_VALUES then
        tileset = part .. "/" .. concat(values, "/")
    end
    local z, x, y = tonumber(zs), tonumber(xs), tonumber(ys)
    if z < layer.minzoom or z > layer.maxzoom or z > _M.MAX_ZOOM then
        return nil, 404, "zoom outside the layer"
    end
    local size = 2 ^ z
    if x >= size or y >= size then
        return nil, 404, "tile outside the grid"
    end
    if ext ~= layer.ext then
        return nil, 404, "wrong extension"
    end
    local n, x0, y0, mx, my, i = _M.metatile(z, x, y, layer.metatile)
    return {
        layer = layer, tileset = tileset, part = part, values = values, z = z, x = x, y = y, ext = ext,
        n = n, x0 = x0, y0 = y0, mx = mx, my = my, i = i,
    }
end

return _M
