-- wrk script for bench/sidecar_latency.py: replays a request file, prints exact percentiles.
--
--   wrk -t1 -c1 -d5s --latency -s bench/wrk_requests.lua http://127.0.0.1:PORT -- FILE OFFSET
--
-- FILE has one request a line, tab-separated: METHOD, PATH, BODY (may be empty), then header
-- name/value pairs. Each thread starts at its own place in the file (OFFSET plus a quarter of the
-- file per thread) and cycles through it. done() prints one line `BENCH_JSON {...}` with
-- latencies in microseconds (wrk keeps a 1 us resolution histogram, so these are exact).

local threads = 0

function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

local function split(line)
  local fields, start = {}, 1
  while true do
    local at = string.find(line, "\t", start, true)
    if at == nil then
      fields[#fields + 1] = string.sub(line, start)
      return fields
    end
    fields[#fields + 1] = string.sub(line, start, at - 1)
    start = at + 1
  end
end

local requests, count, index = {}, 0, 0

function init(args)
  local path, offset = args[1], tonumber(args[2] or "0")
  for line in io.lines(path) do
    local f = split(line)
    local headers = {}
    for k = 4, #f - 1, 2 do
      headers[f[k]] = f[k + 1]
    end
    local body = nil
    if f[3] ~= "" then
      body = f[3]
      headers["Content-Type"] = "application/json"
    end
    count = count + 1
    requests[count] = wrk.format(f[1], f[2], headers, body)
  end
  -- tid was set by setup(); threads start a quarter of the file apart (the benchmark uses <= 4).
  index = (offset + math.floor(count * (tid % 4) / 4)) % count
end

function request()
  index = index + 1
  if index > count then
    index = 1
  end
  return requests[index]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"mean_us": %.1f, "max_us": %d, "errors_connect": %d, "errors_read": %d, "errors_write": %d, ' ..
    '"non_2xx_3xx": %d, "errors_timeout": %d}\n',
    summary.requests, summary.duration,
    latency:percentile(50.0), latency:percentile(90.0), latency:percentile(99.0),
    latency.mean, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
