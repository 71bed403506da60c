-- renderd.cluster: a Redis Cluster as the front's Redis store reads it:
-- which master serves a key's hash slot, and a pipelined connection per
-- master (renderd.pipeline) for each use.
--
--   local cluster = require "renderd.cluster"
--   local c = cluster.new({ seeds = { { host = "10.0.0.1", port = 7000 }, ... },
--                           password = nil, timeout_ms = 1000 }, shm, retry, { "reads", "fills" })
--   local slot = cluster.slot(tag)            -- CRC16 of a hash tag, mod 16384
--   local res, err = c:call("reads", slot, req, n)   -- as pipeline's call
--
-- The slot map comes from CLUSTER SLOTS, asked of a known master or a seed
-- at the first call and again (at most once per REFRESH_SECONDS in a
-- worker, concurrent callers sharing one read) when a master redirects
-- (MOVED) or cannot be reached: a master's replica that took over is then
-- found. An ASK redirect (a slot being migrated) sends the command once to
-- the node named, after ASKING. After a failure (connect, timeout) a master
-- is skipped for `retry` seconds in every worker (renderd.conn's breaker,
-- one per master), so a dead master costs one timeout, not one per
-- request, and the others go on serving their slots.

local pipeline = require "renderd.pipeline"
local conn = require "renderd.conn"
local coalesce = require "renderd.coalesce"
local bit = require "bit"

local band, bxor, lshift, rshift = bit.band, bit.bxor, bit.lshift, bit.rshift
local byte = string.byte
local find = string.find
local match = string.match
local sub = string.sub
local type = type
local tonumber = tonumber
local tostring = tostring
local now = ngx.now
local log = ngx.log
local WARN = ngx.WARN
local setmetatable = setmetatable
local unpack = unpack

local _M = { _VERSION = "0.1.0" }

local SLOTS = 16384
local REFRESH_SECONDS = 0.5
local ASKING = pipeline.command({ "ASKING" })
local MULTI = pipeline.command({ "MULTI" })
local EXEC = pipeline.command({ "EXEC" })
local CLUSTER_SLOTS = pipeline.command({ "CLUSTER", "SLOTS" })

-- CRC16-CCITT (XMODEM), the cluster's key hash
local CRC = {}
for i = 0, 255 do
    local c = lshift(i, 8)
    for _ = 1, 8 do
        c = band(c, 0x8000) ~= 0 and bxor(lshift(c, 1), 0x1021) or lshift(c, 1)
    end
    CRC[i] = band(c, 0xffff)
end

--- The hash slot of a key whose hash tag (the part between its first { and
-- the next }) is tag.
function _M.slot(tag)
    local crc = 0
    for i = 1, #tag do
        crc = band(bxor(lshift(crc, 8), CRC[bxor(rshift(crc, 8), byte(tag, i))]), 0xffff)
    end
    return crc % SLOTS
end

--- The hash slot of a whole key, by the cluster's rule for hash tags.
function _M.key_slot(key)
    local a = find(key, "{", 1, true)
    if a then
        local b = find(key, "}", a + 1, true)
        if b and b > a + 1 then
            return _M.slot(sub(key, a + 1, b - 1))
        end
    end
    return _M.slot(key)
end

local mt = { __index = _M }

--- c: seeds, password, timeout_ms; shm and retry: for the breakers; uses:
-- the names of the connections kept per master.
function _M.new(c, shm, retry, uses)
    return setmetatable({ cfg = c, shm = shm, retry = retry, uses = uses, map = nil, nodes = {},
                          refreshed = 0 }, mt)
end

-- the connections and breaker of the master at addr ("host:port")
local function node(self, addr)
    local n = self.nodes[addr]
    if not n then
        local host, port = match(addr, "^(.+):(%d+)$")
        local where = { host = host, port = tonumber(port), db = 0, timeout_ms = self.cfg.timeout_ms,
                        password = self.cfg.password }
        n = { addr = addr, down = conn.breaker(self.shm, "redis|" .. addr, self.retry) }
        for _, use in ipairs(self.uses) do
            n[use] = pipeline.new(where)
        end
        self.nodes[addr] = n
    end
    return n
end

local function addr_of(entry)
    if type(entry) ~= "table" or type(entry[1]) ~= "string" or type(entry[2]) ~= "number" then
        return nil
    end
    local host = entry[1] ~= "" and entry[1] or nil
    return host and host .. ":" .. entry[2]
end

