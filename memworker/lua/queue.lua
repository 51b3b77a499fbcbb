-- memworker's producer script: one job's enqueue, in one atomic step.
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
--   enqueue: msgs, queue, wake, pending, producers, message id, message, now (ms),
--            job id, producer id
--            -> 1

local op = ARGV[1]

if op == "enqueue" then
  local msgs, queue, wake, pending, producers = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
  local message_id, message, now, job_id, producer = ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11]
  redis.call("HSET", msgs, message_id, message)
  redis.call("RPUSH", queue, message_id)
  redis.call("RPUSH", wake, "1")
  redis.call("ZADD", pending, now, job_id)
  redis.call("SADD", producers, producer)
  return 1
end

return redis.error_reply("UNKNOWNOP " .. tostring(op))
