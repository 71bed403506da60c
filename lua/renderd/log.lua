-- renderd.log: error-log lines rate-limited per cause across all workers,
-- so an outage (Redis down, broker silent) says why once per interval
-- instead of once per request.
--
--   local log = require "renderd.log"
--   log.configure(ngx.shared.rpy_locks, 10)
--   log.once(ngx.ERR, "redis", "redis unreachable: ", err)
--
-- The next line for a cause after a quiet interval says how many were
-- suppressed. Without a configured dict every line is logged.

local ngx_log = ngx.log
local select = select
local tostring = tostring
local concat = table.concat

local _M = { _VERSION = "0.1.0" }

local dict
local interval        -- seconds between two lines of one cause

function _M.configure(shm, seconds)
    if shm and not seconds then
        error("log.configure needs the interval with the dict", 2)
    end
    dict = shm
    interval = seconds
end

--- Log at `level` unless `cause` was logged less than `interval` ago.
function _M.once(level, cause, ...)
    if dict then
        local ok = dict:add("log|" .. cause, true, interval)
        if not ok then
            dict:incr("logn|" .. cause, 1, 0)
            return false
        end
        local n = dict:get("logn|" .. cause)
        if n and n > 0 then
            dict:incr("logn|" .. cause, -n)
            local parts = { ... }
            for i = 1, select("#", ...) do
                parts[i] = tostring(parts[i])
            end
            ngx_log(level, concat(parts), " (", n, " similar suppressed)")
            return true
        end
    end
    ngx_log(level, ...)
    return true
end

return _M
