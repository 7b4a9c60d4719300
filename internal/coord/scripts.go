package coord

import (
	"context"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"
)

// script is a Lua script whose keys are named: it starts with a table K
// mapping each name to its KEYS entry (K.sync, K.claims, ...), so the
// helpers below and the script body refer to keys by name, never by
// position, and the Go side passes them in the declared order.
type script struct {
	keys []string
	lua  *redis.Script
}

// newScript declares a script over the named keys (see Keys.named).
func newScript(keys []string, body string) *script {
	var b strings.Builder
	// Redis 5 and 6 need this before writes that follow TIME; on 7 it is
	// a no-op.
	b.WriteString("redis.replicate_commands()\nlocal K = {")
	for i, k := range keys {
		fmt.Fprintf(&b, "%s = KEYS[%d], ", k, i+1)
	}
	b.WriteString("}\n")
	b.WriteString(luaHelpers)
	b.WriteString(body)
	return &script{keys: keys, lua: redis.NewScript(b.String())}
}

// run runs s for host (whose lease key is "lease") with args.
func (c *Client) run(ctx context.Context, s *script, host string, args ...any) *redis.Cmd {
	keys := make([]string, len(s.keys))
	for i, name := range s.keys {
		keys[i] = c.keys.named(name, host)
	}
	return s.lua.Run(ctx, c.rdb, keys, args...)
}

// named maps a script key name to the key; lease is host's lease.
func (k Keys) named(name, host string) string {
	switch name {
	case "lease":
		return k.Lease(host)
	case "generation":
		return k.Generation()
	case "sync":
		return k.Sync()
	case "running":
		return k.Running()
	case "finished":
		return k.Finished()
	case "claims":
		return k.Claims()
	case "hosts":
		return k.Hosts()
	case "heartbeats":
		return k.Heartbeats()
	case "failures":
		return k.Failures()
	case "bad":
		return k.BadSources()
	case "events":
		return k.Events()
	case "progress":
		return k.Progress()
	case "lookup":
		return k.Lookup()
	case "holders":
		return k.Holders()
	case "dead":
		return k.DeadSlots()
	case "strikes":
		return k.Strikes()
	case "repairing":
		return k.Repairing()
	case "repairs":
		return k.Repairs()
	}
	panic("coord: unknown script key " + name)
}

// luaHelpers are defined in every script. A helper only touches the keys
// it names in K; a script that calls it declares them.
const luaHelpers = `
-- nowMS is Redis's own clock, in ms: the only clock liveness relies on.
local function nowMS()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- slotSource extracts the host of a slot "host#n".
local function slotSource(slot)
  return string.match(slot, '^(.*)#%d+$')
end

-- isCurrent: generation id and digest are the current generation's. K.generation
local function isCurrent(id, digest)
  local g = redis.call('HMGET', K.generation, 'id', 'digest')
  return g[1] == id and g[2] == digest
end

-- claimed: slot is held by a host whose claim record names it; a stale
-- holder entry is dropped. K.holders, K.claims
local function claimed(slot)
  local h = redis.call('HGET', K.holders, slot)
  if not h then return false end
  local c = redis.call('HGET', K.claims, h)
  if c and string.find(c, ' ' .. slot .. ' ', 1, true) then return true end
  redis.call('HDEL', K.holders, slot)
  return false
end

-- offer adds host#0..uploads-1 to the sync set, skipping slots claimed
-- now (capacity is never doubled) and, unless force, slots backing off
-- after a dead verdict. K.sync, K.holders, K.claims, K.dead
local function offer(host, uploads, force)
  for i = 0, uploads - 1 do
    local slot = host .. '#' .. i
    if not claimed(slot) then
      if force then
        redis.call('ZREM', K.dead, slot)
        redis.call('SADD', K.sync, slot)
      elseif not redis.call('ZSCORE', K.dead, slot) then
        redis.call('SADD', K.sync, slot)
      end
    end
  end
end

-- release ends claim cid ("host", or "host/n" for a host's n-th claim at
-- once) on slot for generation (id, digest). When the lease or the claims
-- record still matches, both are deleted and, with giveBack, the slot
-- returns if the generation is current and its source not bad. A claim
-- already reaped returns nothing (the reaper did).
-- K.lease (cid's), K.claims, K.holders, K.sync, K.bad, K.generation
local function release(cid, id, digest, slot, giveBack)
  if slot == '' then return end
  if redis.call('HGET', K.holders, slot) == cid then redis.call('HDEL', K.holders, slot) end
  local want = id .. ' ' .. slot
  local held = redis.call('GET', K.lease) == want
  if not held then
    local c = redis.call('HGET', K.claims, cid)
    held = c and string.sub(c, 1, #want + 1) == want .. ' '
  end
  if not held then return end
  redis.call('DEL', K.lease)
  redis.call('HDEL', K.claims, cid)
  local src = slotSource(slot)
  if giveBack and src and isCurrent(id, digest) and redis.call('SISMEMBER', K.bad, src) == 0 then
    redis.call('SADD', K.sync, slot)
  end
end

-- notify publishes msg on the channel prefix..name: the prefix is the
-- generation key's (every script that notifies declares K.generation).
local function notify(name, msg)
  local prefix = string.sub(K.generation, 1, #K.generation - #'generation')
  redis.call('PUBLISH', prefix .. name, msg)
end

-- event appends to the capped events stream. K.events
local function event(maxlen, typ, host, gen, slot, msg)
  redis.call('XADD', K.events, 'MAXLEN', '~', maxlen, '*',
    'type', typ, 'host', host, 'gen', gen, 'slot', slot, 'msg', msg)
end
`

