-- memworker store writes: a record and every side index change in one atomic step.
--
-- Key layout (ns = ARGV[2]; see memworker/keys.py):
--   ns:rec:<id>           hash  the record (fields: memworker/codec.py)
--   ns:tree:<scope>       zset  id -> created_at, for the record's scope and each ancestor
--   ns:children:<scope>   hash  immediate child scope -> number of records under it
--   ns:cats:<scope>       hash  category -> number of records under the scope carrying it
--   ns:meta               hash  dim (vector dimension), model, layout
--   ns:changes            stream  change log for the exact-search caches (memworker/vectors.py):
--                                 one entry {i = id} per record saved or deleted, MAXLEN ~ CHANGES_CAP;
--                                 deleted when the namespace becomes empty; ns:meta "log" names its
--                                 incarnation (server TIME when it was created)
--
-- Keys are derived here from the stored record (its old scope and categories are
-- only known server-side), so they are not declared: the store needs a
-- standalone server, as dramatiq's broker does.
--
-- Every operation reads first and writes after: an error raised while reading
-- (dimension mismatch, a missing record to update) leaves nothing written.
--
-- ARGV[1] = op, ARGV[2] = ns, then per op:
--   save:   dim, n, then n records of 7 arguments:
--             id, scope, created_at, categories_json, keep_embedding ("0"/"1"),
--             fields_json (an object of every text field -> string value),
--             embedding (float32 bytes; "" when keep_embedding is "1")
--           (one JSON argument instead of a pair per field: the client pays per argument)
--           then extra commands: argc, arg1..argc, ... (run after the records, e.g. the
--           worker's pending-mark removal and wake-up)
--           -> {inserted (ids that did not exist), dim_was_set (0/1)}
--   delete: id, id, ...                          -> number of records deleted
--   touch:  last_accessed, id, id, ...           -> number of records touched

local op = ARGV[1]
local ns = ARGV[2]
local REC = ns .. ":rec:"
local CHANGES = ns .. ":changes"
-- Entries kept in the change log; a cache further behind reloads in full.
local CHANGES_CAP = "100000"

-- Log a change of a record's embedding or filter tokens (same atomic step as the write).
-- A new log gets a new incarnation in ns:meta "log": caches of an older one reload.
local function changed(id)
  if redis.call("EXISTS", CHANGES) == 0 then
    local t = redis.call("TIME")
    redis.call("HSET", ns .. ":meta", "log", t[1] .. "." .. t[2])
  end
  redis.call("XADD", CHANGES, "MAXLEN", "~", CHANGES_CAP, "*", "i", id)
end

-- After deletes: an empty namespace drops its log (caches see a new incarnation).
local function drop_log_if_empty()
  if redis.call("EXISTS", ns .. ":tree:/") == 0 then
    redis.call("DEL", CHANGES)
    redis.call("HDEL", ns .. ":meta", "log")
  end
end

local function ancestors(scope)
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

local function categories(json)
  if not json or json == "" then return {} end
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

local function bump(key, field, by)
  local n = redis.call("HINCRBY", key, field, by)
  if n <= 0 then redis.call("HDEL", key, field) end
end

-- Add (sign 1) or remove (sign -1) a record's entries in every side index.
local function index(id, scope, cats_json, created, sign)
  local anc = ancestors(scope)
  local cats = categories(cats_json)
  for i, a in ipairs(anc) do
    if sign > 0 then
      redis.call("ZADD", ns .. ":tree:" .. a, created, id)
    else
      redis.call("ZREM", ns .. ":tree:" .. a, id)
    end
    if i > 1 then bump(ns .. ":children:" .. anc[i - 1], a, sign) end
    for _, c in ipairs(cats) do bump(ns .. ":cats:" .. a, c, sign) end
  end
end

if op == "save" then
  local dim = ARGV[3]
  local n = tonumber(ARGV[4])
  local stored_dim = redis.call("HGET", ns .. ":meta", "dim")
  if dim ~= "" and stored_dim and stored_dim ~= dim then
    return redis.error_reply("DIMMISMATCH " .. stored_dim .. " " .. dim)
  end
  -- Read phase: parse every record and its stored predecessor.
  local recs = {}
  local pos = 5
  for r = 1, n do
    local rec = {
      id = ARGV[pos], scope = ARGV[pos + 1], created = ARGV[pos + 2],
      cats = ARGV[pos + 3], keep = ARGV[pos + 4] == "1", embedding = ARGV[pos + 6],
    }
    local ok, fields = pcall(cjson.decode, ARGV[pos + 5])
    if not ok or type(fields) ~= "table" then
      return redis.error_reply("BADFIELDS " .. rec.id)
    end
    local hset = {}
    for name, value in pairs(fields) do
      hset[#hset + 1] = name
      hset[#hset + 1] = value
    end
    rec.hset = hset
    pos = pos + 7
    local key = REC .. rec.id
    local old = redis.call("HMGET", key, "scope", "categories", "created_at")
    rec.old_scope, rec.old_cats, rec.old_created = old[1], old[2], old[3]
    if rec.keep then
      rec.embedding = redis.call("HGET", key, "embedding")
      if not rec.embedding then
        return redis.error_reply("NOTFOUND " .. rec.id)
      end
    end
    recs[r] = rec
  end
  -- Write phase.
  local dim_set = 0
  if dim ~= "" and not stored_dim then
    -- "layout" is memworker.keys.LAYOUT_VERSION
    redis.call("HSET", ns .. ":meta", "dim", dim, "layout", "1")
    dim_set = 1
  end
  local inserted = 0
  for _, rec in ipairs(recs) do
    local key = REC .. rec.id
    if rec.old_scope then
      index(rec.id, rec.old_scope, rec.old_cats, rec.old_created, -1)
      redis.call("DEL", key)
    else
      inserted = inserted + 1
    end
    local hset = rec.hset
    hset[#hset + 1] = "embedding"
    hset[#hset + 1] = rec.embedding
    redis.call("HSET", key, unpack(hset))
    index(rec.id, rec.scope, rec.cats, rec.created, 1)
    changed(rec.id)
  end
  while pos <= #ARGV do
    local argc = tonumber(ARGV[pos])
    redis.call(unpack(ARGV, pos + 1, pos + argc))
    pos = pos + argc + 1
  end
  return { inserted, dim_set }
elseif op == "delete" then
  local olds = {}
  for i = 3, #ARGV do
    local old = redis.call("HMGET", REC .. ARGV[i], "scope", "categories", "created_at")
    olds[#olds + 1] = old
  end
  local deleted = 0
  for i = 3, #ARGV do
    local old = olds[i - 2]
    if old[1] and redis.call("EXISTS", REC .. ARGV[i]) == 1 then
      index(ARGV[i], old[1], old[2], old[3], -1)
      redis.call("DEL", REC .. ARGV[i])
      changed(ARGV[i])
      deleted = deleted + 1
    end
  end
  if deleted > 0 then drop_log_if_empty() end
  return deleted
elseif op == "touch" then
  local now = ARGV[3]
  local touched = 0
  for i = 4, #ARGV do
    local key = REC .. ARGV[i]
    if redis.call("EXISTS", key) == 1 then
      redis.call("HSET", key, "last_accessed", now)
      touched = touched + 1
    end
  end
  return touched
end
return redis.error_reply("UNKNOWNOP " .. tostring(op))
