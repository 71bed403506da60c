-- renderd.pipeline: one pipelined Redis connection per nginx worker.
--
--   local pipeline = require "renderd.pipeline"
--   pipeline.configure({ host = "127.0.0.1", port = 6379, socket = nil,
--                        password = nil, db = 0, timeout_ms = 1000 })
--   local res, err = pipeline.call(pipeline.command({ "GET", key }))
--   -- (or a prepared start: pipeline.command({ "GETRANGE" }, 4) .. pipeline.arg(key) ...)
--   -- res: a string, number, table or ngx.null; nil, err on failure: err
--   -- starts with "redis connect: " (no connection), is "timeout" or
--   -- "closed"..., or is Redis's own error reply ("NOSCRIPT ...", "ERR ...")
--   -- several commands sent together, their n replies as a list:
--   local list, err = pipeline.call(cmd1 .. cmd2, nil, 2)
--
-- Why: a request's own round trip over a pooled connection costs a send, a
-- receive and a wake-up on both sides (in nginx and in Redis) per request;
-- at a few thousand dict misses a second that is most of the work. Here the
-- requests of a worker queue their commands; a timer owns the connection and
-- sends whatever is queued in one write (a batch), while a second light
-- thread reads the replies in order and hands each to its request. With one
-- request at a time a batch is one command (no waiting for company); under
-- load the commands that arrive during a round trip go out together.
--
-- Failures: a connect error fails the queued commands at once; a read or
-- send error or a read that takes longer than timeout_ms closes the
-- connection and fails every command sent on it (the next batch connects
-- again), except that commands lost to a connection the server closed
-- (restart, CLIENT KILL, an idle timeout: renderd.conn.dropped) are sent
-- once more on a new one.
-- A request stops waiting after its own timeout; a reply that comes later
-- is dropped. The timer and its reader end when the worker exits.

local semaphore = require "ngx.semaphore"
local conn = require "renderd.conn"

local tcp = ngx.socket.tcp
local timer_at = ngx.timer.at
local spawn = ngx.thread.spawn
local exiting = ngx.worker.exiting
local log = ngx.log
local ERR = ngx.ERR
local null = ngx.null
local byte = string.byte
local find = string.find
local sub = string.sub
local concat = table.concat
local tonumber = tonumber
local tostring = tostring
local type = type
local pcall = pcall

local _M = { _VERSION = "0.1.0" }

local cfg
local running = false
local sock                       -- the connection, nil when there is none
local queue, nq = {}, 0          -- jobs not sent yet
local sent, head, tail = {}, 1, 0  -- jobs sent, replies expected in this order
local wake                       -- the writer waits here for jobs
local replies                    -- the reader waits here for a batch sent
local spare = {}                 -- semaphores of finished jobs, to reuse
local unread = ""                -- bytes received and not parsed yet

function _M.configure(c)
    cfg = c
end

--- One argument of a command in the Redis protocol.
function _M.arg(a)
    if type(a) ~= "string" then
        a = tostring(a)
    end
    return "$" .. #a .. "\r\n" .. a .. "\r\n"
end

