-- luacheck --config lua/.luacheckrc lua/
std = "ngx_lua"
max_line_length = 110
codes = true
