-- memworker store writes: a record and every side index change in one atomic step.
--
-- Key layout (ns = ARGV[2], the key prefix "{namespace}" (its hash tag); see memworker/keys.py):
--   ns:rec:<id>           hash  the record (fields: memworker/store/codec.py)
--   ns:tree:<scope>       zset  id -> created_at, for the record's scope and each ancestor
--   ns:children:<scope>   hash  immediate child scope -> number of records under it
--   ns:cats:<scope>       hash  category -> number of records under the scope carrying it
--   ns:meta               hash  dim (vector dimension), vtype (float32/float16), model, layout
--   ns:changes            stream  change log for the exact-search caches; what an entry holds,
--                                 its cap and its incarnation: see memworker/keys.py
--
-- Keys are derived here from the stored record (its old scope and categories are
-- only known server-side), so they are not declared: the store needs a
-- standalone server, as dramatiq's broker does.
--
-- Every operation reads first and writes after: an error raised while reading
-- (dimension mismatch, a missing record to update) leaves nothing written.
--
-- ARGV[1] = op, ARGV[2] = ns, ARGV[3] = the change log's cap (memworker.keys.CHANGES_CAP),
-- then per op:
--   save:   dim, vtype, n, keep_mask, records_json, embeddings, then extra commands
--             vtype: "float32" or "float16", the namespace's vector type (ns:meta "vtype",
--               set with "dim" by the first write; a write of another type is refused)
--             keep_mask: n characters: "0" the record's embedding is in `embeddings`, "1" it
--               keeps its stored embedding (none if it has none), "2" it has none (the hash
--               gets no "embedding" field: no search index or cache sees it)
--             records_json: a JSON array: the hash field names (memworker.store.codec.WRITE_FIELDS),
--               then one array per record of those fields' string values (null: not set)
--             embeddings: the vector bytes of every record not keeping its embedding,
--               concatenated in record order (dim * 4 bytes each, dim * 2 for float16)
--           (a few arguments per batch, not a few per record: the client pays per argument)
--           guard_key, guard_member: a worker's commit step: the job's pending set and job id.
--             If the job is no longer pending (a duplicate delivery of a job that committed
--             or failed) the step writes nothing: error NOTPENDING. Else the pending mark's
--             score (the job's enqueue time, ms) is the step's version: a record whose
--             "upd" stamp is later (updated after the job was enqueued) is left as it is;
--             a record that has a stamp gets the step's version as its new one.
--           or "", stamp: a direct write (save, update): a record it replaces gets
--             "upd" = stamp (ms); a new record gets none (a job's commit never writes it)
--           or "*", groups_json: many jobs' commit steps in one call (see "groups" below)
--           extra commands: argc, arg1..argc, ... (run after the records, e.g. the
--           worker's pending-mark removal and wake-up; with groups: the acks, always)
--           -> {inserted (ids that did not exist), dim_was_set (0/1),
--               {0-based indexes of the groups skipped: not pending}}
--   delete: id, id, ...                          -> number of records deleted
--   touch:  last_accessed, id, id, ...           -> number of records touched
--   reindex: id, id, ...                         -> number of records rewritten as they are
--             (a field set to its own value: a just-made search index indexes them now)
--   vdelete: id, ver, id, ver, ...               -> number of records deleted
--             a versioned delete (LangGraph's write-behind store): deletes the record
--             unless a later version is stored, and leaves a tombstone (ns:tomb, the
--             highest version) so an older versioned write still in the queue is not
--             committed after it
--   expire: id, exp, id, exp, ...                -> number of records given the new expiry
--             only records that have an expiry (written with "exp") get one
--   refresh: now_ms, id, fallback exp, ...        -> records given now_ms + their stored ttl
--            (the fallback when they have none); only records that have an expiry
--   sweep:  now_ms, limit, tomb_before, kept      -> {expired, retained, tombs trimmed (at most
--           limit), index entries scanned (stale ones included)}
--             deletes up to `limit` records whose expiry is due (ns:expiry), then records
--             older than their scope's retention (ns:retention: scope -> days), and trims
--             tombstones older than tomb_before (us). No retention applies to the records
--             of the scope `kept` and below (the LangGraph store's items, under their own
--             TTL; "" none): a policy inside it is skipped, a policy above it passes over
--             them, at most 4 x limit of them read a sweep, resuming where the last sweep
--             stopped (ns:meta "retskip:<scope>"), so many of them never stall the scope
--
-- Versioned records (a "ver" field in the row, microseconds): a save writes one only
-- if no later version is stored and no later tombstone exists; it keeps the stored
-- record's created_at. The same id twice in one call is written once: the later
-- version (without versions, the later record). A row with "exp" (ms) enters
-- ns:expiry; a rewrite without one leaves it.
--
-- Side indexes are updated per batch, not per record: the sorted-set entries of all
-- records under one scope go in one ZADD/ZREM, and the counters' net changes in one
-- HINCRBY per (key, field). The change log gets one entry per call, listing its ids.

local op = ARGV[1]
local ns = ARGV[2]
local REC = ns .. ":rec:"
local CHANGES = ns .. ":changes"
-- Entries (write calls) kept in the change log (ARGV[3]: memworker.keys.CHANGES_CAP);
-- a cache further behind reloads in full.
local CHANGES_CAP = ARGV[3]
-- Most arguments given to one command built here (Lua's unpack limit is ~8000).
local ARGS_PER_CALL = 1000

-- Log the ids of changed records (embedding or filter tokens), one entry per call,
-- in the same atomic step as the write. A new log gets a new incarnation in ns:meta
-- "log": caches of an older one reload.
local function log_changes(ids)
  if #ids == 0 then return end
  if redis.call("EXISTS", CHANGES) == 0 then
    local t = redis.call("TIME")
    redis.call("HSET", ns .. ":meta", "log", t[1] .. "." .. t[2])
  end
  redis.call("XADD", CHANGES, "MAXLEN", "~", CHANGES_CAP, "*", "i", table.concat(ids, "\n"))
end

-- The server's clock (ms), read once a call: an expiry due by it (or by the caller's
-- now) is due.
local server_ms_cache
local function server_ms()
  if not server_ms_cache then
    local t = redis.call("TIME")
    server_ms_cache = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return server_ms_cache
end

-- A stored predecessor whose expiry is due is gone to every reader: a write over it
-- is a new item (its own created_at).
local function is_due(exp)
  return exp and tonumber(exp) <= server_ms()
end

-- Records deleted by a sweep leave a tombstone at their version (LangGraph's versioned
-- items): an older put of the key still in the queue must not bring its value back.
local function tomb_versions(ids)
  for _, id in ipairs(ids) do
    local ver = redis.call("HGET", REC .. id, "ver")
    if ver then redis.call("ZADD", ns .. ":tomb", "GT", ver, id) end
  end
end

-- After deletes: an empty namespace drops its log (caches see a new incarnation).
local function drop_log_if_empty()
  if redis.call("EXISTS", ns .. ":tree:/") == 0 then
    redis.call("DEL", CHANGES)
    redis.call("HDEL", ns .. ":meta", "log")
  end
end

local function ancestors_of(scope)
  local out = { "/" }
  if scope == "/" then return out end
  local pos = 2
  while true do
    local s = string.find(scope, "/", pos, true)
    if not s then
      out[#out + 1] = scope
      return out
    end
    out[#out + 1] = string.sub(scope, 1, s - 1)
    pos = s + 1
  end
end

-- Records of a batch share a few scopes and category lists: parse each once per call.
local function memoized(fn)
  local memo = {}
  return function(key)
    local value = memo[key]
    if value == nil then
      value = fn(key)
      memo[key] = value
    end
    return value
  end
end

local ancestors = memoized(ancestors_of)

local function categories_of(json)
  if json == "" then return {} end
  local ok, list = pcall(cjson.decode, json)
  if not ok or type(list) ~= "table" then return {} end
  local seen, out = {}, {}
  for _, c in ipairs(list) do
    if type(c) == "string" and not seen[c] then
      seen[c] = true
      out[#out + 1] = c
    end
  end
  return out
end

local parsed_categories = memoized(categories_of)

local function categories(json)
  if not json then return {} end
  return parsed_categories(json)
end

-- Pending side-index changes of one call, applied (and emptied) by flush(), gathered per scope:
-- the sorted-set entries added or removed under each scope, and the net count of
-- records per (scope, categories JSON). Per record that is two table updates; the
-- fan-out to every ancestor happens once per scope in flush().
local adds, rems, nets = {}, {}, {}

local function list_of(t, key)
  local list = t[key]
  if not list then
    list = {}
    t[key] = list
  end
  return list
end

-- Add (sign 1) or remove (sign -1) a record's entries in every side index.
local function index(id, scope, cats_json, created, sign)
  if sign > 0 then
    local list = list_of(adds, scope)
    list[#list + 1] = created
    list[#list + 1] = id
  else
    local list = list_of(rems, scope)
    list[#list + 1] = id
  end
  local per = list_of(nets, scope)
  local k = cats_json or ""
  per[k] = (per[k] or 0) + sign
end

-- Run cmd key args... in calls of at most ARGS_PER_CALL arguments (step: args per entry).
local function chunked(cmd, key, args, step)
  local per = ARGS_PER_CALL - ARGS_PER_CALL % step
  for first = 1, #args, per do
    redis.call(cmd, key, unpack(args, first, math.min(first + per - 1, #args)))
  end
end

-- The entries of every scope under each ancestor key: {key -> list}. A key fed by one
-- scope reuses that scope's list; several scopes' lists are concatenated.
local function by_tree_key(by_scope)
  local out, owned = {}, {}
  for scope, list in pairs(by_scope) do
    for _, a in ipairs(ancestors(scope)) do
      local key = ns .. ":tree:" .. a
      local have = out[key]
      if not have then
        out[key] = list
      else
        if not owned[key] then -- copy before appending: that list is its scope's
          local copy = {}
          for i = 1, #have do copy[i] = have[i] end
          have = copy
          out[key] = copy
          owned[key] = true
        end
        local m = #have
        for i = 1, #list do have[m + i] = list[i] end
      end
    end
  end
  return out
end

-- Apply the pending changes: removals before additions (a re-saved record leaves its
-- old scopes and joins its new ones), counters by their net change.
local function flush()
  for key, ids in pairs(by_tree_key(rems)) do chunked("ZREM", key, ids, 1) end
  for key, pairs_ in pairs(by_tree_key(adds)) do chunked("ZADD", key, pairs_, 2) end
  local counts = {}
  local function count(key, field, by)
    local fields = list_of(counts, key)
    fields[field] = (fields[field] or 0) + by
  end
  for scope, per in pairs(nets) do
    local anc = ancestors(scope)
    for cats_json, by in pairs(per) do
      if by ~= 0 then
        local cats = categories(cats_json)
        for i, a in ipairs(anc) do
          if i > 1 then count(ns .. ":children:" .. anc[i - 1], a, by) end
          for _, c in ipairs(cats) do count(ns .. ":cats:" .. a, c, by) end
        end
      end
    end
  end
  for key, fields in pairs(counts) do
    for field, by in pairs(fields) do
      if by ~= 0 then
        local n = redis.call("HINCRBY", key, field, by)
        if n <= 0 then redis.call("HDEL", key, field) end
      end
    end
  end
  -- applied: a call that flushes again (a sweep deletes expired records, then each
  -- policy's) must not apply these once more
  adds, rems, nets = {}, {}, {}
end

-- A record's new expiry (ms), in its row and in ns:expiry (expire and refresh).
local function set_expiry(id, exp)
  redis.call("HSET", REC .. id, "exp", exp)
  redis.call("ZADD", ns .. ":expiry", exp, id)
end

-- Delete records by id with their side indexes and expiry entries; returns how many.
local function delete_ids(list)
  local olds = {}
  for i, id in ipairs(list) do
    olds[i] = redis.call("HMGET", REC .. id, "scope", "categories", "created_at", "exp")
  end
  local ids = {}
  for i, id in ipairs(list) do
    local old = olds[i]
    -- DEL's reply, not only old[1]: the same id twice in one call is deleted once.
    if old[1] and redis.call("DEL", REC .. id) == 1 then
      index(id, old[1], old[2], old[3], -1)
      if old[4] then redis.call("ZREM", ns .. ":expiry", id) end
      ids[#ids + 1] = id
    end
  end
  if #ids > 0 then
    flush()
    log_changes(ids)
    drop_log_if_empty()
  end
  return #ids
end

-- Whether `path` is the scope `root` or below it (normalized scopes).
local function under(path, root)
  return root == "/" or path == root or string.sub(path, 1, #root + 1) == root .. "/"
end

-- The oldest ids of `tree` created before `cutoff` (at most `want`) that are not in the
-- sorted set `skip` (the kept scope's tree), reading at most 4 x limit entries. The
-- skipped ids stay (they are old and may stay for ever): the count of them before the
-- ids taken is kept in ns:meta `field`, and the next sweep starts after them; it starts
-- from the oldest again once the read reaches the cutoff, so every id is reached.
-- Returns the ids and the number of entries read.
local function old_outside(tree, cutoff, want, limit, skip, field)
  local meta = ns .. ":meta"
  local pos = tonumber(redis.call("HGET", meta, field))
  -- not a count (written by hand): start from the oldest, never fail the sweep
  if pos == nil or pos < 0 or pos ~= math.floor(pos) or pos > 2147483647 then pos = 0 end
  local out, read, ended = {}, 0, false
  while #out < want and read < 4 * limit and not ended do
    local count = math.min(math.max(want - #out, 100), 4 * limit - read)
    -- the ids taken so far are still in the tree: they are before the next page
    local page = redis.call("ZRANGEBYSCORE", tree, "-inf", cutoff, "LIMIT", pos + #out, count)
    read = read + #page
    ended = #page < count
    for _, id in ipairs(page) do
      if redis.call("ZSCORE", skip, id) then
        pos = pos + 1
      elseif #out < want then
        out[#out + 1] = id
      else
        ended = false
        break
      end
    end
  end
  if ended or pos == 0 then
    redis.call("HDEL", meta, field)
  else
    redis.call("HSET", meta, field, pos)
  end
  return out, read
end

if op == "save" then
  local dim, vtype = ARGV[4], ARGV[5]
  local n = tonumber(ARGV[6])
  local mask = ARGV[7]
  local since, stamp = nil, nil
  -- Many jobs in one call (ARGV[10] == "*"): ARGV[11] is a JSON array of groups in
  -- record order, {pending_key, job_id, record_count, {command, ...}[, true]}: a
  -- trailing true stamps the job's unversioned records "upd" = its enqueue time (a job
  -- fetched with a job handed back that writes the same id). Each group is
  -- one job: its records and commands are written only while its pending mark
  -- exists, with that mark's score as their version (as for a single guard).
  local groups, group_since, skipped = nil, {}, {}
  if ARGV[10] == "*" then
    local ok, spec = pcall(cjson.decode, ARGV[11])
    if not ok or type(spec) ~= "table" then return redis.error_reply("BADFIELDS groups") end
    groups = spec
    local total = 0
    for g, group in ipairs(groups) do
      local score = redis.call("ZSCORE", group[1], group[2])
      if score then
        group_since[g] = tonumber(score)
      else
        group_since[g] = false
        skipped[#skipped + 1] = g - 1
      end
      total = total + group[3]
    end
    if total ~= n then return redis.error_reply("BADFIELDS group sizes") end
  elseif ARGV[10] ~= "" then
    since = redis.call("ZSCORE", ARGV[10], ARGV[11])
    if not since then return redis.error_reply("NOTPENDING " .. ARGV[11]) end
    since = tonumber(since)
  elseif ARGV[11] ~= "" then
    stamp = ARGV[11]
  end
  local meta = redis.call("HMGET", ns .. ":meta", "dim", "vtype")
  local stored_dim, stored_vtype = meta[1], meta[2] or "float32"
  if dim ~= "" and stored_dim and stored_dim ~= dim then
    return redis.error_reply("DIMMISMATCH " .. stored_dim .. " " .. dim)
  end
  if dim ~= "" and stored_dim and stored_vtype ~= vtype then
    return redis.error_reply("VTYPEMISMATCH " .. stored_vtype .. " " .. vtype)
  end
  local ok, list = pcall(cjson.decode, ARGV[8])
  if not ok or type(list) ~= "table" or #list ~= n + 1 or type(list[1]) ~= "table" then
    return redis.error_reply("BADFIELDS records")
  end
  local names = list[1]
  local col = {}
  for i, name in ipairs(names) do col[name] = i end
  local c_id, c_scope, c_cats, c_created = col.id, col.scope, col.categories, col.created_at
  local c_ver, c_exp = col.ver, col.exp
  local where = {}
  if not (c_id and c_scope and c_cats and c_created) then
    return redis.error_reply("BADFIELDS names")
  end
  local blob = ARGV[9]
  local width = (tonumber(dim) or 0) * (vtype == "float16" and 2 or 4)
  -- Read phase: every record and its stored predecessor.
  local recs = {}
  local offset = 1
  local g, left = 1, groups and groups[1] and groups[1][3] or 0
  for r = 1, n do
    local keep, stamped = true, false
    if groups then
      while left == 0 do g = g + 1; left = groups[g][3] end
      left = left - 1
      since = group_since[g] or nil
      keep = group_since[g] ~= false
      stamped = groups[g][5] == true
    end
    local row = list[r + 1]
    if type(row) ~= "table" or type(row[c_id]) ~= "string" or type(row[c_scope]) ~= "string" then
      return redis.error_reply("BADFIELDS " .. r)
    end
    local rec = { row = row, id = row[c_id] }
    local key = REC .. rec.id
    local old = redis.call("HMGET", key, "scope", "categories", "created_at", "upd", "ver", "exp")
    rec.old_scope, rec.old_cats, rec.old_created, rec.old_exp = old[1], old[2], old[3], old[6]
    local mode = string.byte(mask, r)
    if mode == 49 then -- "1": keep the stored embedding (or its absence)
      if not rec.old_scope then
        return redis.error_reply("NOTFOUND " .. rec.id)
      end
      rec.embedding = redis.call("HGET", key, "embedding")
    elseif mode == 50 then -- "2": no embedding
      rec.embedding = false
    else
      rec.embedding = string.sub(blob, offset, offset + width - 1)
      offset = offset + width
    end
    -- A job's commit leaves a record updated after the job was enqueued as it is.
    local take = keep and not (since and old[4] and tonumber(old[4]) > since)
    local ver = c_ver and row[c_ver]
    if take and type(ver) == "string" then
      -- A versioned write: only over an older version, and not under a later tombstone.
      rec.ver = tonumber(ver)
      if old[5] and tonumber(old[5]) > rec.ver then take = false end
      if take then
        local t = redis.call("ZSCORE", ns .. ":tomb", rec.id)
        if t and tonumber(t) > rec.ver then take = false end
      end
      if take and rec.old_created and not is_due(rec.old_exp) then row[c_created] = rec.old_created end
    end
    if take and since and not rec.ver and (stamped or old[4]) then
      -- the job's enqueue time (see "groups"); a stamp once written stays (ever later)
      rec.upd = string.format("%.0f", since)
    end
    if take then
      local at = where[rec.id]
      if not at then
        recs[#recs + 1] = rec
        where[rec.id] = #recs
      elseif not (recs[at].ver and rec.ver and recs[at].ver > rec.ver) then
        -- The same id again in this call: the later version replaces the earlier in
        -- place (both read the same stored predecessor), so it is written once.
        if rec.ver and rec.old_created and not is_due(rec.old_exp) then row[c_created] = rec.old_created end
        recs[at] = rec
      end
    end
  end
  -- Write phase.
  local dim_set = 0
  if dim ~= "" and not stored_dim then
    -- "layout" is memworker.keys.LAYOUT_VERSION
    redis.call("HSET", ns .. ":meta", "dim", dim, "vtype", vtype, "layout", "2")
    dim_set = 1
  end
  local inserted = 0
  local ids = {}
  for r, rec in ipairs(recs) do
    local key = REC .. rec.id
    if rec.old_scope then
      index(rec.id, rec.old_scope, rec.old_cats, rec.old_created, -1)
      redis.call("DEL", key)
    else
      inserted = inserted + 1
    end
    local hset, m = {}, 0
    local row = rec.row
    for i, name in ipairs(names) do
      local value = row[i]
      if type(value) == "string" and i ~= c_id then -- the id is in the key, not a field
        hset[m + 1] = name
        hset[m + 2] = value
        m = m + 2
      end
    end
    if rec.embedding then
      hset[m + 1] = "embedding"
      hset[m + 2] = rec.embedding
      m = m + 2
    end
    if stamp and rec.old_scope then
      hset[m + 1] = "upd"
      hset[m + 2] = stamp
    elseif rec.upd then
      hset[m + 1] = "upd"
      hset[m + 2] = rec.upd
    end
    redis.call("HSET", key, unpack(hset))
    index(rec.id, row[c_scope], row[c_cats], row[c_created], 1)
    ids[r] = rec.id
    local exp = c_exp and row[c_exp]
    if type(exp) == "string" then
      redis.call("ZADD", ns .. ":expiry", exp, rec.id)
    elseif rec.old_exp then
      redis.call("ZREM", ns .. ":expiry", rec.id)
    end
  end
  flush()
  log_changes(ids)
  if groups then
    for i, group in ipairs(groups) do
      if group_since[i] ~= false then
        for _, command in ipairs(group[4]) do redis.call(unpack(command)) end
      end
    end
  end
  local pos = 12
  while pos <= #ARGV do
    local argc = tonumber(ARGV[pos])
    redis.call(unpack(ARGV, pos + 1, pos + argc))
    pos = pos + argc + 1
  end
  return { inserted, dim_set, skipped }
elseif op == "delete" then
  local ids = {}
  for i = 4, #ARGV do ids[i - 3] = ARGV[i] end
  return delete_ids(ids)
elseif op == "vdelete" then
  local ids = {}
  for i = 4, #ARGV - 1, 2 do
    local id, ver = ARGV[i], ARGV[i + 1]
    local stored = redis.call("HGET", REC .. id, "ver")
    if not (stored and tonumber(stored) > tonumber(ver)) then ids[#ids + 1] = id end
    redis.call("ZADD", ns .. ":tomb", "GT", ver, id)
  end
  return delete_ids(ids)
elseif op == "expire" then
  local n = 0
  for i = 4, #ARGV - 1, 2 do
    local id, exp = ARGV[i], ARGV[i + 1]
    if redis.call("HEXISTS", REC .. id, "exp") == 1 then
      set_expiry(id, exp)
      n = n + 1
    end
  end
  return n
elseif op == "refresh" then
  -- A TTL refresh on read: the expiry from the TTL stored with the record now (a
  -- record re-put since the reader read it keeps its own), else the reader's.
  local now, n = tonumber(ARGV[4]), 0
  for i = 5, #ARGV - 1, 2 do
    local id = ARGV[i]
    local got = redis.call("HMGET", REC .. id, "exp", "ttl")
    -- Due already (by the reader's clock or the server's: the refresh may land after
    -- the expiry): the item stays expired, a refresh does not bring it back.
    if got[1] and tonumber(got[1]) > math.max(now, server_ms()) then
      set_expiry(id, got[2] and string.format("%.0f", now + tonumber(got[2])) or ARGV[i + 1])
      n = n + 1
    end
  end
  return n
elseif op == "sweep" then
  local now, limit = ARGV[4], tonumber(ARGV[5])
  local tomb_before = ARGV[6]
  if ARGV[8] == "1" and server_ms() < tonumber(now) then
    -- a worker's clock ahead of the server's: the server's, so that nothing goes
    -- before its time by either clock (a clock behind only sweeps later)
    local ahead = tonumber(now) - server_ms()
    now = string.format("%.0f", server_ms())
    tomb_before = string.format("%.0f", tonumber(tomb_before) - ahead * 1000)
  end
  local due = redis.call("ZRANGEBYSCORE", ns .. ":expiry", "-inf", now, "LIMIT", 0, limit)
  local ids = {}
  for _, id in ipairs(due) do
    local exp = redis.call("HGET", REC .. id, "exp")
    local at = exp and tonumber(exp)
    -- due by its index entry; an unreadable "exp" (corrupt) goes by the entry
    if exp and (at == nil or at <= tonumber(now)) then
      ids[#ids + 1] = id
    else
      -- No record, or a record written since without this expiry.
      if not exp then redis.call("ZREM", ns .. ":expiry", id) end
    end
  end
  tomb_versions(ids)
  local expired = delete_ids(ids)
  local retained = 0
  local policies = redis.call("HGETALL", ns .. ":retention")
  local now_s = tonumber(now) / 1000
  local scanned = #due
  local kept = ARGV[7] or ""
  for i = 1, #policies - 1, 2 do
    local left = limit - expired - retained
    if left <= 0 then break end
    local scope = policies[i]
    local days = tonumber(policies[i + 1])
    -- a policy that is not a positive number (written by hand) is skipped, not fatal;
    -- so is one inside the kept scope (refused when set)
    if days == nil or not (days > 0) or days == math.huge or (kept ~= "" and under(scope, kept)) then
      days = nil
    end
    local cutoff = days and string.format("%.6f", now_s - days * 86400)
    local tree = ns .. ":tree:" .. scope
    local old, read = {}, 0
    if days and kept ~= "" and under(kept, scope) then
      old, read = old_outside(tree, cutoff, left, limit, ns .. ":tree:" .. kept, "retskip:" .. scope)
    elseif days then
      old = redis.call("ZRANGEBYSCORE", tree, "-inf", cutoff, "LIMIT", 0, left)
      read = #old
    end
    scanned = scanned + read
    if #old > 0 then
      -- An id whose record is gone (evicted, deleted by hand) would come first again at
      -- every sweep and, as many as the limit, stall the scope: it leaves this tree.
      local gone = {}
      for _, id in ipairs(old) do
        if redis.call("EXISTS", REC .. id) == 0 then gone[#gone + 1] = id end
      end
      if #gone > 0 then redis.call("ZREM", tree, unpack(gone)) end
      tomb_versions(old)
      retained = retained + delete_ids(old)
    end
  end
  -- tombstones past their week, at most limit a step (a week after a big delete)
  local stale = redis.call("ZRANGEBYSCORE", ns .. ":tomb", "-inf", "(" .. tomb_before, "LIMIT", 0, limit)
  if #stale > 0 then redis.call("ZREM", ns .. ":tomb", unpack(stale)) end
  return { expired, retained, #stale, scanned }
elseif op == "touch" then
  local now = ARGV[4]
  local touched = 0
  for i = 5, #ARGV do
    local key = REC .. ARGV[i]
    if redis.call("EXISTS", key) == 1 then
      redis.call("HSET", key, "last_accessed", now)
      touched = touched + 1
    end
  end
  return touched
elseif op == "reindex" then
  -- Rewrite one field of each existing record to its own value: a search module whose
  -- index was just (re)created indexes the record at once, as it is now (a record
  -- updated or deleted since a commit is left so: nothing is written back).
  local done = 0
  for i = 4, #ARGV do
    local key = REC .. ARGV[i]
    local scope = redis.call("HGET", key, "scope")
    if scope then
      redis.call("HSET", key, "scope", scope)
      done = done + 1
    end
  end
  return done
end
return redis.error_reply("UNKNOWNOP " .. tostring(op))
