-- renderd.json: a small strict JSON decoder (the runtime config and the
-- daemon's STATUS reply). The Debian nginx Lua packages ship no cjson, so
-- this keeps the front free of extra binary modules.
--
--   local json = require "renderd.json"
--   local value, err = json.decode(text)   -- nil, "reason at byte N" on error
--
-- JSON null decodes to json.null (a unique sentinel), so keys with a null
-- value stay visible; use json.value(v) to turn it into nil.

local byte = string.byte
local sub = string.sub
local find = string.find
local char = string.char
local tonumber = tonumber
local concat = table.concat
local floor = math.floor
local type = type
local error = error
local pcall = pcall
local tostring = tostring
local setmetatable = setmetatable

local _M = { _VERSION = "0.1.0" }

local null = setmetatable({}, { __tostring = function() return "null" end })
_M.null = null

local escapes = {
    [34] = '"', [92] = "\\", [47] = "/", [98] = "\b",
    [102] = "\f", [110] = "\n", [114] = "\r", [116] = "\t",
}

local function fail(pos, msg)
    error({ pos = pos, msg = msg }, 0)
end

local function skip(s, i)
    local _, e = find(s, "^[ \t\r\n]*", i)
    return e + 1
end

local function utf8(cp)
    if cp < 0x80 then
        return char(cp)
    elseif cp < 0x800 then
        return char(0xC0 + floor(cp / 64), 0x80 + cp % 64)
    elseif cp < 0x10000 then
        return char(0xE0 + floor(cp / 4096), 0x80 + floor(cp / 64) % 64, 0x80 + cp % 64)
    end
    return char(0xF0 + floor(cp / 262144), 0x80 + floor(cp / 4096) % 64,
                0x80 + floor(cp / 64) % 64, 0x80 + cp % 64)
end

local parse_value

local function parse_string(s, i)
    -- s[i] is the opening quote
    local out, n = {}, 0
    local j = i + 1
    while true do
        local a, b = find(s, '^[^"\\%c]+', j)
        if a then
            n = n + 1
            out[n] = sub(s, a, b)
            j = b + 1
        end
        local c = byte(s, j)
        if c == 34 then
            return concat(out), j + 1
        elseif c == 92 then
            local e = byte(s, j + 1)
            if e == 117 then
                local hex = sub(s, j + 2, j + 5)
                if not find(hex, "^%x%x%x%x$") then
                    fail(j, "bad \\u escape")
                end
                local cp = tonumber(hex, 16)
                j = j + 6
                if cp >= 0xD800 and cp <= 0xDBFF and sub(s, j, j + 1) == "\\u" then
                    local lo = tonumber(sub(s, j + 2, j + 5), 16)
                    if lo and lo >= 0xDC00 and lo <= 0xDFFF then
                        cp = 0x10000 + (cp - 0xD800) * 1024 + (lo - 0xDC00)
                        j = j + 6
                    end
                end
                n = n + 1
                out[n] = utf8(cp)
            elseif e and escapes[e] then
                n = n + 1
                out[n] = escapes[e]
                j = j + 2
            else
                fail(j, "bad escape")
            end
        elseif c == nil then
            fail(j, "unterminated string")
        else
            fail(j, "control character in string")
        end
    end
end

local function parse_number(s, i)
    local a, b = find(s, "^-?%d+%.?%d*[eE]?[-+]?%d*", i)
    if not a then
        fail(i, "bad number")
    end
    local v = tonumber(sub(s, a, b))
    if v == nil then
        fail(i, "bad number")
    end
    return v, b + 1
end

local function parse_array(s, i, depth)
    local out, n = {}, 0
    i = skip(s, i + 1)
    if byte(s, i) == 93 then
        return out, i + 1
    end
    while true do
        local v
        v, i = parse_value(s, i, depth)
        n = n + 1
        out[n] = v
        i = skip(s, i)
        local c = byte(s, i)
        if c == 93 then
            return out, i + 1
        elseif c ~= 44 then
            fail(i, "expected ',' or ']'")
        end
        i = skip(s, i + 1)
    end
end

local function parse_object(s, i, depth)
    local out = {}
    i = skip(s, i + 1)
    if byte(s, i) == 125 then
        return out, i + 1
    end
    while true do
        if byte(s, i) ~= 34 then
            fail(i, "expected a key")
        end
        local k
        k, i = parse_string(s, i)
        i = skip(s, i)
        if byte(s, i) ~= 58 then
            fail(i, "expected ':'")
        end
        local v
        v, i = parse_value(s, skip(s, i + 1), depth)
        out[k] = v
        i = skip(s, i)
        local c = byte(s, i)
        if c == 125 then
            return out, i + 1
        elseif c ~= 44 then
            fail(i, "expected ',' or '}'")
        end
        i = skip(s, i + 1)
    end
end

parse_value = function(s, i, depth)
    if depth > 64 then
        fail(i, "nested too deep")
    end
    local c = byte(s, i)
    if c == 123 then
        return parse_object(s, i, depth + 1)
    elseif c == 91 then
        return parse_array(s, i, depth + 1)
    elseif c == 34 then
        return parse_string(s, i)
    elseif c == 116 and sub(s, i, i + 3) == "true" then
        return true, i + 4
    elseif c == 102 and sub(s, i, i + 4) == "false" then
        return false, i + 5
    elseif c == 110 and sub(s, i, i + 3) == "null" then
        return null, i + 4
    elseif c == 45 or (c and c >= 48 and c <= 57) then
        return parse_number(s, i)
    end
    fail(i, "unexpected " .. (c and ("'" .. char(c) .. "'") or "end of text"))
end

--- Decode a JSON text. Returns the value, or nil and "reason at byte N".
function _M.decode(s)
    if type(s) ~= "string" then
        error("json.decode expects a string", 2)
    end
    local ok, v, i = pcall(parse_value, s, skip(s, 1), 0)
    if not ok then
        if type(v) == "table" then
            return nil, v.msg .. " at byte " .. v.pos
        end
        return nil, tostring(v)
    end
    i = skip(s, i)
    if i <= #s then
        return nil, "trailing data at byte " .. i
    end
    return v
end

--- json.null -> nil, anything else unchanged.
function _M.value(v)
    if v == null then
        return nil
    end
    return v
end

return _M