// publishScript starts a generation. Its id is one more than the last,
// and above ARGV floor (the last id the publishing master knows it used),
// so ids never repeat even when Redis lost the counter.
// ARGV: path, delete, digest, state, error, origin, origin_addr, files,
// bytes, uploads, maxlen, floor, proto. Returns {id, published_ms}.
var publishScript = newScript(
	[]string{"generation", "sync", "running", "finished", "claims", "failures", "bad", "lookup", "events", "progress", "holders", "dead", "strikes", "repairing", "repairs"}, `
local now = nowMS()
local id = redis.call('HINCRBY', K.generation, 'id', 1)
local floor = tonumber(ARGV[12])
if id <= floor then
  id = floor + 1
  redis.call('HSET', K.generation, 'id', id)
end
redis.call('HSET', K.generation, 'path', ARGV[1], 'delete', ARGV[2], 'digest', ARGV[3],
  'state', ARGV[4], 'error', ARGV[5], 'origin', ARGV[6], 'origin_addr', ARGV[7],
  'published', now, 'files', ARGV[8], 'bytes', ARGV[9], 'done_at', '0', 'proto', ARGV[13])
redis.call('DEL', K.sync, K.running, K.finished, K.claims, K.failures, K.bad, K.lookup,
  K.progress, K.holders, K.dead, K.strikes, K.repairing, K.repairs)
for i = 0, tonumber(ARGV[10]) - 1 do
  redis.call('SADD', K.sync, ARGV[6] .. '#' .. i)
end
local typ = 'published'
if ARGV[4] == 'failed' then typ = 'fail' end
event(ARGV[11], typ, ARGV[6], id, '', ARGV[1] .. ' ' .. ARGV[5])
return {id, now}
`)

