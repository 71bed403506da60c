-- renderd.client: the broker's client side of wire protocol v1
-- (docs/protocol.md) over renderd.zmtp.
--
--   local client = require "renderd.client"
--   client.configure("tcp://127.0.0.1:5555", ngx.shared.rpy_locks,
--                    { connect_timeout = 2000, retry = 1 })   -- ms, s
--   local r, err = client.render("world", z, x, y, 0, 30000, "meta")
--   -- r = { status = "OK"|"BUSY"|"FAIL"|"INVALID", info = "...", tile = bytes,
--   --       hash =, rendered =, data =, ext =, index = raw or nil,
--   --       blobs = { hash = bytes } }
--   local json, err = client.status(2000)
--   local ok, err = client.ping(1000)
--
-- Every request carries its own id (worker pid and a counter); replies
-- with another id (left over on a pooled connection) are discarded. A
-- connection goes back to the pool only after its reply was read; on a
-- timeout or error it is closed. A pooled connection the broker closed is
-- retried once on a fresh one (renderd.conn decides). After a failed
-- connect the broker is not tried again for `retry` seconds (a breaker in
-- the shared dict): callers fail fast.

local zmtp = require "renderd.zmtp"
local index = require "renderd.index"
local conn_policy = require "renderd.conn"

local now = ngx.now
local update_time = ngx.update_time
local worker_pid = ngx.worker.pid
local match = string.match
local find = string.find
local tonumber = tonumber
local tostring = tostring
local type = type
local error = error
local min = math.min
local floor = math.floor

local _M = { _VERSION = "0.1.0" }

local endpoint
local down            -- the broker's breaker
local connect_timeout -- ms
local seq = 0
local pid

--- ep: the broker's endpoint; shm: a shared dict for the breaker (nil: none);
-- opts.connect_timeout (ms), opts.retry (seconds the broker counts as down
-- after a failed connect).
function _M.configure(ep, shm, opts)
    local ok, err = zmtp.parse_endpoint(ep)
    if not ok then
        error("bad broker endpoint: " .. tostring(err), 2)
    end
    if type(opts) ~= "table" or type(opts.connect_timeout) ~= "number" or type(opts.retry) ~= "number" then
        error("renderd.client.configure needs opts.connect_timeout and opts.retry", 2)
    end
    endpoint = ep
    connect_timeout = opts.connect_timeout
    down = conn_policy.breaker(shm, "broker", opts.retry)
end

local function next_id()
    if not pid then
        pid = worker_pid()
    end
    seq = seq + 1
    return pid .. "-" .. seq
end

--- Send RPY1 cmd id args... and return the reply frames with that id.
function _M.call(cmd, args, timeout_ms)
    if not endpoint then
        error("renderd.client is not configured", 2)
    end
    if down:tripped() then
        return nil, "broker marked down after a failed connect"
    end
    update_time()
    local deadline = now() + timeout_ms / 1000
    local err
    for _ = 1, 2 do
        local remaining = (deadline - now()) * 1000
        if remaining <= 0 then
            return nil, "timeout"
        end
        local conn
        conn, err = zmtp.connect(endpoint, { timeout = min(connect_timeout, remaining) })
        if not conn then
            if not find(err, "timeout", 1, true) then
                down:trip()
            end
            return nil, err
        end
        local rid = next_id()
        local frames = { "RPY1", cmd, rid }
        for i = 1, #args do
            frames[i + 3] = args[i]
        end
        local ok
        ok, err = conn:send(frames)
        local got = false
        if ok then
            while true do
                update_time()
                remaining = (deadline - now()) * 1000
                if remaining <= 0 then
                    err = "timeout"
                    break
                end
                local reply
                reply, err = conn:recv(remaining)
                if not reply then
                    break
                end
                got = true
                if reply[1] == "RPY1" and reply[3] == rid then
                    conn:keepalive()
                    return reply
                end
                -- a reply to an earlier request on this connection: drop it
            end
        end
        conn:close()
        if got or conn.reused == 0 or not conn_policy.dropped(err) then
            break
        end
    end
    return nil, err
end

--- RENDER: status table (see the module comment) or nil, err.
function _M.render(layer, z, x, y, priority, timeout_ms, flag_list)
    local reply, err = _M.call("RENDER", {
        layer, z .. "/" .. x .. "/" .. y, tostring(priority),
        tostring(floor(timeout_ms)), flag_list or "",
    }, timeout_ms + 100)
    if not reply then
        return nil, err
    end
    local r = { status = reply[2], info = reply[4] or "" }
    if r.status ~= "OK" then
        return r
    end
    local hash, rendered, data, stale, ext = match(r.info, "^(%x+) (%d+) (%d+) ([01]) (%w*)")
    if not hash then
        return nil, "bad OK info from the broker: " .. r.info
    end
    r.hash = hash ~= index.EMPTY and hash or nil
    r.rendered, r.data, r.stale, r.ext = tonumber(rendered), tonumber(data), stale == "1", ext
    r.tile = reply[5] or ""
    r.index = reply[6]
    if r.index then
        local h
        h, err = index.header(r.index)
        if not h then
            return nil, "bad index in the broker's reply: " .. err
        end
        local hashes = index.unique(r.index, h.n)
        r.header = h
        r.blobs = {}
        for i = 1, #hashes do
            local b = reply[6 + i]
            if b and b ~= "" then
                r.blobs[hashes[i]] = b
            end
        end
    end
    return r
end

--- STATUS: the daemon's JSON text, or nil, err.
function _M.status(timeout_ms)
    local reply, err = _M.call("STATUS", {}, timeout_ms)
    if not reply then
        return nil, err
    end
    if reply[2] ~= "OK" then
        return nil, "STATUS answered " .. tostring(reply[2])
    end
    return reply[4] or ""
end

--- PING: true, or nil, err.
function _M.ping(timeout_ms)
    local reply, err = _M.call("PING", {}, timeout_ms)
    if not reply then
        return nil, err
    end
    if reply[2] ~= "PONG" then
        return nil, "PING answered " .. tostring(reply[2])
    end
    return true
end

return _M
