-- wrk script of `python -m bench load`: stateless 2026-07-28 tools/call requests of
-- evaluate_script(() => 1+1), with waitForStableDom false, spread round robin over tabs.
--
-- Arguments, after wrk's "--": the bearer token, then the pageIds as "1,2,3". LOAD_RATE in
-- the environment paces the run: the calls per second to send, all connections together
-- (absent or 0: each connection sends its next request as soon as its answer came, and there
-- is no delay() at all, since wrk puts every request through a timer once the script has
-- one; wrk looks for it before init() runs). A paced thread hands out send times one interval
-- apart: a connection that got its answer waits for the next free time. When every connection
-- was still waiting for an answer at a send time, the schedule slipped: such sends are counted
-- as late (wrk times a request from when it is written, so a daemon that stalls would
-- otherwise hide the calls it kept from being sent).
-- Every answer is checked (HTTP 200, a JSON-RPC result that is not isError and shows the
-- value 2); done() prints one line "load-result {json}" for bench/load.py, and
-- "load-bad <answer>" with the first wrong answer seen, if any.

-- Per thread: requests written, answers read, answers that were wrong.
sent, answered, wrong = 0, 0, 0
first_wrong = ""

local pages = {}
-- Pacing (per thread): ms between sends, the next send time, sends that slipped and by how much.
local rate = tonumber(os.getenv("LOAD_RATE") or "0") or 0
local interval, next_send = rate > 0 and 1000 / rate or 0, 0
late, late_max_ms = 0, 0
local threads = {}
local ANSWER = "```json\\n2\\n```"
local BODY = '{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"evaluate_script",'
  .. '"arguments":{"pageId":%s,"function":"() => 1+1","waitForStableDom":false},'
  .. '"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28",'
  .. '"io.modelcontextprotocol/clientCapabilities":{}}}}'

function setup(thread)
  -- Threads start at different tabs, so that they do not all queue on the same one.
  thread:set("offset", #threads)
  table.insert(threads, thread)
end

function init(args)
  -- wrk calls request() once on its first thread right after init(), to count the requests
  -- it returns; that one is never written.
  if offset == 0 then
    sent = -1
  end
  for page in string.gmatch(args[2], "%d+") do
    table.insert(pages, page)
  end
  wrk.method = "POST"
  wrk.headers["Authorization"] = "Bearer " .. args[1]
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Accept"] = "application/json, text/event-stream"
  wrk.headers["MCP-Protocol-Version"] = "2026-07-28"
  wrk.headers["Mcp-Method"] = "tools/call"
  wrk.headers["Mcp-Name"] = "evaluate_script"
end

local ffi = require("ffi")
ffi.cdef([[
  typedef struct { long tv_sec; long tv_nsec; } load_timespec;
  int clock_gettime(int clock, load_timespec *now);
]])
local timespec = ffi.new("load_timespec")

local function now_ms()
  ffi.C.clock_gettime(1, timespec) -- CLOCK_MONOTONIC
  return tonumber(timespec.tv_sec) * 1000 + tonumber(timespec.tv_nsec) / 1e6
end

-- How many ms wrk waits before a connection's next request (paced runs only).
local function paced_delay()
  local now = now_ms()
  if next_send == 0 then
    next_send = now
  end
  local slipped = now - next_send
  if slipped > interval then -- nobody was free to send at next_send: start again from now
    late = late + 1
    late_max_ms = math.max(late_max_ms, slipped)
    next_send = now
  end
  local wait = math.max(0, next_send - now)
  next_send = next_send + interval
  return wait
end

if interval > 0 then
  delay = paced_delay
end

function request()
  sent = sent + 1
  local page = pages[(sent + offset) % #pages + 1]
  return wrk.format(nil, nil, nil, string.format(BODY, sent, page))
end

function response(status, headers, body)
  answered = answered + 1
  if status ~= 200 or not string.find(body, '"result"', 1, true)
      or string.find(body, '"isError"%s*:%s*true') or not string.find(body, ANSWER, 1, true) then
    wrong = wrong + 1
    if first_wrong == "" then
      first_wrong = string.sub(status .. " " .. string.gsub(body, "%s+", " "), 1, 300)
    end
  end
end

function done(summary, latency, requests)
  local totals = { sent = 0, answered = 0, wrong = 0, late = 0 }
  local late_max = 0
  local example = ""
  for _, thread in ipairs(threads) do
    for key, value in pairs(totals) do
      totals[key] = value + thread:get(key)
    end
    late_max = math.max(late_max, thread:get("late_max_ms"))
    if example == "" then
      example = thread:get("first_wrong")
    end
  end
  local errors = summary.errors
  io.write(string.format(
    '\nload-result {"sent":%d,"answered":%d,"wrong":%d,"duration_us":%d,"connect":%d,"read":%d,'
      .. '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,"late":%d,'
      .. '"late_max_us":%d}\n',
    totals.sent, totals.answered, totals.wrong, summary.duration, errors.connect, errors.read,
    errors.write, errors.status, errors.timeout, latency:percentile(50), latency:percentile(99), latency.max,
    totals.late, late_max * 1000
  ))
  if example ~= "" then
    io.write("load-bad " .. example .. "\n")
  end
end
