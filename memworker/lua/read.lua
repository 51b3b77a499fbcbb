-- memworker store bulk reads for the exact search path (no search module).
--
-- Key layout (ns = ARGV[1]; see memworker/keys.py):
--   ns:tree:<scope>  zset  ids under a scope, scored by created_at
--   ns:rec:<id>      hash  a record; fields read: embedding, and the filter tokens
--                          scope_anc, cat_t, meta_t, src_t, vis
--
-- Returns a slice of a scope's records in three bulk strings instead of one reply
-- element per field: the client pays per element, not per byte.
--
-- ARGV[1] = ns, ARGV[2] = scope, ARGV[3] = start, ARGV[4] = stop (ZRANGE ranks),
-- ARGV[5] = "1" to include token fields
-- -> { ids joined by "\n", embeddings concatenated (records without one skipped),
--      token lines joined by "\n" (fields joined by "\t"), or "" }

local ns, scope = ARGV[1], ARGV[2]
local with_tokens = ARGV[5] == "1"
local ids = redis.call("ZRANGE", ns .. ":tree:" .. scope, ARGV[3], ARGV[4])
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
