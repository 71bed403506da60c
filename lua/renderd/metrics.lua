-- renderd.metrics: counters in a shared dict, served as Prometheus text
-- together with the shared dicts' sizes and the daemon's STATUS.
--
--   local metrics = require "renderd.metrics"
--   metrics.configure(ngx.shared.rpy_metrics, { tiles = "rpy_tiles", ... }, 1, 2000)
--   -- (the dicts to report, seconds between flushes, ms for the daemon's STATUS)
--   metrics.incr("renderd_cache_hits_total")
--   metrics.incr("renderd_http_requests_total", 'cache="HIT",status="200"')
--   metrics.request(200, "HIT")
--   metrics.observe_render(0.42, "OK")
--   -- in a loopback-only server:  location = /metrics {
--   --     content_by_lua_block { require("renderd.metrics").serve() } }
--
-- Keys are "c|<metric>|<labels>" (counters) and "g|<metric>|<labels>"
-- (gauges); serve() groups them by metric name. Counting is per worker, in
-- a Lua table (no shared-dict lock per request); a recurring timer adds the
-- counts to the shared dict every `interval` seconds (and when the worker
-- exits), so /metrics lags the requests by at most that long.

local cjson = require "cjson.safe"
local client = require "renderd.client"

local ngx_shared = ngx.shared
local ngx_print = ngx.print
local ngx_header = ngx.header
local match = string.match
local gsub = string.gsub
local format = string.format
local concat = table.concat
local sort = table.sort
local pairs = pairs
local ipairs = ipairs
local type = type
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local ngx_timer_every = ngx.timer.every
local huge = math.huge
local floor = math.floor
local error = error

local _M = { _VERSION = "0.1.0" }

local dict
local dict_names = {}
local status_timeout         -- ms for the daemon's STATUS

--- Render latency buckets (seconds).
_M.BUCKETS = { 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60 }

local HELP = {
    renderd_http_requests_total = "Tile requests by X-Cache kind and HTTP status",
    renderd_cache_hits_total = "Hot cache (shared dict) hits",
    renderd_cache_misses_total = "Hot cache misses",
    renderd_cache_evictions_total = "Live entries the hot cache evicted to make room",
    renderd_render_requests_total = "RENDER requests sent to the broker by reply status",
    renderd_render_seconds = "Time from RENDER to the broker's reply",
    renderd_store_errors_total = "Store reads that failed",
    renderd_throttled_total = "Tile requests refused a render over their client's render rate",
    renderd_shared_dict_capacity_bytes = "Size of each lua_shared_dict",
    renderd_shared_dict_free_bytes = "Free pages of each lua_shared_dict",
    renderd_daemon_up = "1 if the daemon answered STATUS",
    renderd_daemon_queue_depth = "Jobs queued per priority",
    renderd_daemon_running = "Jobs running",
    renderd_daemon_workers = "Render workers by state",
    renderd_daemon_host_workers = "Render workers by host",
    renderd_daemon_events_total = "Daemon counters",
    renderd_daemon_render_seconds_total = "Render time per priority",
    renderd_daemon_renders_total = "Renders per priority",
}

local TYPES = {
    renderd_render_seconds = "histogram",
}

local interval               -- seconds between two flushes
local pending = {}           -- per worker: key -> count not yet in the dict
local flushing = false       -- the worker's flush timer runs

function _M.configure(shm, names, seconds, status_ms)
    if not shm then
        error("metrics need a shared dict", 2)
    end
    dict = shm
    dict_names = names
    interval = seconds
    status_timeout = status_ms
end

--- Add this worker's counts to the shared dict.
function _M.flush()
    if not dict then
        return
    end
    for key, n in pairs(pending) do
        if n ~= 0 then
            dict:incr(key, n, 0)
            pending[key] = 0
        end
    end
end

local function on_timer()
    -- (also runs once more, "premature", when the worker exits)
    _M.flush()
end

local function count(key, v)
    local n = pending[key]
    if n then
        pending[key] = n + v
        return
    end
    pending[key] = v
    if not flushing and dict then
        flushing = ngx_timer_every(interval, on_timer) and true
    end
end

-- "c|name|labels" keys, made once per name and labels
local keys = setmetatable({}, { __index = function(t, name)
    local by_labels = setmetatable({}, { __index = function(t2, labels)
        local k = "c|" .. name .. "|" .. labels
        t2[labels] = k
        return k
    end })
    t[name] = by_labels
    return by_labels
end })

function _M.incr(name, labels, v)
    count(keys[name][labels or ""], v or 1)
end

-- request keys by X-Cache kind and status
local requests = setmetatable({}, { __index = function(t, xcache)
    local by_status = setmetatable({}, { __index = function(t2, status)
        local k = keys.renderd_http_requests_total['cache="' .. xcache .. '",status="' .. status .. '"']
        t2[status] = k
        return k
    end })
    t[xcache] = by_status
    return by_status
end })

function _M.request(status, xcache)
    count(requests[xcache or "NONE"][status], 1)
end

function _M.observe_render(seconds, status)
    if not dict then
        return
    end
    _M.incr("renderd_render_requests_total", 'status="' .. status .. '"')
    if status == "ERROR" then
        return -- no reply at all (connect refused...): not a render time
    end
    for _, le in ipairs(_M.BUCKETS) do
        if seconds <= le then
            _M.incr("renderd_render_seconds_bucket", 'le="' .. le .. '"')
        end
    end
    _M.incr("renderd_render_seconds_bucket", 'le="+Inf"')
    _M.incr("renderd_render_seconds_sum", nil, seconds)
    _M.incr("renderd_render_seconds_count")
end

local function family(name)
    return match(name, "^(.-)_bucket$") or match(name, "^(renderd_render_seconds)_sum$")
        or match(name, "^(renderd_render_seconds)_count$") or name
end

local function sanitize(s)
    return (gsub(tostring(s), "[^%w_]", "_"))
end

local function esc(s)
    return (gsub(tostring(s), '[\\"\n]', { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }))
end

-- the daemon's STATUS JSON as gauge samples: {name, labels, value}
local function daemon_samples(out)
    local text, err = client.status(status_timeout)
    local st = text and cjson.decode(text)
    if type(st) ~= "table" then
        out[#out + 1] = { "renderd_daemon_up", "", 0 }
        return err or "STATUS is not a JSON object"
    end
    out[#out + 1] = { "renderd_daemon_up", "", 1 }
    local known = {
        queues = { "renderd_daemon_queue_depth", "priority" },
        workers = { "renderd_daemon_workers", "state" },
        hosts = { "renderd_daemon_host_workers", "host" },
        counters = { "renderd_daemon_events_total", "event" },
        render_seconds = { "renderd_daemon_render_seconds_total", "priority" },
        render_count = { "renderd_daemon_renders_total", "priority" },
    }
    for k, v in pairs(st) do
        if type(v) == "number" then
            out[#out + 1] = { "renderd_daemon_" .. sanitize(k), "", v }
        elseif type(v) == "table" and v[1] == nil then
            local m = known[k] or { "renderd_daemon_" .. sanitize(k), "key" }
            for k2, v2 in pairs(v) do
                if type(v2) == "number" then
                    out[#out + 1] = { m[1], m[2] .. '="' .. esc(k2) .. '"', v2 }
                end
            end
        end
    end
end

local function num(v)
    if v == huge then
        return "+Inf"
    end
    if v == floor(v) and v < 1e15 and v > -1e15 then
        return format("%d", v)
    end
    return format("%.6g", v)
end

--- Collect every sample: a list of {name, labels, value}.
function _M.collect()
    _M.flush()
    local out = {}
    for _, key in ipairs(dict and dict:get_keys(0) or {}) do
        local name, labels = match(key, "^[cg]|([^|]+)|(.*)$")
        if name then
            local v = dict:get(key)
            if v then
                out[#out + 1] = { name, labels, v }
            end
        end
    end
    for _, name in pairs(dict_names) do
        local d = ngx_shared[name]
        if d then
            local l = 'dict="' .. esc(name) .. '"'
            out[#out + 1] = { "renderd_shared_dict_capacity_bytes", l, d:capacity() }
            out[#out + 1] = { "renderd_shared_dict_free_bytes", l, d:free_space() }
        end
    end
    local err = daemon_samples(out)
    return out, err
end

--- Prometheus text exposition of collect().
function _M.render_text(samples)
    sort(samples, function(a, b)
        if a[1] ~= b[1] then
            return a[1] < b[1]
        end
        local la, lb = match(a[2], '^le="([^"]+)"$'), match(b[2], '^le="([^"]+)"$')
        if la and lb then
            return (tonumber(la) or huge) < (tonumber(lb) or huge)
        end
        return a[2] < b[2]
    end)
    local buf, seen = {}, {}
    for _, s in ipairs(samples) do
        local fam = family(s[1])
        if not seen[fam] then
            seen[fam] = true
            if HELP[fam] then
                buf[#buf + 1] = "# HELP " .. fam .. " " .. HELP[fam]
            end
            local kind = TYPES[fam] or (fam:match("_total$") and "counter") or "gauge"
            buf[#buf + 1] = "# TYPE " .. fam .. " " .. kind
        end
        local labels = s[2] ~= "" and ("{" .. s[2] .. "}") or ""
        buf[#buf + 1] = s[1] .. labels .. " " .. num(s[3])
    end
    buf[#buf + 1] = ""
    return concat(buf, "\n")
end

--- content_by_lua handler of the metrics location.
function _M.serve()
    local samples, err = _M.collect()
    ngx_header["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
    local text = _M.render_text(samples)
    if err then
        text = text .. "# daemon STATUS unavailable: " .. gsub(tostring(err), "\n", " ") .. "\n"
    end
    ngx_print(text)
end

return _M
