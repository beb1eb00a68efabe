-- Fixed-rate (open-loop) requests for classic wrk, which has no rate option: `argd.bench.latency` runs
--   wrk -t1 -cC -dDs -s wrk_pace.lua URL -- TARGETS RATE THREADS
-- TARGETS holds one request a line, "PATH<TAB>API_KEY[<TAB>IF_NONE_MATCH]"; each request picks one at
-- random. Every thread owns RATE/THREADS send slots a second on a clock of its own (CLOCK_MONOTONIC via
-- LuaJIT's ffi): a connection that finishes waits for the next free slot, so the offered load does not
-- follow the server's speed. A slot taken late (every connection was still waiting on an answer) is
-- counted, with the worst lateness, so a run that could not keep its schedule says so.
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } argd_timespec;
int clock_gettime(int clk_id, argd_timespec *tp);
]]
local clock = ffi.new("argd_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, clock)
  return tonumber(clock.tv_sec) * 1000.0 + tonumber(clock.tv_nsec) / 1e6
end

local threads = {}

function setup(thread)
  thread:set("index", #threads)
  table.insert(threads, thread)
end

local requests = {}
local interval_ms, next_slot = 1.0, nil
late, late_max_ms, sent = 0, 0.0, 0

function init(args)
  local targets, rate, nthreads = args[1], tonumber(args[2]), tonumber(args[3])
  interval_ms = 1000.0 * nthreads / rate
  math.randomseed(1000 + index)
  for line in io.lines(targets) do
    local path, key, tag = line:match("^([^\t]+)\t([^\t]+)\t?([^\t]*)$")
    local headers = { ["Authorization"] = "Bearer " .. key }
    if tag ~= nil and tag ~= "" then headers["If-None-Match"] = tag end
    table.insert(requests, wrk.format("GET", path, headers))
  end
end

function request()
  sent = sent + 1
  return requests[math.random(#requests)]
end

function delay()
  local now = now_ms()
  if next_slot == nil then next_slot = now end
  local slot = next_slot
  next_slot = next_slot + interval_ms
  local wait = slot - now
  if wait < -1.0 then -- more than a millisecond behind its slot
    late = late + 1
    if -wait > late_max_ms then late_max_ms = -wait end
  end
  if wait < 0 then return 0 end
  return math.floor(wait)
end

function done(summary, latency, _)
  local late_total, late_worst = 0, 0.0
  for _, thread in ipairs(threads) do
    late_total = late_total + (thread:get("late") or 0)
    local worst = thread:get("late_max_ms") or 0
    if worst > late_worst then late_worst = worst end
  end
  local e = summary.errors
  io.write(string.format(
    'ARGD_WRK {"requests": %d, "duration_us": %d, "bytes": %d, "errors": {"connect": %d, "read": %d, '
    .. '"write": %d, "status": %d, "timeout": %d}, "latency_us": {"p50": %d, "p90": %d, "p99": %d, '
    .. '"max": %d, "mean": %.1f}, "late_slots": %d, "late_max_ms": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    late_total, late_worst))
end
