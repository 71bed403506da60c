-- renderd.throttle: per-client limit on the requests that start a render
-- ([http] render_rate and render_burst), like mod_tile's render throttling.
--
--   local throttle = require "renderd.throttle"
--   throttle.configure(locks_dict, rate, burst)   -- rate 0: no limit
--   local wait = throttle.take(ngx.var.binary_remote_addr)
--   -- nil: go on and render; else seconds until this client may again
--
-- A generic cell rate algorithm: one number per client in the shared dict,
-- the time its bucket is empty again ("theoretical arrival time"). Each
-- render moves it on by 1/rate; a client may run up to `burst` renders
-- ahead of its rate. The dict's get and set are two steps, so two nginx
-- workers taking the last token of one client at the same moment may
-- both go on: the limit holds to within one render per worker.

local now = ngx.now
local max = math.max

local _M = { _VERSION = "0.1.0" }

local dict, interval, allowance

function _M.configure(shm, rate, burst)
    dict = shm
    interval = rate > 0 and 1 / rate or nil
    allowance = interval and burst * interval
end

function _M.take(client)
    if not interval then
        return nil
    end
    local key = "t|" .. client
    local t = now()
    local tat = max(dict:get(key) or t, t)
    local ahead = tat - t
    if ahead > allowance then
        return ahead - allowance
    end
    tat = tat + interval
    dict:set(key, tat, tat - t + 1)
    return nil
end

return _M
