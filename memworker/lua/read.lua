-- memworker store reads for the exact search path (no search module). Read-only.
--
-- Key layout (ns = ARGV[2], the key prefix "{namespace}" (its hash tag); see memworker/keys.py and memworker/store/vectors.py):
--   ns:tree:<scope>  zset    ids under a scope, scored by created_at
--   ns:rec:<id>      hash    a record; fields read: embedding, and the filter tokens
--                            scope_anc, cat_t, meta_t, src_t, vis
--   ns:changes       stream  change log written by store.lua (entries, cap: memworker/keys.py)
--   ns:meta          hash    field "log": the log's incarnation (set when it is created)
--
-- ARGV[1] = op, ARGV[2] = ns, then per op:
--   sync:     seen (entries-added count the cache has consumed), last (its last entry id),
--             count (page size)
--             -> { incarnation or false, entries_added, length, records under "/", id1, rid1, ... }
--             with the entries after `last` (at most `count`); entries_added and length are
--             0 when the stream does not exist (entries_added -1: the server does not report
--             it, Redis < 7). All read in one atomic step.
--   snapshot: max_records
--             -> { incarnation or false, last-generated-id ("0-0" without a stream), entries_added,
--                  records under "/", then their ids (none when more than max_records) }
--   rows:     id, id, ...
--             -> { embedding, scope_anc, cat_t, meta_t, src_t, vis } per id, flattened
--                (false/nil for a missing field or record)
--   records:  nfields, field1..fieldN, id, id, ...   (a field "id" is the record's id)
--             -> { dim (ns:meta "dim", or ""), then the N fields of each id, flattened
--                  (false for a missing field or record) }
--   page:     scope, start, stop (ZREVRANGE ranks: newest first), nfields, field1..fieldN
--             -> { dim, then the N fields of each record on the page, flattened }
--                (list_records in one round trip)
--   edges:    scope, cut (a scope below it)
--             -> { oldest score, newest score } of the members of ns:tree:<scope> not in
--                ns:tree:<cut> (false: none). Both sets order their members alike (score,
--                then member), so from either end they agree rank by rank up to the first
--                member outside the cut: that rank is found by galloping then bisecting,
--                O(log n) single-member ZRANGEs, never a scan.
--   outside:  scope, cut (a scope below it), start, k, n, nfields, field1..fieldN
--             -> { dim, next start (-1: the end), next k, then the N fields of each of
--                  the next (at most) n members of ns:tree:<scope>, newest first, that
--                  are not in ns:tree:<cut>, flattened }
--             (start: a rank of the scope's set, newest first; k: the members outside
--             the cut at ranks below it; 0, 0 for the newest.) A member at rank j that is
--             in the cut is the cut's member at rank j - k, so a run of cut members is
--             skipped by galloping then bisecting (O(log run) single-member ZREVRANGEs).
--   scan:     scope, start, stop (ZRANGE ranks), with_tokens ("1"/"0")
--             -> { ids joined by "\n", embeddings concatenated (records without one skipped),
--                  token lines joined by "\n" (fields joined by "\t"), or "" }
--             (the per-search bulk read, used above exact_cache_max_records)

local op, ns = ARGV[1], ARGV[2]
local CHANGES = ns .. ":changes"

local function stream_info()
  -- entries-added (Valkey/Redis >= 7) counts every entry ever added, trimmed ones too;
  -- -1 when the server does not report it (the cache is then not used).
  if redis.call("EXISTS", CHANGES) == 0 then return 0, 0, "0-0" end
  local info = redis.call("XINFO", "STREAM", CHANGES)
  local added, length, last = -1, 0, "0-0"
  for i = 1, #info - 1, 2 do
    local k = info[i]
    if k == "entries-added" then added = info[i + 1]
    elseif k == "length" then length = info[i + 1]
    elseif k == "last-generated-id" then last = info[i + 1] end
  end
  return added, length, last
end

-- The first rank >= start of the zset `tree`, in `cmd`'s order (ZRANGE: oldest first,
-- ZREVRANGE: newest first), whose member is not in its subset `cut`, given k members
-- outside the cut at the ranks below start; and the bisection steps it took. A member
-- at rank j inside the cut is the cut's member at rank j - k (both order alike: score,
-- then member), so the run of cut members is skipped by galloping then bisecting.
local function first_outside(cmd, tree, cut, start, k)
  local function agree(rank)
    local c = redis.call(cmd, cut, rank - k, rank - k)
    if #c == 0 then return false end
    local t = redis.call(cmd, tree, rank, rank)
    return #t > 0 and t[1] == c[1]
  end
  if not agree(start) then return start, 0 end
  local lo, step, steps = start, 1, 0
  while agree(lo + step) do
    lo = lo + step
    step = step * 2
  end
  local hi = lo + step -- the first rank known to differ
  while hi - lo > 1 do
    local mid = math.floor((lo + hi) / 2)
    if agree(mid) then lo = mid else hi = mid end
    steps = steps + 1
  end
  return hi, steps
end

