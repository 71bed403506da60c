-- renderd.conn: what a connection failure means, decided in one place for
-- the broker's client (renderd.client) and Redis's (renderd.pipeline).
--
--   local conn = require "renderd.conn"
--   if conn.dropped(err) then ... end     -- retry once, on a new connection
--   local down = conn.breaker(ngx.shared.rpy_locks, "redis", 2)
--   if down:tripped() then return nil, "redis marked down after a recent failure" end
--   down:trip()                           -- skip it for 2 s, in every worker
--
-- A request sent on a connection the server closed meanwhile (a restart,
-- CLIENT KILL, an idle timeout) fails with "closed", "reset" or "broken
-- pipe": the request never reached a live peer, so it is sent once more on
-- a new connection. Any other failure (a refused connect, a timeout) is
-- the peer's state, not the connection's: it is not retried, and the
-- caller may trip a breaker so that every worker fails fast for a while
-- instead of paying one timeout per request.

local find = string.find
local type = type
local tostring = tostring
local setmetatable = setmetatable

local _M = { _VERSION = "0.1.0" }

--- Whether err says the peer closed the connection under us (worth one
-- more try on a new connection).
function _M.dropped(err)
    if type(err) ~= "string" then
        return false
    end
    return find(err, "closed", 1, true) ~= nil or find(err, "reset", 1, true) ~= nil
        or find(err, "broken pipe", 1, true) ~= nil
end

--- Whether err (of renderd.pipeline) says the peer itself failed: no
-- connection could be made, or it did not answer in time. A connection
-- dropped under a request is not that (the request was sent again on a
-- new one, and a Redis that is really down then refuses the connect).
function _M.peer_failed(err)
    err = tostring(err)
    return find(err, "redis connect", 1, true) ~= nil or find(err, "timeout", 1, true) ~= nil
end

local breaker = {}
breaker.__index = breaker

--- A flag in shared dict shm (nil: never tripped) that a failure sets
-- for `seconds`, seen by every worker.
function _M.breaker(shm, name, seconds)
    return setmetatable({ shm = shm, key = "down|" .. name, seconds = seconds }, breaker)
end

function breaker:tripped()
    return self.shm ~= nil and self.shm:get(self.key) ~= nil
end

function breaker:trip()
    if self.shm then
        self.shm:set(self.key, true, self.seconds)
    end
end

return _M
