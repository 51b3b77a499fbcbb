-- memworker's producer script: the enqueue of one job (or of several), in one atomic step.
--
-- The five writes of an enqueue (memworker/queue/producer.py; key layout in
-- memworker/keys.py): dramatiq's own two (the message in <q>.msgs, its id on <q>),
-- the wake-up token for idle consumers, the producer's pending mark and the producer's
-- entry in the producers set. One script call instead of a MULTI/EXEC of the same five
-- commands: the client sends one command and reads one reply, not seven (redis-py's
-- packing and parsing of those was the largest part of an enqueue's CPU).
--
-- Every key shares the namespace's hash tag with KEYS[1] ({ns}:meta, declared so a
-- Valkey Cluster routes the call to the namespace's shard); the producer builds them.
--
-- ARGV[1] = op, then per op:
--   enqueue: msgs, queue, wake, pending, producers, producer id, then for each job
--            (one or more): message id, message, now (ms), job id
--            -> the number of jobs
--
--   prune:   producers, then for each candidate: producer id, its pending zset, its
--            failed hash -> the number of producers removed from the set
--
--   claim:   now (ms), oldest tombstone kept (ms), tombstone TTL (ms), the claim's own
--            key (or ""), then for each producer: its failed hash, committed zset,
--            reported zset, requeued zset, n, and n pairs (kind, job id) (each id
--            leaves the requeued zset) -> one 0/1 a pair: 1 when
--            this call claimed the report. The answer is kept under the claim's key
--            (60 s): the same claim sent again (a retry after a lost reply) gets it
--            back instead of finding its reports consumed, by itself.
--
-- claim is the end of a drain (memworker/queue/drain.py): the drain read, in one MULTI,
-- what it will report; this step consumes it and says which reports are its own. Two
-- drains of one producer that read the same failure or commit at once both reach here;
-- the first claims it, the second reports nothing of it. Kinds:
--   f  a failure record: HDEL it; if it was there (claimed), drop any marker, tombstone
--   c  a commit marker: tombstone (claimed if no tombstone was there), drop the marker
--   l  lost (no mark at all): tombstone (claimed if no tombstone was there)
--   m  a marker of a job already reported: drop it (never claimed)
--
--   requeue: dead zset, dead msgs hash, msgs hash, queue, wake list, message id,
--            message, then (when the job can be read) its pending zset, producers set,
--            failed hash, reported zset, committed zset, deliveries hash, producer id,
--            job id, now (ms), delivery field, requeued zset, its ttl (ms) -> 1 when
--            this call moved it, else 0
--
--   memory:  (nothing) -> INFO memory of the namespace's server (its maxmemory and
--            maxmemory-policy: memworker/queue/admin.py eviction_plan; a script, so
--            a Valkey Cluster answers from the namespace's shard)
--
-- requeue is `memworker dead requeue` (memworker/queue/admin.py): the dead letter back
-- on the queue, with its job's pending mark restored and its reports cleared, only if
-- it is still a dead letter (ZREM); the job is listed in the producer's requeued set,
-- so the producer's next drain reports it even when it committed before that drain
-- (a claim removes it; the set expires with the markers). Two requeues of one dead letter at once, each having
-- read it, queued it twice (two deliveries) when this was a MULTI.
--
-- prune is the workers' sweep (memworker/worker/sweep.py): a producer with nothing
-- pending and no unreported failure leaves the producers set (read, one command per
-- producer, by every status, drain_all and metrics scrape). Atomic with enqueue (which
-- adds it back in the same step as its pending mark) and with a failure (which moves a
-- job from pending to failed in one MULTI), so a producer with work is never dropped.
--
-- Several jobs in one call are the enqueues of concurrent callers of one producer
-- (memworker/queue/group.py): each is its own job (message, id on the queue, wake-up
-- token, pending mark), sent together to save round trips; the call is atomic, so
-- they are queued together or not at all.

local op = ARGV[1]

if op == "enqueue" then
  local msgs, queue, wake, pending, producers, producer = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
  local n = (#ARGV - 7) / 4
  if n < 1 or n ~= math.floor(n) then
    return redis.error_reply("BADARGS enqueue takes 4 arguments a job")
  end
  local fields, ids, tokens, marks = {}, {}, {}, {}
  for j = 0, n - 1 do
    local b = 8 + 4 * j
    fields[2 * j + 1] = ARGV[b]
    fields[2 * j + 2] = ARGV[b + 1]
    ids[j + 1] = ARGV[b]
    tokens[j + 1] = "1"
    marks[2 * j + 1] = ARGV[b + 2]
    marks[2 * j + 2] = ARGV[b + 3]
  end
  redis.call("HSET", msgs, unpack(fields))
  redis.call("RPUSH", queue, unpack(ids))
  redis.call("RPUSH", wake, unpack(tokens))
  redis.call("ZADD", pending, unpack(marks))
  redis.call("SADD", producers, producer)
  return n
end

if op == "prune" then
  local producers = ARGV[2]
  local n = (#ARGV - 2) / 3
  if n ~= math.floor(n) then
    return redis.error_reply("BADARGS prune takes 3 arguments a producer")
  end
  local removed = 0
  for j = 0, n - 1 do
    local b = 3 + 3 * j
    if redis.call("ZCARD", ARGV[b + 1]) == 0 and redis.call("EXISTS", ARGV[b + 2]) == 0 then
      removed = removed + redis.call("SREM", producers, ARGV[b])
    end
  end
  return removed
end

if op == "requeue" then
  local dead, dead_msgs, msgs, queue, wake, mid, data = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
  if #ARGV ~= 8 and #ARGV ~= 20 then
    return redis.error_reply("BADARGS requeue takes 7 or 19 arguments")
  end
  if redis.call("ZREM", dead, mid) == 0 then
    return 0
  end
  redis.call("HDEL", dead_msgs, mid)
  redis.call("HSET", msgs, mid, data)
  redis.call("RPUSH", queue, mid)
  redis.call("RPUSH", wake, "1")
  if #ARGV == 20 then
    local pending, producers, failed, reported, committed, deliveries = ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[13], ARGV[14]
    local producer, job, now, delivery, requeued, ttl = ARGV[15], ARGV[16], ARGV[17], ARGV[18], ARGV[19], ARGV[20]
    redis.call("ZADD", pending, now, job)
    redis.call("ZADD", requeued, now, job)
    redis.call("ZREMRANGEBYSCORE", requeued, "-inf", tonumber(now) - tonumber(ttl))
    redis.call("PEXPIRE", requeued, ttl)
    redis.call("SADD", producers, producer)  -- the sweep may have forgotten it
    redis.call("HDEL", failed, job)
    redis.call("ZREM", reported, job)
    redis.call("ZREM", committed, job)
    redis.call("HDEL", deliveries, delivery)
  end
  return 1
end

if op == "claim" then
  local now, oldest, ttl, own = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
  if own ~= "" then
    local before = redis.call("GET", own)
    if before then return cjson.decode(before) end
  end
  local out, b = {}, 6
  while b <= #ARGV do
    local failed, committed, reported, requeued = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
    local n = tonumber(ARGV[b + 4])
    if n == nil or b + 4 + 2 * n > #ARGV then
      return redis.error_reply("BADARGS claim takes failed, committed, reported, requeued, n and n pairs")
    end
    for j = 0, n - 1 do
      local kind, id = ARGV[b + 5 + 2 * j], ARGV[b + 6 + 2 * j]
      local mine = 0
      if kind == "f" then
        mine = redis.call("HDEL", failed, id)
        -- 0: another drain claimed it, or a requeue (after this drain's read) cleared
        -- it and runs the job again: its tombstone and requeued entry are not ours
        if mine == 1 then
          redis.call("ZREM", committed, id)
          redis.call("ZADD", reported, now, id)
          redis.call("ZREM", requeued, id)
        end
      elseif kind == "c" or kind == "l" then
        mine = redis.call("ZADD", reported, "NX", now, id)
        redis.call("ZREM", committed, id)
        redis.call("ZREM", requeued, id)
      elseif kind == "m" then
        redis.call("ZREM", committed, id)
        redis.call("ZREM", requeued, id)
      else
        return redis.error_reply("BADARGS claim kind " .. tostring(kind))
      end
      out[#out + 1] = mine
    end
    redis.call("ZREMRANGEBYSCORE", reported, "-inf", oldest)
    redis.call("PEXPIRE", reported, ttl)
    b = b + 5 + 2 * n
  end
  if own ~= "" then redis.call("SET", own, cjson.encode(out), "PX", 60000) end
  return out
end

if op == "memory" then
  return redis.call("INFO", "memory")
end

return redis.error_reply("UNKNOWNOP " .. tostring(op))