// claimScript takes a free slot for claim cid of host (a host may hold
// several claims at once, "host/1", "host/2"..., each with its own lease).
// Slots of sources that hold the whole generation (finished hosts and the
// origin) are preferred; a slot of a partial source (a host still pulling,
// pipelining) is taken only if that source does not pull, directly or
// through others, from host (data never flows in a cycle), unless acyclic
// (chunked generations: a partial source serves only chunks it verified, so
// a cycle is harmless). Sources named in avoid (comma-separated: the ones
// host pulls from already) are skipped. A finished host may claim only to
// repair (ARGV repair): it stays in finished_queue and enters repairing
// instead of running_queue.
// ARGV: host, gen, digest, lease_ms, rand, maxlen, repair, cid, acyclic, avoid
var claimScript = newScript(
	[]string{"generation", "finished", "lease", "sync", "bad", "running", "claims", "hosts", "events", "holders", "repairing"}, `
local host, gen, digest, cid = ARGV[1], ARGV[2], ARGV[3], ARGV[8]
local acyclic = ARGV[9] == '1'
local avoid = {}
for src in string.gmatch(ARGV[10], '[^,]+') do avoid[src] = true end
local g = redis.call('HMGET', K.generation, 'id', 'state', 'origin', 'origin_addr', 'digest')
if g[1] ~= gen or g[5] ~= digest or g[2] == 'failed' then return {'stale'} end
local fin = redis.call('SISMEMBER', K.finished, host) == 1
if fin and ARGV[7] ~= '1' then return {'finished'} end
if redis.call('EXISTS', K.lease) == 1 then return {'busy'} end
local function whole(src)
  return src == g[3] or redis.call('SISMEMBER', K.finished, src) == 1
end
-- upstream returns the source h pulls from for this generation, if any.
local function upstream(h)
  local c = redis.call('HGET', K.claims, h)
  if not c then return nil end
  local cg, slot = string.match(c, '^(%S+) (%S+)')
  if cg ~= gen then return nil end
  return slotSource(slot)
end
local function downstream(src)
  local h, steps = src, 0
  while h and steps < 100000 do
    if h == host then return true end
    if whole(h) then return false end
    h = upstream(h)
    steps = steps + 1
  end
  return h ~= nil
end
local full, partial = {}, {}
for _, m in ipairs(redis.call('SMEMBERS', K.sync)) do
  local src = slotSource(m)
  if src and src ~= host and not avoid[src] and redis.call('SISMEMBER', K.bad, src) == 0 then
    if whole(src) then table.insert(full, m) else table.insert(partial, m) end
  end
end
local slot
local r = tonumber(ARGV[5])
if #full > 0 then
  table.sort(full)
  slot = full[(r % #full) + 1]
else
  table.sort(partial)
  for i = 0, #partial - 1 do
    local m = partial[((r + i) % #partial) + 1]
    if acyclic or not downstream(slotSource(m)) then slot = m break end
  end
end
if not slot then return {'nosource'} end
local src = slotSource(slot)
redis.call('SREM', K.sync, slot)
redis.call('HSET', K.holders, slot, cid)
local typ = 'claim'
if fin then
  typ = 'repair'
  redis.call('SADD', K.repairing, host)
else
  redis.call('SADD', K.running, host)
end
redis.call('SET', K.lease, gen .. ' ' .. slot, 'PX', ARGV[4])
redis.call('HSET', K.claims, cid, gen .. ' ' .. slot .. ' ' .. nowMS() .. ' ' .. digest)
event(ARGV[6], typ, host, gen, slot, '')
local addr = ''
if src == g[3] and g[4] then addr = g[4] end
if addr == '' then
  local info = redis.call('HGET', K.hosts, src)
  if info then
    local ok, h = pcall(cjson.decode, info)
    if ok and type(h) == 'table' and type(h.addr) == 'string' then addr = h.addr end
  end
end
local kind = 'partial'
if whole(src) then kind = 'whole' end
return {'ok', slot, addr, kind}
`)

// renewScript extends host's lease on slot. A lease that vanished while
// the claims record still matches (Redis lost writes, or a renewal came
// late) is re-created (2); a claim lost with its record takes the slot again
// if it is still free (3). 1: renewed; 0: lost.
// ARGV: host, gen, digest, slot, lease_ms, maxlen, repair, cid
var renewScript = newScript(
	[]string{"lease", "claims", "generation", "sync", "holders", "running", "repairing", "events"}, `
local host, gen, digest, slot, cid = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[8]
local want = gen .. ' ' .. slot
if redis.call('GET', K.lease) == want then
  redis.call('PEXPIRE', K.lease, ARGV[5])
  return 1
end
if not isCurrent(gen, digest) then return 0 end
local c = redis.call('HGET', K.claims, cid)
local res, typ = 2, 'lease_recreated'
if not (c and string.sub(c, 1, #want + 1) == want .. ' ') then
  if redis.call('SREM', K.sync, slot) == 0 then return 0 end
  redis.call('HSET', K.claims, cid, want .. ' ' .. nowMS() .. ' ' .. digest)
  res, typ = 3, 'claim_restored'
end
redis.call('SET', K.lease, want, 'PX', ARGV[5])
redis.call('HSET', K.holders, slot, cid)
if ARGV[7] == '1' then
  redis.call('SADD', K.repairing, host)
else
  redis.call('SADD', K.running, host)
end
event(ARGV[6], typ, host, gen, slot, '')
return res
`)

