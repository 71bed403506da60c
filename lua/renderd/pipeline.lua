-- renderd.pipeline: the front's Redis client, pipelined connections of an
-- nginx worker.
--
--   local pipeline = require "renderd.pipeline"
--   local red = pipeline.new({ host = "127.0.0.1", port = 6379, socket = nil,
--                              password = nil, db = 0, timeout_ms = 1000 })
--   local res, err = red:call(pipeline.command({ "GET", key }))
--   -- (or a prepared start: pipeline.command({ "GETRANGE" }, 4) .. pipeline.arg(key) ...)
--   -- res: a string, number, table or ngx.null; nil, err on failure: err
--   -- starts with "redis connect: " (no connection), is "timeout" or
--   -- "closed"..., or is Redis's own error reply ("NOSCRIPT ...", "ERR ...")
--   -- several commands sent together, their n replies as a list:
--   local list, err = red:call(cmd1 .. cmd2, nil, 2)
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
local setmetatable = setmetatable

local _M = { _VERSION = "0.1.0" }

local mt = { __index = _M }
local spare = {}                 -- semaphores of finished jobs, to reuse (all connections)

--- A connection of this worker (made at the first call). Fields:
-- cfg; running; sock (nil when there is none); queue, nq (jobs not sent
-- yet); sent, head, tail (jobs sent, replies expected in this order); wake
-- (the writer waits here for jobs); replies (the reader waits here for a
-- batch sent); unread (bytes received and not parsed yet).
function _M.new(c)
    return setmetatable({ cfg = c, running = false, queue = {}, nq = 0, sent = {}, head = 1, tail = 0,
                          unread = "" }, mt)
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
-- (nil for an error reply) and the error; false if it is not a reply at
-- all; nil if b holds only part of it yet, with the length b must have
-- before another try can succeed when that is known (a bulk string's end)
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
            return nil, last + 2
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
                return pos, v
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
local function broken(self, s, err)
    if s ~= self.sock then
        return
    end
    self.sock = nil
    self.unread, self.array, self.need, self.chunks = "", nil, nil, nil
    s:close()
    local again = conn.dropped(tostring(err))
    local sent, queue = self.sent, self.queue
    for i = self.head, self.tail do
        local job = sent[i]
        sent[i] = nil
        if again and not job.retried and not job.abandoned then
            job.retried = true
            if job.n then
                job.got, job.list, job.first_err = 0, {}, nil
            end
            self.nq = self.nq + 1
            queue[self.nq] = job
        else
            finish(job, nil, err)
        end
    end
    self.head = self.tail + 1
    if self.nq > 0 then
        self.wake:post(1)
    end
end

local function connect(cfg)
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
local function flush(self)
    local batch, n = self.queue, self.nq
    self.queue, self.nq = {}, 0
    if not self.sock then
        local s, err = connect(self.cfg)
        if not s then
            for i = 1, n do
                finish(batch[i], nil, err)
            end
            return
        end
        self.sock = s
    end
    local buf, sent = {}, self.sent
    for i = 1, n do
        buf[i] = batch[i].req
        self.tail = self.tail + 1
        sent[self.tail] = batch[i]
    end
    local s = self.sock
    local ok, err = s:send(buf)
    if not ok then
        broken(self, s, err)
        return
    end
    self.replies:post(1)
end

-- one reply of b from pos, as parse(), with an array reply (a metatile's
-- blobs: many chunks long) parsed element by element across chunks; when
-- it is incomplete, the third value is where the bytes to keep begin
local function parse_reply(self, b, pos)
    local a = self.array
    if not a then
        if byte(b, pos) ~= 42 then
            return parse(b, pos)
        end
        local e = find(b, "\r\n", pos, true)
        if not e then
            return nil
        end
        local n = tonumber(sub(b, pos + 1, e - 1))
        if not n then
            return false
        end
        if n < 0 then
            return e + 2, null
        end
        a = { out = {}, i = 1, n = n }
        pos = e + 2
    end
    local out = a.out
    for i = a.i, a.n do
        local nxt, v, err = parse(b, pos)
        if not nxt then
            if nxt == false then
                self.array = nil
                return false
            end
            a.i = i
            self.array = a
            return nil, v, pos
        end
        out[i] = v == nil and { false, err } or v
        pos = nxt
    end
    self.array = nil
    return pos, out
end

-- parse what was received into replies for the jobs sent, in order. Bytes
-- that cannot finish a reply yet are kept; when the reply under way needs
-- a known number of bytes (a long bulk string), chunks are only collected
-- until they are there, not joined and parsed again at every one.
local function deliver(self, s, data)
    local b
    if self.need then
        local chunks = self.chunks
        chunks[#chunks + 1] = data
        self.have = self.have + #data
        if self.have < self.need then
            return
        end
        b = concat(chunks)
        self.need, self.chunks = nil, nil
    else
        local unread = self.unread
        b = unread == "" and data or unread .. data
    end
    local pos = 1
    local sent = self.sent
    while self.head <= self.tail do
        local nxt, v, err = parse_reply(self, b, pos)
        if nxt == false then
            broken(self, s, "bad reply from redis: " .. sub(b, pos, pos + 40))
            return
        end
        if not nxt then
            local from = err or pos
            local rest = sub(b, from)
            if v then
                self.need, self.chunks, self.have, self.unread = v - from + 1, { rest }, #rest, ""
            else
                self.unread = rest
            end
            return
        end
        pos = nxt
        local head = self.head
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
                self.head = head + 1
                if job.first_err then
                    finish(job, nil, job.first_err)
                else
                    finish(job, job.list)
                end
            end
        else
            sent[head] = nil
            self.head = head + 1
            finish(job, v, err)
        end
    end
    self.unread = sub(b, pos)
end

-- receive the replies of the jobs sent (all that have come, at once)
local function receive(self)
    local s = self.sock
    if self.head > self.tail or not s then
        self.replies:wait(1)
        return
    end
    local data, err = s:receiveany(1048576)
    if data then
        deliver(self, s, data)
    else
        broken(self, s, err)
    end
end

local function reader(self)
    while not exiting() do
        local ok, err = pcall(receive, self)
        if not ok then
            log(ERR, "redis pipeline: ", err)
            if self.sock then
                broken(self, self.sock, "internal error")
            end
        end
    end
end

local function loop(premature, self)
    if premature then
        self.running = false
        return
    end
    spawn(reader, self)
    while not exiting() do
        if self.nq == 0 then
            self.wake:wait(1)
        end
        if self.nq > 0 then
            local ok, err = pcall(flush, self)
            if not ok then
                log(ERR, "redis pipeline: ", err)
            end
        end
    end
    if self.sock then
        broken(self, self.sock, "nginx worker exiting")
    end
    self.running = false
end

local function start(self)
    self.wake = self.wake or semaphore.new()
    self.replies = self.replies or semaphore.new()
    local ok, err = timer_at(0, loop, self)
    if not ok then
        return nil, err
    end
    self.running = true
    return true
end

--- Send a command (from _M.command) on this connection and wait for its
-- reply, up to timeout seconds (default: twice the connection's timeout).
-- With nreplies, req holds that many commands and the reply is their
-- replies' list.
function _M.call(self, req, timeout, nreplies)
    if not self.running then
        local ok, err = start(self)
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
    local nq = self.nq + 1
    self.nq = nq
    self.queue[nq] = job
    if nq == 1 then
        self.wake:post(1)
    end
    local ok, err = sema:wait(timeout or 2 * self.cfg.timeout_ms / 1000)
    if not ok then
        -- a late reply may still post its semaphore: not reused
        job.abandoned = true
        return nil, err
    end
    spare[#spare + 1] = sema
    return job.res, job.err
end

return _M
