package coord

import "github.com/redis/go-redis/v9"

// Lua helpers shared by several scripts; each script that uses them lists
// the keys they need at the same KEYS positions (see each script).
const (
	// slotSource extracts the host of a slot "host#n".
	luaSlotSource = `
local function slotSource(slot)
  return string.match(slot, '^(.*)#%d+$')
end
`
	// offer adds host#0..uploads-1 to the sync set, skipping slots that are
	// claimed right now (so capacity is never doubled).
	// KEYS[3] sync, KEYS[2] claims.
	luaOffer = `
local function offer(host, uploads)
  if uploads <= 0 then return end
  local held = {}
  for _, v in ipairs(redis.call('HVALS', KEYS[2])) do
    local s = string.match(v, '^%S+ (%S+)')
    if s then held[s] = true end
  end
  for i = 0, uploads - 1 do
    local slot = host .. '#' .. i
    if not held[slot] then redis.call('SADD', KEYS[3], slot) end
  end
end
`
	// release ends host's claim on slot for gen. When the lease or the
	// claims record still matches, the lease and record are deleted and,
	// with giveBack, the slot returns if gen is current and its source is
	// not bad. A claim already reaped returns nothing (the reaper did).
	// KEYS[1] lease, KEYS[2] claims, KEYS[3] sync, KEYS[4] bad,
	// KEYS[5] generation.
	luaRelease = `
local function release(host, gen, slot, giveBack)
  if slot == '' then return end
  local want = gen .. ' ' .. slot
  local held = redis.call('GET', KEYS[1]) == want
  if not held then
    local c = redis.call('HGET', KEYS[2], host)
    held = c and string.sub(c, 1, #want + 1) == want .. ' '
  end
  if not held then return end
  redis.call('DEL', KEYS[1])
  redis.call('HDEL', KEYS[2], host)
  local src = slotSource(slot)
  if giveBack and src and redis.call('HGET', KEYS[5], 'id') == gen
     and redis.call('SISMEMBER', KEYS[4], src) == 0 then
    redis.call('SADD', KEYS[3], slot)
  end
end
`
	luaEvent = `
local function event(stream, maxlen, typ, host, gen, slot, msg)
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*',
    'type', typ, 'host', host, 'gen', gen, 'slot', slot, 'msg', msg)
end
`
)

// publishScript starts a generation.
// KEYS: generation, sync, running, finished, claims, failures, bad, lookup, events, progress
// ARGV: path, delete, digest, state, error, origin, origin_addr, published_ms,
// files, bytes, uploads, maxlen
var publishScript = redis.NewScript(luaEvent + `
local id = redis.call('HINCRBY', KEYS[1], 'id', 1)
redis.call('HSET', KEYS[1], 'path', ARGV[1], 'delete', ARGV[2], 'digest', ARGV[3],
  'state', ARGV[4], 'error', ARGV[5], 'origin', ARGV[6], 'origin_addr', ARGV[7],
  'published', ARGV[8], 'files', ARGV[9], 'bytes', ARGV[10], 'done_at', '0')
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[10])
for i = 0, tonumber(ARGV[11]) - 1 do
  redis.call('SADD', KEYS[2], ARGV[6] .. '#' .. i)
end
local typ = 'published'
if ARGV[4] == 'failed' then typ = 'fail' end
event(KEYS[9], ARGV[12], typ, ARGV[6], id, '', ARGV[1] .. ' ' .. ARGV[5])
return id
`)

