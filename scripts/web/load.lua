-- wrk script of the web suite's load check:
--   wrk -s load.lua URL -- RELEASE_A RELEASE_B
-- Requests rotate over the front controller (most), the static text and, 1 in 32, the 2 MiB
-- binary. Every response is classified:
--   non200      status other than 200
--   mixed       a PHP response whose files report two different releases; "flipflop" counts
--               those whose files, in the order PHP loaded them, change release more than once
--               (e.g. 2 1 2: not explainable by one switch landing mid-request)
--   torn        a 2 MiB binary whose size is wrong or whose head and trailer name two releases
--   unparsable  a 200 whose body is none of the app's three kinds
--   foreign     a response naming, in any file, a release other than RELEASE_A and RELEASE_B:
--               stale content from a release that was not active during the load
-- and the releases seen are counted. done() prints one line starting with "LOAD " that
-- scripts/web/run parses, plus the first mixed body seen, if any.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

local paths = {}
for i = 1, 32 do
   if i == 32 then
      paths[i] = "/static/blob.bin"
   elseif i % 4 == 0 then
      paths[i] = "/static/release.txt"
   else
      paths[i] = "/index.php"
   end
end

local blob_size = 2 * 1024 * 1024

function init(args)
   rel_a = args[1] or "?"
   rel_b = args[2] or "?"
   counter = 0
   php, txt, blob = 0, 0, 0
   non200, mixed, torn, unparsable = 0, 0, 0, 0
   flipflop = 0
   foreign = 0
   first_foreign = ""
   started = os.time()
   seen_a, seen_b, seen_other = 0, 0, 0
   first_mixed = ""
   first_flipflop = ""
end

function request()
   counter = counter + 1
   return wrk.format("GET", paths[(counter % #paths) + 1])
end

local function count_release(r)
   if r == rel_a then
      seen_a = seen_a + 1
   elseif r == rel_b then
      seen_b = seen_b + 1
   else
      seen_other = seen_other + 1
   end
end

local function note_foreign(releases, body)
   for _, r in ipairs(releases) do
      if r ~= nil and r ~= rel_a and r ~= rel_b then
         foreign = foreign + 1
         if first_foreign == "" then
            first_foreign = body:sub(1, 200):match("^[^\n]*")
               .. string.format(" (%d s into the load)", os.time() - started)
         end
         return
      end
   end
end

function response(status, headers, body)
   if status ~= 200 then
      non200 = non200 + 1
      return
   end
   if body:sub(1, 6) == "entry=" then
      local first, prev, fields, same, changes = nil, nil, 0, true, 0
      local releases = {}
      for k, v in body:gmatch("(%a+)=(%d+)") do
         if k ~= "pid" then
            fields = fields + 1
            releases[#releases + 1] = v
            if first == nil then
               first = v
            elseif v ~= first then
               same = false
            end
            if prev ~= nil and v ~= prev then
               changes = changes + 1
            end
            prev = v
         end
      end
      note_foreign(releases, body)
      if fields ~= 6 then
         unparsable = unparsable + 1
      elseif not same then
         mixed = mixed + 1
         if first_mixed == "" then
            first_mixed = body:gsub("%s+$", "")
         end
         if changes > 1 then
            flipflop = flipflop + 1
            if first_flipflop == "" then
               first_flipflop = body:gsub("%s+$", "")
            end
         end
      else
         php = php + 1
         count_release(first)
      end
   elseif body:sub(1, 8) == "release=" then
      txt = txt + 1
      local r = body:match("^release=(%d+)")
      note_foreign({ r }, body)
      count_release(r)
   elseif body:sub(1, 13) == "BLOB release=" then
      blob = blob + 1
      local head = body:match("^BLOB release=(%d+)\n")
      local tail = body:match("\nrelease=(%d+) END\n$")
      note_foreign({ head, tail }, body)
      if #body ~= blob_size or head == nil or head ~= tail then
         torn = torn + 1
      else
         count_release(head)
      end
   else
      unparsable = unparsable + 1
   end
end

function done(summary, latency, requests)
   local t = {
      php = 0, txt = 0, blob = 0, non200 = 0, mixed = 0, flipflop = 0, foreign = 0, torn = 0,
      unparsable = 0,
      seen_a = 0, seen_b = 0, seen_other = 0,
   }
   local example, example_flipflop = "", ""
   -- init() ran in each thread's own Lua state: the release names are read from a thread.
   local rel_a, rel_b = "?", "?"
   if threads[1] ~= nil then
      rel_a = threads[1]:get("rel_a") or "?"
      rel_b = threads[1]:get("rel_b") or "?"
   end
   for _, thread in ipairs(threads) do
      for k, _ in pairs(t) do
         t[k] = t[k] + (thread:get(k) or 0)
      end
      local m = thread:get("first_mixed")
      if example == "" and m ~= nil and m ~= "" then
         example = m
      end
      local f = thread:get("first_flipflop")
      if example_flipflop == "" and f ~= nil and f ~= "" then
         example_flipflop = f
      end
   end
   local e = summary.errors
   local secs = summary.duration / 1e6
   io.write(string.format(
      "LOAD requests=%d seconds=%.1f rps=%.0f php=%d txt=%d blob=%d non200=%d mixed=%d flipflop=%d foreign=%d torn=%d "
         .. "unparsable=%d seen_%s=%d seen_%s=%d seen_other=%d connect=%d read=%d write=%d "
         .. "timeout=%d status=%d p50_ms=%.1f p99_ms=%.1f max_ms=%.1f\n",
      summary.requests, secs, summary.requests / secs, t.php, t.txt, t.blob, t.non200, t.mixed,
      t.flipflop, t.foreign, t.torn, t.unparsable, rel_a, t.seen_a, rel_b, t.seen_b, t.seen_other, e.connect, e.read,
      e.write, e.timeout, e.status, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
      latency.max / 1000))
   if example ~= "" then
      io.write("LOAD first_mixed: " .. example .. "\n")
   end
   local example_foreign = ""
   for _, thread in ipairs(threads) do
      local f = thread:get("first_foreign")
      if example_foreign == "" and f ~= nil and f ~= "" then
         example_foreign = f
      end
   end
   if example_foreign ~= "" then
      io.write("LOAD first_foreign: " .. example_foreign .. "\n")
   end
   if example_flipflop ~= "" then
      io.write("LOAD first_flipflop: " .. example_flipflop .. "\n")
   end
end
