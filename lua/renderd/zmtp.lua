-- renderd.zmtp: a ZMTP 3.x client (RFC 23 ZMTP 3.0, RFC 37 ZMTP 3.1) over
-- an nginx cosocket, NULL mechanism, speaking as a DEALER.
--
--   local zmtp = require "renderd.zmtp"
--   local conn, err = zmtp.connect("tcp://127.0.0.1:5555", { timeout = 1000 })
--   local ok, err = conn:send({ "RPY1", "PING", "7" })
--   local frames, err = conn:recv(5000)        -- one whole message
--   conn:keepalive()                           -- back to the pool, or
--   conn:close()
--
-- Endpoints: "tcp://IP:PORT" (an address, not a name: cosockets resolve
-- names only with a `resolver` directive) and "ipc:///path" (a unix
-- socket). A pooled connection has done its greeting and READY already
-- (conn.reused > 0); a new one does them in connect(). Peer PING commands
-- are answered with PONG; other commands are ignored. Any error leaves the
-- connection unusable: call conn:close().

local bit = require "bit"

local tcp = ngx.socket.tcp
local byte = string.byte
local char = string.char
local sub = string.sub
local rep = string.rep
local match = string.match
local band = bit.band
local rshift = bit.rshift
local setmetatable = setmetatable
local type = type
local tonumber = tonumber
local error = error

local _M = { _VERSION = "0.1.0" }
local mt = { __index = _M }

--- Largest frame accepted (bytes); a bigger one is a protocol error.
_M.MAX_FRAME = 256 * 1024 * 1024
--- Seconds an idle pooled connection is kept, and connections per pool.
_M.IDLE_TIMEOUT = 60000
_M.POOL_SIZE = 32

local FLAG_MORE, FLAG_LONG, FLAG_COMMAND = 1, 2, 4

-- signature, version 3.0, mechanism "NULL" padded to 20, as-server 0, filler
local GREETING = "\255" .. rep("\0", 8) .. "\127" .. "\3\0"
    .. "NULL" .. rep("\0", 16) .. "\0" .. rep("\0", 31)

local function be32(n)
    return char(band(rshift(n, 24), 255), band(rshift(n, 16), 255),
                band(rshift(n, 8), 255), band(n, 255))
end

local function frame_head(flags, len)
    if len <= 255 then
        return char(flags, len)
    end
    -- 8-byte network-order length; frames here stay below 2^32
    return char(flags + FLAG_LONG, 0, 0, 0, 0) .. be32(len)
end