// claimScript takes a free slot for host. Slots of sources that hold the
// whole generation (finished hosts and the origin) are preferred; a slot of
// a partial source (a host still pulling, pipelining) is taken only if that
// source does not pull, directly or through others, from host: data never
// flows in a cycle.
// KEYS: generation, finished, lease, sync, bad, running, claims, hosts, events
// ARGV: host, gen, lease_ms, rand, now_ms, maxlen
var claimScript = redis.NewScript(luaSlotSource + luaEvent + `
local g = redis.call('HMGET', KEYS[1], 'id', 'state', 'origin', 'origin_addr')
if g[1] ~= ARGV[2] or g[2] == 'failed' then return {'stale'} end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return {'finished'} end
if redis.call('EXISTS', KEYS[3]) == 1 then return {'busy'} end
local function whole(src)
  return src == g[3] or redis.call('SISMEMBER', KEYS[2], src) == 1
end
-- upstream returns the source host pulls from for this generation, if any.
local function upstream(h)
  local c = redis.call('HGET', KEYS[7], h)
  if not c then return nil end
  local gen, slot = string.match(c, '^(%S+) (%S+)')
  if gen ~= ARGV[2] then return nil end
  return slotSource(slot)
end
local function downstream(src)
  local h, steps = src, 0
  while h and steps < 100000 do
    if h == ARGV[1] then return true end
    if whole(h) then return false end
    h = upstream(h)
    steps = steps + 1
  end
  return h ~= nil
end
local full, partial = {}, {}
for _, m in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  local src = slotSource(m)
  if src and src ~= ARGV[1] and redis.call('SISMEMBER', KEYS[5], src) == 0 then
    if whole(src) then table.insert(full, m) else table.insert(partial, m) end
  end
end
local slot
local r = tonumber(ARGV[4])
if #full > 0 then
  table.sort(full)
  slot = full[(r % #full) + 1]
else
  table.sort(partial)
  for i = 0, #partial - 1 do
    local m = partial[((r + i) % #partial) + 1]
    if not downstream(slotSource(m)) then slot = m break end
  end
end
if not slot then return {'nosource'} end
local src = slotSource(slot)
redis.call('SREM', KEYS[4], slot)
redis.call('SADD', KEYS[6], ARGV[1])
redis.call('SET', KEYS[3], ARGV[2] .. ' ' .. slot, 'PX', ARGV[3])
redis.call('HSET', KEYS[7], ARGV[1], ARGV[2] .. ' ' .. slot .. ' ' .. ARGV[5])
event(KEYS[9], ARGV[6], 'claim', ARGV[1], ARGV[2], slot, '')
local addr = ''
if src == g[3] and g[4] then addr = g[4] end
if addr == '' then
  local info = redis.call('HGET', KEYS[8], src)
  if info then
    local ok, h = pcall(cjson.decode, info)
    if ok and type(h) == 'table' and type(h.addr) == 'string' then addr = h.addr end
  end
end
local kind = 'partial'
if whole(src) then kind = 'whole' end
return {'ok', slot, addr, kind}
`)

// renewScript extends a lease that is still ours.
// KEYS: lease. ARGV: value, lease_ms
var renewScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
`)

// finishScript releases a claim and records host as finished and a source.
// KEYS: lease, claims, sync, bad, generation, running, finished, failures, events
// ARGV: host, gen, slot, uploads, maxlen
var finishScript = redis.NewScript(luaSlotSource + luaOffer + luaRelease + luaEvent + `
release(ARGV[1], ARGV[2], ARGV[3], true)
if redis.call('HGET', KEYS[5], 'id') ~= ARGV[2] then return 0 end
redis.call('SREM', KEYS[6], ARGV[1])
redis.call('SADD', KEYS[7], ARGV[1])
if redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 0 then
  offer(ARGV[1], tonumber(ARGV[4]))
end
redis.call('HDEL', KEYS[8], ARGV[1])
event(KEYS[9], ARGV[5], 'finish', ARGV[1], ARGV[2], ARGV[3], '')
return 1
`)

// failScript releases a claim after a failed pull, per the verdict on the
// source (0 ok: slot returns; 1 dead: slot dropped; 2 bad: all its slots
// dropped and the source barred for the generation). Unless the host goes
// on pulling from another source (switch = 1), its own slots, offered while
// it pulled, are withdrawn if it does not hold the generation.
// KEYS: lease, claims, sync, bad, generation, running, finished, failures, events
// ARGV: host, gen, slot, verdict, failure_json, maxlen, reason, switch
var failScript = redis.NewScript(luaSlotSource + luaRelease + luaEvent + `
local src = slotSource(ARGV[3]) or ''
local verdict = tonumber(ARGV[4])
release(ARGV[1], ARGV[2], ARGV[3], verdict == 0)
if verdict == 2 and src ~= '' and redis.call('HGET', KEYS[5], 'id') == ARGV[2] then
  redis.call('SADD', KEYS[4], src)
  for _, m in ipairs(redis.call('SMEMBERS', KEYS[3])) do
    if slotSource(m) == src then redis.call('SREM', KEYS[3], m) end
  end
  event(KEYS[9], ARGV[6], 'bad_source', src, ARGV[2], ARGV[3], ARGV[7])