// finishScript releases a claim and records host as holding the generation
// and as a source with uploads slots. ARGV repaired = 1 (the host changed
// its tree to repair drift) counts one repair; either way the host is no
// longer listed as repairing.
// ARGV: host, gen, digest, slot, uploads, maxlen, repaired, cid
var finishScript = newScript(
	[]string{"lease", "claims", "holders", "sync", "bad", "generation", "running", "finished", "failures", "events", "dead", "strikes", "repairing", "repairs"}, `
local host, gen, digest, slot = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
release(ARGV[8], gen, digest, slot, true)
if not isCurrent(gen, digest) then return 0 end
local src = slotSource(slot)
if src then redis.call('HDEL', K.strikes, src) end
redis.call('SREM', K.running, host)
redis.call('SADD', K.finished, host)
redis.call('SREM', K.repairing, host)
local repaired = ARGV[7] == '1'
if redis.call('SISMEMBER', K.bad, host) == 0 then
  offer(host, tonumber(ARGV[5]), false)
end
redis.call('HDEL', K.failures, host)
if repaired then
  redis.call('HINCRBY', K.repairs, host, 1)
  event(ARGV[6], 'repaired', host, gen, slot, '')
else
  event(ARGV[6], 'finish', host, gen, slot, '')
end
notify('master', 'finish ' .. host)
return 1
`)

// failScript releases a claim after a failed pull, per the verdict on the
// source: 0 ok: the slot returns; 1 dead: the slot backs off, for a time
// that doubles with each strike against the source, then returns; 2 bad:
// all the source's slots are dropped and it is barred for the generation.
// Unless the host goes on pulling from another source (switch = 1), its own
// slots, offered while it pulled, are withdrawn if it does not hold the
// generation.
// ARGV: host, gen, digest, slot, verdict, failure_json, maxlen, reason,
// switch, uploads, backoff_ms, backoff_max_ms, cid
var failScript = newScript(
	[]string{"lease", "claims", "holders", "sync", "bad", "generation", "running", "finished", "failures", "events", "dead", "strikes"}, `
local host, gen, digest, slot = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local src = slotSource(slot) or ''
local verdict = tonumber(ARGV[5])
release(ARGV[13], gen, digest, slot, verdict == 0)
local cur = isCurrent(gen, digest)
if verdict == 1 and cur and src ~= '' and redis.call('SISMEMBER', K.bad, src) == 0 then
  local n = redis.call('HINCRBY', K.strikes, src, 1)
  local wait = math.min(tonumber(ARGV[11]) * 2 ^ (math.min(n, 30) - 1), tonumber(ARGV[12]))
  redis.call('ZADD', K.dead, nowMS() + wait, slot)
  event(ARGV[7], 'dead_source', src, gen, slot, string.format('retried in %dms: %s', wait, ARGV[8]))
end
if verdict == 2 and cur and src ~= '' then
  redis.call('SADD', K.bad, src)
  for _, m in ipairs(redis.call('SMEMBERS', K.sync)) do
    if slotSource(m) == src then redis.call('SREM', K.sync, m) end
  end
  event(ARGV[7], 'bad_source', src, gen, slot, ARGV[8])
end
if ARGV[9] ~= '1' and redis.call('SISMEMBER', K.finished, host) == 0 then
  for i = 0, tonumber(ARGV[10]) - 1 do
    redis.call('SREM', K.sync, host .. '#' .. i)
    redis.call('ZREM', K.dead, host .. '#' .. i)
  end
end
redis.call('SREM', K.running, host)
redis.call('HSET', K.failures, host, ARGV[6])
local typ = 'fail'
if ARGV[9] == '1' then typ = 'switch' end
event(ARGV[7], typ, host, gen, slot, ARGV[8])
return 1
`)