local function command(name, body)
    local b = char(#name) .. name .. (body or "")
    return frame_head(FLAG_COMMAND, #b) .. b
end

--- "tcp://IP:PORT" -> host, port; "ipc:///path" -> "unix:/path".
function _M.parse_endpoint(endpoint)
    if type(endpoint) ~= "string" then
        return nil, "endpoint is not a string"
    end
    local host, port = match(endpoint, "^tcp://%[?([^%]]+)%]?:(%d+)$")
    if host and tonumber(port) and tonumber(port) < 65536 then
        return host, tonumber(port)
    end
    local path = match(endpoint, "^ipc://(.+)$")
    if path then
        return "unix:" .. path
    end
    return nil, "unsupported endpoint " .. endpoint
end

-- read exactly n bytes
local function read(sock, n)
    if n == 0 then
        return ""
    end
    return sock:receive(n)
end

-- one frame: flags, body (or nil, err)
local function read_frame(sock, max)
    local h, err = read(sock, 2)
    if not h then
        return nil, nil, err
    end
    local flags, len = byte(h, 1, 2)
    if band(flags, 0xF8) ~= 0 then
        return nil, nil, "bad frame flags"
    end
    if band(flags, FLAG_LONG) ~= 0 then
        local rest
        rest, err = read(sock, 7)
        if not rest then
            return nil, nil, err
        end
        local b = { byte(h .. rest, 2, 9) }
        if b[1] ~= 0 or b[2] ~= 0 or b[3] ~= 0 or b[4] >= 128 then
            return nil, nil, "frame too large"
        end
        len = ((b[4] * 256 + b[5]) * 256 + b[6]) * 65536 + b[7] * 256 + b[8]
    end
    if len > max then
        return nil, nil, "frame too large"
    end
    local body
    body, err = read(sock, len)
    if not body then
        return nil, nil, err
    end
    return flags, body
end

-- parse a command frame body: name, data
local function parse_command(body)
    local n = byte(body, 1)
    if not n or #body < n + 1 then
        return nil
    end
    return sub(body, 2, n + 1), sub(body, n + 2)
end

-- READY/ metadata: name-size(1) name value-size(4) value ...
local function parse_props(data)
    local props, i = {}, 1
    while i <= #data do
        local n = byte(data, i)
        local name = sub(data, i + 1, i + n)
        local a, b, c, d = byte(data, i + n + 1, i + n + 4)
        if not d then
            return nil
        end
        local vlen = ((a * 256 + b) * 256 + c) * 256 + d
        props[name:lower()] = sub(data, i + n + 5, i + n + 4 + vlen)
        i = i + n + 5 + vlen
    end
    return props
end

local function handshake(sock)
    local ok, err = sock:send(GREETING)
    if not ok then
        return nil, "greeting: " .. err
    end
    -- signature (10) + major version first, so a non-ZMTP peer fails fast
    local head
    head, err = read(sock, 11)
    if not head then
        return nil, "greeting: " .. err
    end
    if byte(head, 1) ~= 0xFF or byte(head, 10) ~= 0x7F then
        return nil, "peer is not a ZMTP peer"
    end
    if byte(head, 11) < 3 then
        return nil, "peer speaks ZMTP " .. byte(head, 11) .. ".x, need 3.x"
    end
    local rest
    rest, err = read(sock, 53)
    if not rest then
        return nil, "greeting: " .. err
    end
    local mech = match(sub(rest, 2, 21), "^([^%z]*)")
    if mech ~= "NULL" then
        return nil, "peer wants security mechanism " .. mech
    end
    local props = "\11Socket-Type" .. be32(6) .. "DEALER" .. "\8Identity" .. be32(0)
    ok, err = sock:send(command("READY", props))
    if not ok then
        return nil, "READY: " .. err
    end
    local flags, body
    flags, body, err = read_frame(sock, 65536)
    if not flags then
        return nil, "READY: " .. err
    end
    if band(flags, FLAG_COMMAND) == 0 then
        return nil, "peer sent a message before READY"
    end
    local name, data = parse_command(body)
    if name == "ERROR" then
        return nil, "peer refused: " .. sub(data, 2, 1 + (byte(data, 1) or 0))
    end
    if name ~= "READY" then
        return nil, "peer sent " .. (name or "a bad command") .. " instead of READY"
    end
    local p = parse_props(data)
    if not p then
        return nil, "bad READY metadata"
    end
    local st = p["socket-type"]
    if st ~= "ROUTER" and st ~= "DEALER" and st ~= "REP" then
        return nil, "peer socket type " .. (st or "?") .. " cannot talk to a DEALER"
    end
    return true
end

--- Connect (or take a pooled connection) and handshake.
-- opts: timeout (ms, connect + handshake), pool (pool name; default the
-- endpoint), max_frame.
function _M.connect(endpoint, opts)
    opts = opts or {}
    local host, port = _M.parse_endpoint(endpoint)
    if not host then
        return nil, port
    end
    local sock, err = tcp()
    if not sock then
        return nil, err
    end
    local t = opts.timeout or 5000
    sock:settimeouts(t, t, t)
    local ok
    local popts = { pool = opts.pool or ("zmtp:" .. endpoint) }
    if port then
        ok, err = sock:connect(host, port, popts)
    else
        ok, err = sock:connect(host, popts)
    end
    if not ok then
        return nil, "connect " .. endpoint .. ": " .. err
    end
    local reused = sock:getreusedtimes() or 0
    if reused == 0 then
        ok, err = handshake(sock)
        if not ok then
            sock:close()
            return nil, endpoint .. ": " .. err
        end
    end
    return setmetatable({ sock = sock, reused = reused, endpoint = endpoint,
                          max_frame = opts.max_frame or _M.MAX_FRAME }, mt)
end

--- Send one message (a list of frames, strings).
function _M.send(self, frames)
    local n = #frames
    if n == 0 then
        error("zmtp send needs at least one frame", 2)
    end
    local buf = {}
    for i = 1, n do
        local f = frames[i]
        buf[2 * i - 1] = frame_head(i < n and FLAG_MORE or 0, #f)
        buf[2 * i] = f
    end
    local ok, err = self.sock:send(buf)
    if not ok then
        return nil, err
    end
    return true
end

--- Receive one whole message (a list of frames), answering PINGs.
-- timeout: ms for each read (optional).
function _M.recv(self, timeout)
    local sock = self.sock
    if timeout then
        sock:settimeouts(nil, timeout, timeout)
    end
    local frames, n = {}, 0
    while true do
        local flags, body, err = read_frame(sock, self.max_frame)
        if not flags then
            return nil, err
        end
        if band(flags, FLAG_COMMAND) ~= 0 then
            if n > 0 then
                return nil, "command inside a message"
            end
            local name, data = parse_command(body)
            if name == "PING" then
                -- RFC 37: PONG carries the PING's context (after the 2-byte TTL)
                local ok
                ok, err = sock:send(command("PONG", sub(data, 3)))
                if not ok then
                    return nil, err
                end
            elseif name == "ERROR" then
                return nil, "peer error: " .. sub(data, 2, 1 + (byte(data, 1) or 0))
            end
        else
            n = n + 1
            frames[n] = body
            if band(flags, FLAG_MORE) == 0 then
                return frames
            end
        end
    end
end

--- Return the connection to the pool (only after a whole reply was read).
function _M.keepalive(self, idle, size)
    local ok, err = self.sock:setkeepalive(idle or _M.IDLE_TIMEOUT, size or _M.POOL_SIZE)
    self.sock = nil
    return ok, err
end

function _M.close(self)
    if self.sock then
        self.sock:close()
        self.sock = nil
    end
end

return _M