end
if ARGV[8] ~= '1' and redis.call('SISMEMBER', KEYS[7], ARGV[1]) == 0 then
  for _, m in ipairs(redis.call('SMEMBERS', KEYS[3])) do
    if slotSource(m) == ARGV[1] then redis.call('SREM', KEYS[3], m) end
  end
end
redis.call('SREM', KEYS[6], ARGV[1])
redis.call('HSET', KEYS[8], ARGV[1], ARGV[5])
local typ = 'fail'
if ARGV[8] == '1' then typ = 'switch' end
event(KEYS[9], ARGV[6], typ, ARGV[1], ARGV[2], ARGV[3], ARGV[7])
return 1
`)

// reapScript returns the slots of expired leases and withdraws the slots
// of hosts whose heartbeat is too old.
// KEYS: claims, running, sync, bad, generation, heartbeats, events
// ARGV: prefix, now_ms, grace_ms, maxlen
var reapScript = redis.NewScript(luaSlotSource + luaEvent + `
local cur = redis.call('HMGET', KEYS[5], 'id', 'origin')
local cutoff = tonumber(ARGV[2]) - tonumber(ARGV[3])
local function alive(host)
  if host == cur[2] then return true end
  local s = redis.call('ZSCORE', KEYS[6], host)
  return s and tonumber(s) >= cutoff
end
local n = 0
local claims = redis.call('HGETALL', KEYS[1])
for i = 1, #claims, 2 do
  local host, val = claims[i], claims[i + 1]
  if redis.call('EXISTS', ARGV[1] .. 'lease:' .. host) == 0 then
    n = n + 1
    redis.call('HDEL', KEYS[1], host)
    redis.call('SREM', KEYS[2], host)
    local gen, slot = string.match(val, '^(%S+) (%S+)')
    local src = slot and slotSource(slot)
    if gen == cur[1] and src and redis.call('SISMEMBER', KEYS[4], src) == 0 and alive(src) then
      redis.call('SADD', KEYS[3], slot)
    end
    event(KEYS[7], ARGV[4], 'lease_expired', host, gen or '', slot or '', '')
  end
end
for _, m in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local src = slotSource(m)
  if src and not alive(src) then redis.call('SREM', KEYS[3], m) end
end
return n
`)

// markDoneScript moves a running generation to done.
// KEYS: generation, events. ARGV: gen, now_ms, maxlen
var markDoneScript = redis.NewScript(luaEvent + `
local g = redis.call('HMGET', KEYS[1], 'id', 'state')
if g[1] ~= ARGV[1] or g[2] ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'done', 'done_at', ARGV[2])
event(KEYS[2], ARGV[3], 'done', '', ARGV[1], '', '')
return 1
`)

// offerScript offers host's slots for gen.
// KEYS: generation, claims, sync, bad. ARGV: host, gen, uploads
var offerScript = redis.NewScript(luaOffer + `
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[2] then return 0 end
if redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 1 then return 0 end
offer(ARGV[1], tonumber(ARGV[3]))
return 1
`)

// forgetScript removes a host from the registry and every set.
// KEYS: hosts, heartbeats, finished, running, sync, claims, lease
// ARGV: host
var forgetScript = redis.NewScript(luaSlotSource + `
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[1])
for _, m in ipairs(redis.call('SMEMBERS', KEYS[5])) do
  if slotSource(m) == ARGV[1] then redis.call('SREM', KEYS[5], m) end
end
redis.call('HDEL', KEYS[6], ARGV[1])
redis.call('DEL', KEYS[7])
return 1
`)