if op == "sync" then
  local added, length = stream_info()
  local out = {
    redis.call("HGET", ns .. ":meta", "log"), added, length,
    redis.call("ZCARD", ns .. ":tree:/"),
  }
  if length > 0 and added >= 0 and added > tonumber(ARGV[3]) then
    local entries = redis.call("XRANGE", CHANGES, "(" .. ARGV[4], "+", "COUNT", ARGV[5])
    for _, e in ipairs(entries) do
      out[#out + 1] = e[1]
      out[#out + 1] = e[2][2]
    end
  end
  return out
elseif op == "snapshot" then
  local added, _, last = stream_info()
  local total = redis.call("ZCARD", ns .. ":tree:/")
  local out = { redis.call("HGET", ns .. ":meta", "log"), last, added, total }
  if total > tonumber(ARGV[3]) then return out end
  local ids = redis.call("ZRANGE", ns .. ":tree:/", 0, -1)
  for i = 1, #ids do out[i + 4] = ids[i] end
  return out
elseif op == "rows" then
  local out = {}
  local n = 0
  for i = 3, #ARGV do
    local row = redis.call("HMGET", ns .. ":rec:" .. ARGV[i], "embedding", "scope_anc", "cat_t", "meta_t", "src_t", "vis")
    for j = 1, 6 do out[n + j] = row[j] end
    n = n + 6
  end
  return out
elseif op == "records" or op == "page" then
  local first, ids
  if op == "page" then
    first = 6
    ids = redis.call("ZREVRANGE", ns .. ":tree:" .. ARGV[3], ARGV[4], ARGV[5])
  else
    first = 3
  end
  local nfields = tonumber(ARGV[first])
  local fields, idpos = {}, nil
  for j = 1, nfields do
    fields[j] = ARGV[first + j]
    if fields[j] == "id" then idpos = j end
  end
  if not ids then
    ids = {}
    for i = first + nfields + 1, #ARGV do ids[#ids + 1] = ARGV[i] end
  end
  -- First the namespace's vector dimension (it tells float16 from float32 bytes).
  local out, n = { redis.call("HGET", ns .. ":meta", "dim") or "" }, 1
  for _, id in ipairs(ids) do
    local row = redis.call("HMGET", ns .. ":rec:" .. id, unpack(fields))
    if idpos and not row[idpos] then
      -- the id is the key's, not a stored field: filled in for a record that exists
      for j = 1, nfields do
        if row[j] then
          row[idpos] = id
          break
        end
      end
    end
    for j = 1, nfields do out[n + j] = row[j] end
    n = n + nfields
  end
  return out
elseif op == "edges" then
  local tree, cut = ns .. ":tree:" .. ARGV[3], ns .. ":tree:" .. ARGV[4]
  if redis.call("ZCARD", tree) <= redis.call("ZCARD", cut) then return { false, false } end
  local out = {}
  for e, cmd in ipairs({ "ZRANGE", "ZREVRANGE" }) do
    local hi = first_outside(cmd, tree, cut, 0, 0)
    local member = redis.call(cmd, tree, hi, hi)[1]
    out[e] = false
    -- (a member of the cut here: the sets do not order alike, e.g. a forged score)
    if member and not redis.call("ZSCORE", cut, member) then
      out[e] = redis.call("ZSCORE", tree, member)
    end
  end
  return out
elseif op == "outside" then
  local tree, cut = ns .. ":tree:" .. ARGV[3], ns .. ":tree:" .. ARGV[4]
  local start, k, n = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
  local nfields = tonumber(ARGV[8])
  local fields = {}
  for j = 1, nfields do fields[j] = ARGV[8 + j] end
  local ids, probes = {}, 0
  while #ids < n and probes < 20000 do
    local hi, steps = first_outside("ZREVRANGE", tree, cut, start, k)
    local member = redis.call("ZREVRANGE", tree, hi, hi)[1]
    probes = probes + steps + 1
    if not member then
      start = -1
      break
    end
    start = hi + 1
    -- (in the cut: the sets do not order alike, e.g. an index entry left behind)
    if not redis.call("ZSCORE", cut, member) then
      ids[#ids + 1] = member
      k = k + 1
    end
  end
  local out, m = { redis.call("HGET", ns .. ":meta", "dim") or "", start, k }, 3
  for _, id in ipairs(ids) do
    local row = redis.call("HMGET", ns .. ":rec:" .. id, unpack(fields))
    for j = 1, nfields do out[m + j] = row[j] end
    m = m + nfields
  end
  return out
elseif op == "scan" then
  local scope = ARGV[3]
  local with_tokens = ARGV[6] == "1"
  local ids = redis.call("ZRANGE", ns .. ":tree:" .. scope, ARGV[4], ARGV[5])
  local kept, blobs, lines = {}, {}, {}
  for _, id in ipairs(ids) do
    local key = ns .. ":rec:" .. id
    if with_tokens then
      local row = redis.call("HMGET", key, "embedding", "scope_anc", "cat_t", "meta_t", "src_t", "vis")
      if row[1] then
        kept[#kept + 1] = id
        blobs[#blobs + 1] = row[1]
        lines[#lines + 1] = table.concat({ row[2] or "", row[3] or "", row[4] or "", row[5] or "", row[6] or "" }, "\t")
      end
    else
      local emb = redis.call("HGET", key, "embedding")
      if emb then
        kept[#kept + 1] = id
        blobs[#blobs + 1] = emb
      end
    end
  end
  return { table.concat(kept, "\n"), table.concat(blobs), table.concat(lines, "\n") }
end
return redis.error_reply("UNKNOWNOP " .. tostring(op))
