-- memworker consolidation locks: hierarchical lease locks over scopes.
--
-- Key layout (ns = namespace, <scope> canonical: "/" or "/a/b"):
--   ns:lock:consolidate:<scope>  string  token of the holder of the lock on <scope>;
--                                        PX = the lease
--   ns:lock:under:<scope>        zset    <token><locked scope> -> lease expiry (server
--                                        TIME, ms): one entry per lock held on a strict
--                                        descendant of <scope>; entries past their expiry
--                                        are pruned before use; the key expires with its
--                                        latest entry (PEXPIREAT), so a crashed holder's
--                                        bookkeeping ends with its lease
--
-- A lock on S is free when no lock is held on S or on any ancestor of S ("/"
-- included) and none on any descendant of S (ns:lock:under:S is empty).
--
-- KEYS, for S with ancestors "/" = A1, ..., An = S (n = #KEYS / 2):
--   KEYS[1..n]     ns:lock:consolidate:<Ai>
--   KEYS[n+1..2n]  ns:lock:under:<Ai>
-- ARGV[1] = op, ARGV[2] = token (32 hex digits), ARGV[3] = lease (ms), ARGV[4] = S
--   acquire -> 1, or the scope whose lock blocks S (S, an ancestor or a descendant)
--   renew   -> 1, or 0 when the lock on S is no longer this token's (its lease ran out)
--   release -> 1: this token's entries removed, the lock deleted if still this token's

local n = #KEYS / 2
local op, token, lease = ARGV[1], ARGV[2], tonumber(ARGV[3])
local member = token .. ARGV[4]
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = "(" .. string.format("%d", now)

-- Enter (or refresh) the lock in each strict ancestor's set, pruning expired entries;
-- each set lives as long as its latest entry.
local function mark()
  local expiry = string.format("%d", now + lease)
  for i = n + 1, 2 * n - 1 do
    redis.call("ZREMRANGEBYSCORE", KEYS[i], "-inf", live)
    redis.call("ZADD", KEYS[i], expiry, member)
    local last = redis.call("ZRANGE", KEYS[i], -1, -1, "WITHSCORES")
    redis.call("PEXPIREAT", KEYS[i], string.format("%d", tonumber(last[2])))
  end
end

if op == "acquire" then
  for i = 1, n do
    if redis.call("EXISTS", KEYS[i]) == 1 then
      return string.sub(KEYS[i], #KEYS[1])  -- the scope: what follows the key prefix
    end
  end
  redis.call("ZREMRANGEBYSCORE", KEYS[2 * n], "-inf", live)
  local nested = redis.call("ZRANGE", KEYS[2 * n], 0, 0)
  if #nested > 0 then
    return string.sub(nested[1], 33)  -- the member without its token
  end
  redis.call("SET", KEYS[n], token, "PX", lease)
  mark()
  return 1
elseif op == "renew" then
  if redis.call("GET", KEYS[n]) ~= token then
    return 0
  end
  redis.call("PEXPIRE", KEYS[n], lease)
  mark()
  return 1
elseif op == "release" then
  for i = n + 1, 2 * n - 1 do
    redis.call("ZREM", KEYS[i], member)
  end
  if redis.call("GET", KEYS[n]) == token then
    redis.call("DEL", KEYS[n])
  end
  return 1
end
return redis.error_reply("memworker lock script: unknown op " .. tostring(op))
