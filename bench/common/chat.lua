-- wrk script: POST one request per call, then print exact figures as one JSON line.
-- BENCH_API chooses the body: chat (default, an OpenAI chat completion), embeddings, messages
-- (Anthropic Messages, with anthropic-version) or responses (OpenAI Responses); the URL gives the path. BENCH_MODEL sets the model
-- (default "bench"); BENCH_STREAM=1 asks a chat completion for a streamed answer. BENCH_THINK_MS makes each
-- connection wait that long between an answer and its next request (not counted in the latencies).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local model = os.getenv("BENCH_MODEL") or "bench"
local api = os.getenv("BENCH_API") or "chat"
local stream = os.getenv("BENCH_STREAM") == "1"
local prompt = '"Say hello in one short sentence."'
if api == "embeddings" then
  wrk.body = '{"model":"' .. model .. '","input":' .. prompt .. '}'
elseif api == "responses" then
  wrk.body = '{"model":"' .. model .. '","input":' .. prompt .. ',"max_output_tokens":64}'
elseif api == "messages" then
  wrk.headers["anthropic-version"] = "2023-06-01"
  wrk.body = '{"model":"' .. model .. '","max_tokens":64,"messages":[{"role":"user","content":' .. prompt .. '}]}'
else
  wrk.body = '{"model":"' .. model .. '","messages":[{"role":"user","content":' .. prompt .. '}]'
    .. (stream and ',"stream":true' or '') .. '}'
end

local think = tonumber(os.getenv("BENCH_THINK_MS") or "")
if think then
  function delay()
    return think
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"errors":%d,"non_2xx":%d,"mean_us":%.1f,"max_us":%d,'
      .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
end
