-- wrk script of `python -m bench load`: stateless 2026-07-28 tools/call requests of
-- evaluate_script(() => 1+1), with waitForStableDom false, spread round robin over tabs.
--
-- Arguments, after wrk's "--": the bearer token, then the pageIds as "1,2,3".
-- Every answer is checked (HTTP 200, a JSON-RPC result that is not isError and shows the
-- value 2); done() prints one line "load-result {json}" for bench/load.py, and
-- "load-bad <answer>" with the first wrong answer seen, if any.

-- Per thread: requests written, answers read, answers that were wrong.
sent, answered, wrong = 0, 0, 0
first_wrong = ""

local pages = {}
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
  local totals = { sent = 0, answered = 0, wrong = 0 }
  local example = ""
  for _, thread in ipairs(threads) do
    for key, value in pairs(totals) do
      totals[key] = value + thread:get(key)
    end
    if example == "" then
      example = thread:get("first_wrong")
    end
  end
  local errors = summary.errors
  io.write(string.format(
    '\nload-result {"sent":%d,"answered":%d,"wrong":%d,"duration_us":%d,"connect":%d,"read":%d,'
      .. '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    totals.sent, totals.answered, totals.wrong, summary.duration, errors.connect, errors.read,
    errors.write, errors.status, errors.timeout, latency:percentile(50), latency:percentile(99), latency.max
  ))
  if example ~= "" then
    io.write("load-bad " .. example .. "\n")
  end
end