// reapScript returns the slots of expired leases, offers again the dead
// slots whose back-off is over, and withdraws the slots of hosts whose
// heartbeat is older than the grace, all by Redis time.
// ARGV: prefix, grace_ms, maxlen
var reapScript = newScript(
	[]string{"claims", "running", "sync", "bad", "generation", "heartbeats", "events", "holders", "dead"}, `
local now = nowMS()
local cur = redis.call('HMGET', K.generation, 'id', 'origin', 'digest')
local cutoff = now - tonumber(ARGV[2])
local function alive(host)
  if host == cur[2] then return true end
  local s = redis.call('ZSCORE', K.heartbeats, host)
  return s and tonumber(s) >= cutoff
end
local function usable(slot)
  local src = slotSource(slot)
  return src and redis.call('SISMEMBER', K.bad, src) == 0 and alive(src)
end
local n = 0
local claims = redis.call('HGETALL', K.claims)
for i = 1, #claims, 2 do
  local host, val = claims[i], claims[i + 1]
  if redis.call('EXISTS', ARGV[1] .. 'lease:' .. host) == 0 then
    n = n + 1
    redis.call('HDEL', K.claims, host)
    if not string.find(host, '/', 1, true) then redis.call('SREM', K.running, host) end
    local gen, slot, _, digest = string.match(val, '^(%S+) (%S+) ?(%S*) ?(%S*)')
    if slot and redis.call('HGET', K.holders, slot) == host then redis.call('HDEL', K.holders, slot) end
    if gen == cur[1] and (digest == '' or digest == cur[3]) and slot and usable(slot) then
      redis.call('SADD', K.sync, slot)
    end
    event(ARGV[3], 'lease_expired', host, gen or '', slot or '', '')
  end
end
for _, slot in ipairs(redis.call('ZRANGEBYSCORE', K.dead, '-inf', now, 'LIMIT', 0, 100)) do
  redis.call('ZREM', K.dead, slot)
  if usable(slot) and not redis.call('HGET', K.holders, slot) then
    redis.call('SADD', K.sync, slot)
  end
end
for _, m in ipairs(redis.call('SMEMBERS', K.sync)) do
  local src = slotSource(m)
  if src and not alive(src) then redis.call('SREM', K.sync, m) end
end
return n
`)

// heartbeatScript records host's heartbeat at Redis time (and its
// registration, when ARGV info is not empty: the client sends it when it
// changes and once a minute) and, when host holds the current generation
// (ARGV gen and digest, sent only while its tree is verified and its finish
// was recorded), re-asserts it in finished_queue: a finish that Redis lost
// (a failover) is announced again. With ARGV offer = 1 it also offers the
// host's slots. It returns the current generation, so an idle host learns
// of a new one from its heartbeat if it missed the notification.
// ARGV: host, info_json, gen, digest, uploads, maxlen, offer.
// Returns {now_ms, 1 if it re-asserted a lost finish, id, digest, state}.
var heartbeatScript = newScript(
	[]string{"hosts", "heartbeats", "generation", "finished", "running", "sync", "holders", "claims", "dead", "bad", "events"}, `
local host = ARGV[1]
local now = nowMS()
if ARGV[2] ~= '' then redis.call('HSET', K.hosts, host, ARGV[2]) end
redis.call('ZADD', K.heartbeats, now, host)
local g = redis.call('HMGET', K.generation, 'id', 'digest', 'state')
local res = 0
if ARGV[3] ~= '' and g[1] == ARGV[3] and g[2] == ARGV[4] and g[3] ~= 'failed' then
  if redis.call('SADD', K.finished, host) == 1 then
    res = 1
    redis.call('SREM', K.running, host)
    event(ARGV[6], 'reassert', host, ARGV[3], '', 'finish lost by Redis announced again')
    notify('master', 'finish ' .. host)
  end
  if (res == 1 or ARGV[7] == '1') and redis.call('SISMEMBER', K.bad, host) == 0 then
    offer(host, tonumber(ARGV[5]), false)
  end
end
return {now, res, g[1] or '', g[2] or '', g[3] or ''}
`)

