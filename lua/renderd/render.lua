-- renderd.render: one RENDER per metatile however many requests miss it.
--
--   local render = require "renderd.render"
--   render.configure({ locks = shm, timeout = 30 })
--   -- the broker is asked for the whole metatile ("meta") where the store
--   -- says so (renderd.store.META_IN_REPLY), else for the tile alone; the
--   -- hot cache then gets the metatile from the reply, or from the store
--   -- (renderd.fill)
--   local res = render.fetch(t, deadline)       -- t from renderd.path.parse
--   -- res.status: "OK", "BUSY", "FAIL", "INVALID", "TIMEOUT" or "ERROR"
--   -- res.reason: why (not OK); with OK and when this worker holds the
--   --   reply: res.index (raw), res.header, res.blobs {hash = bytes},
--   --   res.x, res.y, res.hash, res.tile (the tile that was asked for)
--   local tile = render.tile(res, t)            -- {hash, body, rendered} or nil
--   render.refresh(t)                           -- background re-render, priority 1
--   render.pending(t)                           -- true: a render of t's metatile is under way
--
-- Coalescing: inside a worker the first request for a metatile leads and
-- the others wait on an ngx.semaphore; across workers the leaders race for
-- a key in the locks dict ("r|layer/z/x0/y0", expiring after the timeout),
-- the winner asks the broker, answers its requests, then (from a timer)
-- fills the hot cache and drops the key; the others poll the
-- key and then read the cache. The outcome is left in the locks dict for a
-- few seconds ("o|...") so the pollers know it.

local semaphore = require "ngx.semaphore"
local client = require "renderd.client"
local cache = require "renderd.cache"
local index = require "renderd.index"
local store = require "renderd.store"
local fill = require "renderd.fill"
local metrics = require "renderd.metrics"
local log = require "renderd.log"

local now = ngx.now
local update_time = ngx.update_time
local sleep = ngx.sleep
local timer_at = ngx.timer.at
local ERR = ngx.ERR
local WARN = ngx.WARN
local pcall = pcall
local min = math.min
local tostring = tostring

local _M = { _VERSION = "0.1.0" }