--- The start of a command of n arguments whose first ones are args (the
-- rest to be appended with arg()); without n, the whole command.
function _M.command(args, n)
    local buf = { "*" .. (n or #args) .. "\r\n" }
    for i = 1, #args do
        buf[i + 1] = _M.arg(args[i])
    end
    return concat(buf)
end

-- parse one reply of b from position pos: the position after it, its value
-- (nil for an error reply) and the error; nil if b holds only part of it
-- yet, false if it is not a reply at all
local function parse(b, pos)
    local e = find(b, "\r\n", pos, true)
    if not e then
        return nil
    end
    local c = byte(b, pos)
    if c == 36 then          -- $ bulk string
        local size = tonumber(sub(b, pos + 1, e - 1))
        if not size then
            return false
        end
        if size < 0 then
            return e + 2, null
        end
        local last = e + 1 + size
        if #b < last + 2 then
            return nil
        end
        return last + 3, sub(b, e + 2, last)
    elseif c == 43 then      -- + status
        return e + 2, sub(b, pos + 1, e - 1)
    elseif c == 45 then      -- - error
        return e + 2, nil, sub(b, pos + 1, e - 1)
    elseif c == 58 then      -- : integer
        return e + 2, tonumber(sub(b, pos + 1, e - 1))
    elseif c == 42 then      -- * array
        local n = tonumber(sub(b, pos + 1, e - 1))
        if not n then
            return false
        end
        pos = e + 2
        if n < 0 then
            return pos, null
        end
        local out = {}
        for i = 1, n do
            local v, err
            pos, v, err = parse(b, pos)
            if not pos then
                return pos
            end
            out[i] = v == nil and { false, err } or v
        end
        return pos, out
    end
    return false
end

local function finish(job, res, err)
    if not job.abandoned then
        job.res, job.err = res, err
        job.sema:post(1)
    end
end

-- the connection s failed: close it, fail every job sent on it (a job
-- lost to a connection the server closed is sent once more on a new one)
local function broken(s, err)
    if s ~= sock then
        return
    end
    sock = nil
    unread = ""
    s:close()
    local again = conn.dropped(tostring(err))
    for i = head, tail do
        local job = sent[i]
        sent[i] = nil
        if again and not job.retried and not job.abandoned then
            job.retried = true
            if job.n then
                job.got, job.list, job.first_err = 0, {}, nil
            end
            nq = nq + 1
            queue[nq] = job
        else
            finish(job, nil, err)
        end
    end
    head = tail + 1
    if nq > 0 then
        wake:post(1)
    end
end

local function connect()
    local s = tcp()
    s:settimeouts(cfg.timeout_ms, cfg.timeout_ms, cfg.timeout_ms)
    local ok, err
    if cfg.socket then
        ok, err = s:connect("unix:" .. cfg.socket)
    else
        ok, err = s:connect(cfg.host, cfg.port)
    end
    if not ok then
        return nil, "redis connect: " .. tostring(err)
    end
    local setup = {}
    if cfg.password then
        setup[#setup + 1] = { "AUTH", cfg.password }
    end
    if cfg.db and cfg.db ~= 0 then
        setup[#setup + 1] = { "SELECT", cfg.db }
    end
    for _, args in ipairs(setup) do
        local line
        ok, err = s:send(_M.command(args))
        if ok then
            line, err = s:receive()
        end
        if not line or byte(line) ~= 43 then
            s:close()
            return nil, "redis connect: " .. args[1] .. ": " .. tostring(line or err)
        end
    end
    return s
end

-- send everything queued as one batch
local function flush()
    local batch, n = queue, nq
    queue, nq = {}, 0
    if not sock then
        local s, err = connect()
        if not s then
            for i = 1, n do
                finish(batch[i], nil, err)
            end
            return
        end
        sock = s
    end
    local buf = {}
    for i = 1, n do
        buf[i] = batch[i].req
        tail = tail + 1
        sent[tail] = batch[i]
    end
    local s = sock
    local ok, err = s:send(buf)
    if not ok then
        broken(s, err)
        return
    end
    replies:post(1)
end

-- parse what was received into replies for the jobs sent, in order
local function deliver(s, data)
    local b = unread == "" and data or unread .. data
    local pos = 1
    while head <= tail do
        local nxt, v, err = parse(b, pos)
        if nxt == false then
            broken(s, "bad reply from redis: " .. sub(b, pos, pos + 40))
            return
        end
        if not nxt then
            break
        end
        pos = nxt
        local job = sent[head]
        local n = job.n
        if n then
            -- a job of n commands: its replies as a list (the first error fails it)
            local got = job.got + 1
            job.got = got
            job.list[got] = v
            if err and not job.first_err then
                job.first_err = err
            end
            if got == n then
                sent[head] = nil
                head = head + 1
                if job.first_err then
                    finish(job, nil, job.first_err)
                else
                    finish(job, job.list)
                end
            end
        else
            sent[head] = nil
            head = head + 1
            finish(job, v, err)
        end
    end
    unread = sub(b, pos)
end

-- receive the replies of the jobs sent (all that have come, at once)
local function receive()
    local s = sock
    if head > tail or not s then
        replies:wait(1)
        return
    end
    local data, err = s:receiveany(1048576)
    if data then
        deliver(s, data)
    else
        broken(s, err)
    end
end

local function reader()
    while not exiting() do
        local ok, err = pcall(receive)
        if not ok then
            log(ERR, "redis pipeline: ", err)
            if sock then
                broken(sock, "internal error")
            end
        end
    end
end

local function loop(premature)
    if premature then
        running = false
        return
    end
    spawn(reader)
    while not exiting() do
        if nq == 0 then
            wake:wait(1)
        end
        if nq > 0 then
            local ok, err = pcall(flush)
            if not ok then
                log(ERR, "redis pipeline: ", err)
            end
        end
    end
    if sock then
        broken(sock, "nginx worker exiting")
    end
    running = false
end

local function start()
    wake = wake or semaphore.new()
    replies = replies or semaphore.new()
    local ok, err = timer_at(0, loop)
    if not ok then
        return nil, err
    end
    running = true
    return true
end

--- Send a command (from _M.command) and wait for its reply, up to
-- timeout seconds (default: twice the connection's timeout). With
-- nreplies, req holds that many commands and the reply is their replies' list.
function _M.call(req, timeout, nreplies)
    if not running then
        local ok, err = start()
        if not ok then
            return nil, "cannot start the redis pipeline: " .. tostring(err)
        end
    end
    local k = #spare
    local sema = spare[k]
    if sema then
        spare[k] = nil
    else
        sema = semaphore.new()
    end
    local job = { req = req, sema = sema }
    if nreplies then
        job.n, job.got, job.list = nreplies, 0, {}
    end
    nq = nq + 1
    queue[nq] = job
    if nq == 1 then
        wake:post(1)
    end
    local ok, err = sema:wait(timeout or 2 * cfg.timeout_ms / 1000)
    if not ok then
        -- a late reply may still post its semaphore: not reused
        job.abandoned = true
        return nil, err
    end
    spare[#spare + 1] = sema
    return job.res, job.err
end

return _M
