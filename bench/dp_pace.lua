-- wrk script for bench/dp.sh: a fixed request rate instead of wrk's closed loop.
-- Arguments after "--": RATE (requests/s in total, default 1000) and THREADS (wrk -t, default 2).
-- wrk calls init() once per thread; the connections of a thread share one schedule, so each
-- thread sends RATE/THREADS requests per second, spaced evenly, as long as latency allows.
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } km_timespec;
int clock_gettime(int clk, km_timespec *ts);
]]
local ts = ffi.new("km_timespec")

local function now_ms()
    ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
    return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local interval, due

function init(args)
    local rate = tonumber(args[1] or "1000")
    local threads = tonumber(args[2] or "2")
    interval = threads * 1000 / rate
end

function delay()
    local t = now_ms()
    if due == nil then
        due = t
    end
    due = due + interval
    local d = due - t
    if d < 0 then
        d = 0
    end
    return d
end