local locks
local timeout                -- seconds a render may take (the requests' timeout)
local inflight = {}          -- per worker: metatile key -> { sema, waiting, res }

function _M.configure(opts)
    locks = opts.locks
    timeout = opts.timeout
end

local function meta_key(t)
    return t.tileset .. "/" .. t.z .. "/" .. t.x0 .. "/" .. t.y0
end

local observe = metrics.observe_render

-- ask the broker; returns a result table (the caller fills the hot cache)
local function ask(t, priority, deadline)
    update_time()
    local start = now()
    local ms = (deadline - start) * 1000
    if ms <= 0 then
        return { status = "TIMEOUT", reason = "no time left" }
    end
    -- (a re-render of a stale metatile must not be answered from the broker's
    -- memory of its last render: "force")
    local flags = store.META_IN_REPLY and "meta" or ""
    if priority > 0 then
        flags = flags == "" and "force" or flags .. ",force"
    end
    local r, err = client.render(t.tileset, t.z, t.x, t.y, priority, ms, flags)
    update_time()
    if not r then
        local status = (err == "timeout") and "TIMEOUT" or "ERROR"
        observe(now() - start, status)
        return { status = status, reason = err }
    end
    observe(now() - start, r.status)
    if r.status ~= "OK" then
        return { status = r.status, reason = r.info }
    end
    local res = { status = "OK", x = t.x, y = t.y, hash = r.hash, tile = r.tile,
                  rendered = r.rendered, stale = r.stale }
    if r.index then
        local h, herr = index.check(r.index, t.z, t.x0, t.y0, t.n)
        if h then
            res.index, res.header, res.blobs = r.index, h, r.blobs
        else
            log.once(ERR, "render-index", "broker sent an index that does not fit ",
                     meta_key(t), ": ", herr)
        end
    end
    return res
end

-- wait for another worker's render of this metatile to end
local function poll(key, deadline)
    local step = 0.005
    while true do
        if not locks:get("r|" .. key) then
            local outcome = locks:get("o|" .. key)
            if outcome then
                return { status = outcome, reason = "render by another worker: " .. outcome }
            end
            return { status = "ERROR", reason = "the rendering worker left no outcome" }
        end
        update_time()
        local left = deadline - now()
        if left < 0.002 then
            -- (ngx.sleep below 1 ms would be a busy loop)
            return { status = "TIMEOUT", reason = "timeout waiting for another worker's render" }
        end
        sleep(min(step, left))
        step = min(step * 1.5, 0.05)
    end
end

-- the hot cache gets the metatile of a render result: from the reply, or
-- read back from the store
local function fill_after(t, res)
    local ok, err = true, nil
    if res.index then
        ok, err = pcall(fill.put, t, res.index, res.header, res.blobs)
    elseif res.status == "OK" then
        ok, err = pcall(fill.from_store, t)
    end
    if not ok then
        log.once(ERR, "render-bug", "hot cache fill of ", meta_key(t), " raised: ", tostring(err))
    end
end

-- fill the hot cache, then let other workers' requests for it go on
local function release(premature, t, key, res)
    if not premature then
        fill_after(t, res)
    end
    locks:set("o|" .. key, res.status, 10)
    locks:delete("r|" .. key)
end

local function lead(t, key, deadline)
    update_time()
    local ttl = deadline - now() + 1
    if ttl <= 1 then
        return { status = "TIMEOUT", reason = "no time left" }
    end
    local won = locks:add("r|" .. key, true, ttl)
    if not won then
        return poll(key, deadline)
    end
    local ok, res = pcall(ask, t, 0, deadline)
    if not ok then
        log.once(ERR, "render-bug", "render of ", key, " raised: ", tostring(res))
        res = { status = "ERROR", reason = "internal error" }
    end
    -- the requests of this worker are answered from res at once; those of
    -- other workers wait for the lock to go and then read the hot cache,
    -- filled after this request's answer
    if not (res.status == "OK" and timer_at(0, release, t, key, res)) then
        release(false, t, key, res)
    end
    return res
end

--- Whether a render of t's metatile is under way (here or in another worker):
-- a request that waits for it starts no render of its own.
function _M.pending(t)
    local key = meta_key(t)
    return inflight[key] ~= nil or locks:get("r|" .. key) ~= nil
end

--- Render (or wait for the render of) t's metatile until deadline.
function _M.fetch(t, deadline)
    local key = meta_key(t)
    local e = inflight[key]
    if e then
        e.waiting = e.waiting + 1
        update_time()
        local left = deadline - now()
        local ok = left > 0 and e.sema:wait(left)
        if not ok then
            return { status = "TIMEOUT", reason = "timeout waiting for the render" }
        end
        return e.res
    end
    local sema = semaphore.new()
    e = { sema = sema, waiting = 0 }
    inflight[key] = e
    local ok, res = pcall(lead, t, key, deadline)
    if not ok then
        log.once(ERR, "render-bug", "render of ", key, " raised: ", tostring(res))
        res = { status = "ERROR", reason = "internal error" }
    end
    e.res = res
    inflight[key] = nil
    if e.waiting > 0 then
        sema:post(e.waiting)
    end
    return res
end

--- The tile t out of a render result (or the hot cache): {hash, body,
-- rendered} (hash nil: an empty tile), or nil if this worker lacks it.
function _M.tile(res, t)
    if res.index then
        local hash = index.entry(res.index, t.i)
        if not hash then
            return { body = "", rendered = res.header.rendered }
        end
        local body = res.blobs[hash]
        if not body and hash == res.hash then
            body = res.tile
        end
        if body then
            return { hash = hash, body = body, rendered = res.header.rendered }
        end
    elseif res.x == t.x and res.y == t.y then
        return { hash = res.hash, body = res.hash and res.tile or "", rendered = res.rendered }
    end
    local c = cache.get(t.tileset, t.z, t.x, t.y)
    if c then
        return { hash = c.hash, body = c.body, rendered = c.rendered }
    end
    return nil
end

local function refresh(premature, t)
    if premature then
        return
    end
    update_time()
    local res = ask(t, 1, now() + timeout)
    fill_after(t, res)
    if res.status ~= "OK" then
        log.once(WARN, "refresh-" .. res.status, "background re-render of ", meta_key(t),
                 " failed: ", res.status, " ", tostring(res.reason))
    end
end

--- Queue a re-render of t's metatile at priority 1 in the background
-- (once per metatile while one is under way); returns at once.
function _M.refresh(t)
    local key = meta_key(t)
    if not locks:add("q|" .. key, true, timeout + 1) then
        return false
    end
    local ok, err = timer_at(0, refresh, t)
    if not ok then
        locks:delete("q|" .. key)
        log.once(WARN, "timer", "cannot start a background re-render: ", err)
        return false
    end
    return true
end

return _M
