-- renderd.coalesce: one call for concurrent callers with the same key in an
-- nginx worker; the others wait for its results.
--
--   local coalesce = require "renderd.coalesce"
--   local a, b, c = coalesce.run("m|" .. key, 2.5, fn, arg1, arg2)
--   -- fn(arg1, arg2) runs once for all callers of that key meanwhile;
--   -- they get its first three results, or nil, "timeout waiting for a
--   -- concurrent call" after wait seconds. An error raised by fn is
--   -- returned as nil, "... raised: <error>" to every caller.
--
-- The semaphore is made by the first caller that has to wait: most calls
-- have no company.

local semaphore = require "ngx.semaphore"

local pcall = pcall
local tostring = tostring

local _M = { _VERSION = "0.1.0" }

local running = {}   -- per worker: key -> { sema, waiting, done, results }

function _M.run(key, wait, fn, ...)
    local e = running[key]
    if e then
        e.waiting = e.waiting + 1
        e.sema = e.sema or semaphore.new()
        local ok = e.sema:wait(wait)
        if not ok or not e.done then
            return nil, "timeout waiting for a concurrent call"
        end
        return e[1], e[2], e[3]
    end
    e = { waiting = 0 }
    running[key] = e
    local ok, a, b, c = pcall(fn, ...)
    if not ok then
        a, b, c = nil, "call raised: " .. tostring(a), nil
    end
    e[1], e[2], e[3], e.done = a, b, c, true
    running[key] = nil
    if e.waiting > 0 then
        e.sema:post(e.waiting)
    end
    return a, b, c
end

return _M
