-- renderd.reply: the front's responses and their headers (docs/http.md).
--
--   local reply = require "renderd.reply"
--   reply.configure({ cors = "*", retry_after = 5 })
--   reply.tile(t, hash, body, rendered, "HIT")  -- 200 (304 if the validators
--       -- match), or 404 "no tile" for hash nil or index.EMPTY
--   reply.plain(404, "unknown layer")           -- a short text/plain error
--   reply.unavailable(t, "render queue full")   -- 503 with Retry-After
--   reply.throttled(t, wait)                    -- 429 with Retry-After (seconds, rounded up)
--   reply.json(text, layer)                     -- 200 application/json (catalog documents)
--   reply.allow_origin(layer)                   -- the CORS header (layer or [http])
--   reply.with_base(text)                       -- "@RPY_BASE@" replaced by the request's base URL
--   reply.document(text, content_type)          -- 200, a document of the standard interfaces
--
-- Every response is counted by status and X-Cache kind (renderd.metrics)
-- and ends the request.

local metrics = require "renderd.metrics"
local index = require "renderd.index"

local ngx_var = ngx.var
local ngx_header = ngx.header
local ngx_print = ngx.print
local ngx_exit = ngx.exit
local send_headers = ngx.send_headers
local get_method = ngx.req.get_method
local http_time = ngx.http_time
local parse_http_time = ngx.parse_http_time
local HTTP_OK = ngx.HTTP_OK
local find = string.find
local gsub = string.gsub
local tostring = tostring

local _M = { _VERSION = "0.1.0" }

local EMPTY = index.EMPTY
local DATES_MAX = 4096

local cors = ""          -- [http] cors: for responses of no known layer
local retry_after        -- the 503's Retry-After

--- opts.cors, opts.retry_after (see the runtime config).
function _M.configure(opts)
    cors = opts.cors
    retry_after = tostring(opts.retry_after)
end

-- send status and body (none for HEAD and 304) with the headers set so far;
-- never ngx.exit(status >= 300), which would replace them with nginx's own
local function finish(status, body)
    if status ~= HTTP_OK then
        ngx.status = status
    end
    if body and status ~= 304 then
        ngx_header["Content-Length"] = #body
        if get_method() ~= "HEAD" then
            ngx_print(body)
            return ngx_exit(HTTP_OK)
        end
    end
    send_headers()
    return ngx_exit(HTTP_OK)
end

--- Access-Control-Allow-Origin of a layer's responses (of the [http]
-- setting when the layer is not known); "" sends none.
function _M.allow_origin(layer)
    local v = layer and layer.cors or cors
    if v ~= "" then
        ngx_header["Access-Control-Allow-Origin"] = v
    end
end

--- A short text/plain answer (errors), not to be cached.
function _M.plain(status, msg, xcache, layer)
    metrics.request(status, xcache)
    ngx_header["Content-Type"] = "text/plain; charset=utf-8"
    ngx_header["Cache-Control"] = "no-store"
    _M.allow_origin(layer)
    if xcache then
        ngx_header["X-Cache"] = xcache
    end
    return finish(status, msg .. "\n")
end

-- Last-Modified values, per worker (a metatile's tiles share theirs)
local dates, ndates = {}, 0

local function http_date(rendered)
    local d = dates[rendered]
    if not d then
        if ndates >= DATES_MAX then
            dates, ndates = {}, 0
        end
        d = http_time(rendered)
        dates[rendered] = d
        ndates = ndates + 1
    end
    return d
end

-- the headers every answer about a tile has
local function common(layer, rendered, xcache)
    if layer.cache_control ~= "" then
        ngx_header["Cache-Control"] = layer.cache_control
    end
    if rendered and rendered > 0 then
        ngx_header["Last-Modified"] = http_date(rendered)
    end
    if layer.cors ~= "" then
        ngx_header["Access-Control-Allow-Origin"] = layer.cors
    end
    ngx_header["X-Cache"] = xcache
end

-- the request's validators match this tile? (nginx 1.22's $http_ variables
-- hold the first of repeated headers only: a second If-None-Match line is
-- not looked at, so such a request gets a 200)
local function not_modified(hash, rendered)
    local inm = ngx_var.http_if_none_match
    if inm then
        return inm == "*" or find(inm, '"' .. hash .. '"', 1, true) ~= nil
    end
    local ims = ngx_var.http_if_modified_since
    if ims and rendered and rendered > 0 then
        local t = parse_http_time(ims)
        return t ~= nil and t >= rendered
    end
    return false
end

--- Answer with tile t: 200 with its bytes, 304 if the request's
-- validators match, or 404 "no tile" where the renderer stored none
-- (hash nil or index.EMPTY), with the layer's Cache-Control.
function _M.tile(t, hash, body, rendered, xcache)
    local layer = t.layer
    if not hash or hash == EMPTY then
        metrics.request(404, xcache)
        ngx_header["Content-Type"] = "text/plain; charset=utf-8"
        common(layer, rendered, xcache)
        return finish(404, "no tile\n")
    end
    ngx_header["Content-Type"] = layer.content_type
    ngx_header["ETag"] = '"' .. hash .. '"'
    common(layer, rendered, xcache)
    if not_modified(hash, rendered) then
        metrics.request(304, xcache)
        return finish(304)
    end
    metrics.request(200, xcache)
    return finish(HTTP_OK, body)
end

--- 200 with a JSON document (catalog answers), not cached by clients
-- beyond a revalidation: an ingest shows at once.
function _M.json(text, layer)
    metrics.request(200, nil)
    ngx_header["Content-Type"] = "application/json"
    ngx_header["Cache-Control"] = "no-cache"
    _M.allow_origin(layer)
    return finish(HTTP_OK, text)
end

-- the base of this server's URLs as the client sees it (nginx-conf's maps)
local function base_url()
    local scheme = ngx_var.rpy_scheme or ngx_var.scheme
    local host = ngx_var.rpy_host or ngx_var.http_host or (ngx_var.server_addr .. ":" .. ngx_var.server_port)
    return scheme .. "://" .. host .. (ngx_var.rpy_path or "")
end

--- text with every "@RPY_BASE@" replaced by the base URL of the request
-- (the placeholder of renderd/nginx/runtime_json.py).
function _M.with_base(text)
    return (gsub(text, "@RPY_BASE@", (gsub(base_url(), "%%", "%%%%"))))
end

--- 200 with a document of the standard interfaces (WMTS capabilities, OGC
-- API JSON), revalidated by clients, with the [http] CORS header.
function _M.document(text, content_type)
    metrics.request(200, nil)
    ngx_header["Content-Type"] = content_type
    ngx_header["Cache-Control"] = "no-cache"
    _M.allow_origin(nil)
    return finish(HTTP_OK, text)
end

--- 503 with Retry-After: t cannot be had in time.
function _M.unavailable(t, why)
    ngx_header["Retry-After"] = retry_after
    return _M.plain(503, "tile " .. t.z .. "/" .. t.x .. "/" .. t.y .. " unavailable: " .. why, nil, t.layer)
end

function _M.throttled(t, wait)
    ngx_header["Retry-After"] = math.ceil(wait)
    return _M.plain(429, "too many renders asked from this address; stored tiles are still served",
                    nil, t.layer)
end

return _M
