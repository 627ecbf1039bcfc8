-- wrk script for bench/crud.py: create, read and update of FHIR Patients.
--   wrk -t1 -cN -dDs --latency -s bench/wrk/fhir.lua http://127.0.0.1:PORT -- CASE BODY IDS PREFIX [TOKEN]
-- CASE create: POST PREFIX/Patient with the BODY file.
--      read:   GET PREFIX/Patient/{id}, id picked at random from the IDS file (one a line).
--      update: PUT PREFIX/Patient/{id}, BODY with "__ID__" replaced by that id.
-- TOKEN, when given and not empty, is sent on every request as "Authorization: Bearer TOKEN".
-- Every non-2xx answer is counted; done() prints one line "BENCH_JSON {...}".

local threads = {}
local prepared = {}

function setup(thread)
   thread:set("tid", #threads + 1)
   table.insert(threads, thread)
end

local function slurp(path)
   local f = assert(io.open(path, "rb"))
   local text = f:read("*a")
   f:close()
   return text
end

function init(args)
   local case, body, ids_path, prefix, token = args[1], slurp(args[2]), args[3], args[4], args[5]
   errors, statuses = 0, {}
   math.randomseed(os.time() + 7919 * tid)
   local function headers(with_body)
      local h = { ["Accept"] = "application/fhir+json" }
      if with_body then
         h["Content-Type"] = "application/fhir+json"
      end
      if token and #token > 0 then
         h["Authorization"] = "Bearer " .. token
      end
      return h
   end
   if case == "create" then
      prepared[1] = wrk.format("POST", prefix .. "/Patient", headers(true), body)
      return
   end
   for id in io.lines(ids_path) do
      if #id > 0 then
         local path = prefix .. "/Patient/" .. id
         if case == "read" then
            prepared[#prepared + 1] = wrk.format("GET", path, headers(false))
         elseif case == "update" then
            local text = body:gsub("__ID__", id)
            prepared[#prepared + 1] = wrk.format("PUT", path, headers(true), text)
         else
            error("unknown case " .. tostring(case))
         end
      end
   end
end

function request()
   return prepared[math.random(#prepared)]
end

function response(status, headers, body)
   if status < 200 or status > 299 then
      errors = errors + 1
      statuses[status] = (statuses[status] or 0) + 1
   end
end

function done(summary, latency, requests)
   local status_errors, by_status = 0, {}
   for _, t in ipairs(threads) do
      status_errors = status_errors + t:get("errors")
      for code, n in pairs(t:get("statuses")) do
         by_status[code] = (by_status[code] or 0) + n
      end
   end
   local kinds = {}
   for code, n in pairs(by_status) do
      kinds[#kinds + 1] = string.format('"%d":%d', code, n)
   end
   local e = summary.errors
   for _, k in ipairs({ "connect", "read", "write", "timeout" }) do
      if e[k] > 0 then
         kinds[#kinds + 1] = string.format('"socket %s":%d', k, e[k])
      end
   end
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"seconds":%.6f,"p50_ms":%.3f,"p99_ms":%.3f,"errors":%d,'
         .. '"error_kinds":{%s}}\n',
      summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000,
      latency:percentile(99) / 1000,
      status_errors + e.connect + e.read + e.write + e.timeout, table.concat(kinds, ",")))
end