-- a new slot map from CLUSTER SLOTS as one node answers it; nil, err
local function read_slots(self, addr)
    local n = node(self, addr)
    if n.down:tripped() then
        return nil, "redis " .. addr .. " marked down after a recent failure"
    end
    local res, err = n[self.uses[1]]:call(CLUSTER_SLOTS)
    if type(res) ~= "table" then
        return nil, "redis " .. addr .. ": CLUSTER SLOTS: " .. tostring(err)
    end
    local map, count = {}, 0
    for _, r in ipairs(res) do
        local lo, hi, master = r[1], r[2], addr_of(r[3])
        if type(lo) == "number" and type(hi) == "number" and master then
            for s = lo, hi do
                map[s] = master
            end
            count = count + hi - lo + 1
        end
    end
    if count == 0 then
        return nil, "redis " .. addr .. ": CLUSTER SLOTS names no master"
    end
    return map
end

-- ask the known masters, then the seeds, for the slot map until one answers
local function refresh_now(self)
    local candidates, seen = {}, {}
    for addr in pairs(self.nodes) do
        candidates[#candidates + 1] = addr
    end
    for _, sd in ipairs(self.cfg.seeds) do
        candidates[#candidates + 1] = sd.host .. ":" .. sd.port
    end
    local err
    for _, addr in ipairs(candidates) do
        if not seen[addr] then
            seen[addr] = true
            local map
            map, err = read_slots(self, addr)
            if map then
                self.map = map
                return true
            end
        end
    end
    return nil, err or "redis cluster: no node to ask for its slots"
end

-- read the slot map again unless it was read very recently (force: the
-- first read); concurrent callers in this worker share one read
local function refresh(self, force)
    if not force and now() - self.refreshed < REFRESH_SECONDS then
        return self.map ~= nil
    end
    self.refreshed = now()
    return coalesce.run("cluster-slots", self.cfg.timeout_ms / 1000 * 4 + 0.5, refresh_now, self)
end

-- a redirect in a reply: "MOVED"/"ASK", the slot's node
local function redirect(res, err)
    if res == nil then
        local kind, addr = match(tostring(err), "^(%u+) %d+ (%S+)$")
        if kind == "MOVED" or kind == "ASK" then
            return kind, addr
        end
    elseif type(res) == "table" then
        for i = 1, #res do
            local x = res[i]
            if type(x) == "table" and x[1] == false then
                local kind, addr = match(tostring(x[2]), "^(%u+) %d+ (%S+)$")
                if kind == "MOVED" or kind == "ASK" then
                    return kind, addr
                end
            end
        end
    end
    return nil
end

-- req (n replies, or one if n is nil) sent after ASKING to the node that
-- imports the slot; ASKING holds for one command, or for a whole
-- MULTI ... EXEC, so several commands go inside one (the reply of each is
-- EXEC's)
local function ask(self, use, to, req, n)
    local c = node(self, to)[use]
    local got, err
    if not n then
        got, err = c:call(ASKING .. req, nil, 2)
        got = type(got) == "table" and got[2]
    elseif sub(req, 1, #MULTI) == MULTI then
        got, err = c:call(ASKING .. req, nil, n + 1)
        got = type(got) == "table" and { unpack(got, 2, n + 1) }
    else
        got, err = c:call(ASKING .. MULTI .. req .. EXEC, nil, n + 3)
        got = type(got) == "table" and got[n + 3]
    end
    if type(got) == "table" and got[1] == false then
        return nil, got[2]
    end
    if got == nil or got == false then
        return nil, err or "redis " .. to .. ": bad reply after ASKING"
    end
    return got
end

--- Send req (n replies, or one if n is nil) on connection `use` of the
-- master of hash slot `slot`; pipeline's call's results.
function _M.call(self, use, slot, req, n)
    if not self.map then
        local ok, err = refresh(self, true)
        if not ok then
            return nil, err
        end
    end
    local err
    for _ = 1, 3 do
        local addr = self.map[slot]
        if not addr then
            refresh(self)
            addr = self.map[slot]
            if not addr then
                return nil, "redis cluster: no master serves slot " .. slot
            end
        end
        local nd = node(self, addr)
        if nd.down:tripped() then
            -- (a replica may have taken over its slots meanwhile)
            refresh(self)
            if self.map[slot] == addr then
                return nil, "redis " .. addr .. " marked down after a recent failure"
            end
        else
            local res
            res, err = nd[use]:call(req, nil, n)
            local kind, to = redirect(res, err)
            if kind == "ASK" then
                return ask(self, use, to, req, n)
            elseif kind == "MOVED" then
                log(WARN, "redis cluster: slot ", slot, " moved from ", addr, " to ", to)
                self.map[slot] = to
                refresh(self)
            elseif res == nil and conn.peer_failed(err) then
                nd.down:trip()
                refresh(self)
                if self.map[slot] == addr then
                    return nil, err
                end
            else
                return res, err
            end
        end
    end
    return nil, err or "redis cluster: too many redirects for slot " .. slot
end

return _M
