-- renderd.route: the key the router hashes to pick a cache node
-- (`renderd-py nginx-conf --router`, nginx/router.tmpl).
--
--   init_by_lua_block { require("renderd.route").init("/path/route.json") }
--   set_by_lua_block $rpy_route { return require("renderd.route").key(ngx.var.request_uri) }
--
-- route.json: {"layers": [...]}, the layers of the runtime JSON (name,
-- minzoom, maxzoom, metatile, ext, keys). A tile's key is its metatile,
-- "TILESET/Z/X0/Y0", so every tile of a metatile goes to the same node;
-- anything else (TileJSON, documents, malformed paths) is keyed by its path
-- without the query string, and the node answers it as usual.

local cjson = require "cjson.safe"
local path = require "renderd.path"

local find = string.find
local sub = string.sub

local _M = { _VERSION = "0.1.0" }

local layers

function _M.init(file)
    local f, err = io.open(file, "rb")
    if not f then
        error("renderd.route: cannot read " .. file .. ": " .. tostring(err))
    end
    local text = f:read("*a")
    f:close()
    local c = cjson.decode(text)
    if type(c) ~= "table" or type(c.layers) ~= "table" then
        error("renderd.route: " .. file .. " is not a route file (no layers)")
    end
    layers = {}
    for _, l in ipairs(c.layers) do
        layers[l.name] = l
    end
end

function _M.key(uri)
    local t = path.parse(uri, layers)
    if t then
        return t.tileset .. "/" .. t.z .. "/" .. t.x0 .. "/" .. t.y0
    end
    local q = find(uri, "?", 1, true)
    return q and sub(uri, 1, q - 1) or uri
end

return _M