// markDoneScript moves a running generation to done.
// ARGV: gen, digest, maxlen. Returns the done time (ms), or 0.
var markDoneScript = newScript([]string{"generation", "events"}, `
local g = redis.call('HMGET', K.generation, 'id', 'state', 'digest')
if g[1] ~= ARGV[1] or g[3] ~= ARGV[2] or g[2] ~= 'running' then return 0 end
local now = nowMS()
redis.call('HSET', K.generation, 'state', 'done', 'done_at', now)
event(ARGV[3], 'done', '', ARGV[1], '', '')
return now
`)

// offerScript offers host's slots for a generation; force (the origin) also
// cuts short a dead slot's back-off. With announce, it then tells the
// minions of the generation ("gen <id> <digest>" on the generations
// channel): the master announces a generation once its slots are on offer,
// so the hosts it wakes find a source.
// ARGV: host, gen, digest, uploads, force, announce
var offerScript = newScript([]string{"generation", "sync", "holders", "claims", "dead", "bad"}, `
if not isCurrent(ARGV[2], ARGV[3]) then return 0 end
if redis.call('SISMEMBER', K.bad, ARGV[1]) == 1 then return 0 end
offer(ARGV[1], tonumber(ARGV[4]), ARGV[5] == '1')
if ARGV[6] == '1' then notify('generations', 'gen ' .. ARGV[2] .. ' ' .. ARGV[3]) end
return 1
`)

// driftScript marks a finished host as repairing drift found on its disk.
// ARGV: host, gen, digest, msg, maxlen. 1 when marked.
var driftScript = newScript([]string{"generation", "finished", "repairing", "events"}, `
if not isCurrent(ARGV[2], ARGV[3]) then return 0 end
if redis.call('SISMEMBER', K.finished, ARGV[1]) == 0 then return 0 end
redis.call('SADD', K.repairing, ARGV[1])
event(ARGV[5], 'drift', ARGV[1], ARGV[2], '', ARGV[4])
notify('master', 'drift ' .. ARGV[1])
return 1
`)

// forgetScript removes a host from the registry and every set.
// ARGV: host
var forgetScript = newScript(
	[]string{"hosts", "heartbeats", "finished", "running", "sync", "claims", "lease", "holders", "dead", "repairing", "repairs", "strikes"}, `
local host = ARGV[1]
redis.call('HDEL', K.hosts, host)
redis.call('ZREM', K.heartbeats, host)
redis.call('SREM', K.finished, host)
redis.call('SREM', K.running, host)
redis.call('SREM', K.repairing, host)
redis.call('HDEL', K.repairs, host)
redis.call('HDEL', K.strikes, host)
for _, m in ipairs(redis.call('SMEMBERS', K.sync)) do
  if slotSource(m) == host then redis.call('SREM', K.sync, m) end
end
for _, m in ipairs(redis.call('ZRANGE', K.dead, 0, -1)) do
  if slotSource(m) == host then redis.call('ZREM', K.dead, m) end
end
local hs = redis.call('HGETALL', K.holders)
for i = 1, #hs, 2 do
  if hs[i + 1] == host or slotSource(hs[i]) == host then redis.call('HDEL', K.holders, hs[i]) end
end
local cs = redis.call('HKEYS', K.claims)
for _, cid in ipairs(cs) do
  if cid == host or string.sub(cid, 1, #host + 1) == host .. '/' then redis.call('HDEL', K.claims, cid) end
end
redis.call('DEL', K.lease)
return 1
`)

// releaseScript gives back one of a host's claims that its pull no longer
// needs (a slow source replaced, an extra source after the endgame): the
// slot returns, nothing is recorded against the source.
// ARGV: host, gen, digest, slot, maxlen, cid
var releaseScript = newScript([]string{"lease", "claims", "holders", "sync", "bad", "generation", "events"}, `
release(ARGV[6], ARGV[2], ARGV[3], ARGV[4], true)
event(ARGV[5], 'release', ARGV[1], ARGV[2], ARGV[4], '')
return 1
`)
