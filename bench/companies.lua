-- wrk script of bench/run: every request is GET /v1/bench with X-Pleo-Company-Id rotating
-- over the company ids in the file given as the first script argument
-- (wrk ... -s companies.lua URL -- IDS_FILE [HEADER]). Requests are formatted once per thread
-- in init, so the per-request cost in wrk is a table lookup. done() prints one
-- machine-readable WRKSTATS line (latencies in microseconds).
local reqs, n, i = {}, 0, 0
local threads, counter = {}, 0

function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
end

function init(args)
  local path, header = args[1], args[2] or "X-Pleo-Company-Id"
  for id in io.lines(path) do
    n = n + 1
    reqs[n] = wrk.format("GET", "/v1/bench", { [header] = id })
  end
  -- threads start at different companies
  i = ((tid or 1) - 1) * math.floor(n / 2)
end

function request()
  i = i % n + 1
  return reqs[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKSTATS requests=%d duration_us=%d errors=%d non2xx=%d timeouts=%d p50_us=%d p99_us=%d p999_us=%d max_us=%d\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
