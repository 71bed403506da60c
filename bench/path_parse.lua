-- renderd.path.parse of plain tile URLs, alone: CPU time per parse.
--
--   lua5.1 bench/path_parse.lua DIR [N]     (DIR: a lua/ directory, e.g. the
--                                            lua/ of an earlier commit, see
--                                            bench/http.py --lua-before)
--
-- Parses N (2 million) URLs of 256 different tiles of one layer with the
-- renderd.path found under DIR and prints nanoseconds per parse. Run it for
-- two directories in turn, several times: the machine is shared.
local dir = assert(arg[1], "usage: lua5.1 bench/path_parse.lua DIR [N]")
package.path = dir .. "/?.lua;" .. package.path
local path = require "renderd.path"
local layers = { world = { name = "world", minzoom = 0, maxzoom = 20, metatile = 8, ext = "png", keys = {},
                           scale_set = { [1] = true, [2] = true } } }
local uris = {}
for i = 1, 256 do
    uris[i] = "/tiles/world/12/" .. (2000 + i) .. "/" .. (1300 + i % 16) .. ".png"
end
local n = tonumber(arg[2]) or 2000000
local t0 = os.clock()
for i = 1, n do
    path.parse(uris[i % 256 + 1], layers)
end
print(string.format("%s: %.1f ns per parse", dir, (os.clock() - t0) / n * 1e9))
