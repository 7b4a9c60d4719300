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
	body string // the script's own text, after the helpers
	lua  *redis.Script
}

// newScript declares a script over the named keys (see Keys.named).
func newScript(keys []string, body string) *script {
	var b strings.Builder
	// Redis 5 and 6 need this before writes that follow TIME; on 7 it is
	// a no-op.
	fmt.Fprintf(&b, "redis.replicate_commands()\nlocal NAMED, EVENTS_MAX = %d, %d\nlocal K = {", len(keys), eventsMax)
	for i, k := range keys {
		fmt.Fprintf(&b, "%s = KEYS[%d], ", k, i+1)
	}
	b.WriteString("}\n")
	b.WriteString(luaHelpers)
	b.WriteString(body)
	return &script{keys: keys, body: body, lua: redis.NewScript(b.String())}
}

// keyCtx is what a script's key names depend on: the host (or claim id)
// whose lease is "lease", the zone whose claim indexes are "zfull" and
// "zpart" (the calling host's own, for the slots it offers and the claims
// it makes), and the zone whose indexes are "szfull" and "szpart" (a
// claim's source's, for the slot a release returns).
type keyCtx struct {
	host, zone, srcZone string
}

// run runs s for host (whose lease key is "lease") in this client's zone
// with args.
func (c *Client) run(ctx context.Context, s *script, host string, args ...any) *redis.Cmd {
	return c.runAt(ctx, s, keyCtx{host: host, zone: c.cfg.Zone}, args...)
}

// runAt runs s with the keys kc names.
func (c *Client) runAt(ctx context.Context, s *script, kc keyCtx, args ...any) *redis.Cmd {
	return c.runExtra(ctx, s, kc, nil, args...)
}

// runExtra runs s with the keys kc names and then extra, a variable
// number of keys the script reads as KEYS[#s.keys+1 ...] (every key a
// script touches is in KEYS, as Cluster requires).
func (c *Client) runExtra(ctx context.Context, s *script, kc keyCtx, extra []string, args ...any) *redis.Cmd {
	keys := make([]string, len(s.keys), len(s.keys)+len(extra))
	for i, name := range s.keys {
		keys[i] = c.keys.named(name, kc)
	}
	return s.lua.Run(ctx, c.rdb, append(keys, extra...), args...)
}

// named maps a script key name to the key. A zone index of no zone is the
// global index itself: the scripts test K.zfull ~= K.full (K.szfull ~=
// K.full) to know whether there is a zone to index.
func (k Keys) named(name string, kc keyCtx) string {
	zoneKey := func(zone string, full bool) string {
		switch {
		case zone == "" && full:
			return k.SyncFull()
		case zone == "":
			return k.SyncPartial()
		case full:
			return k.SyncFullZone(zone)
		}
		return k.SyncPartialZone(zone)
	}
	switch name {
	case "zfull":
		return zoneKey(kc.zone, true)
	case "zpart":
		return zoneKey(kc.zone, false)
	case "szfull":
		return zoneKey(kc.srcZone, true)
	case "szpart":
		return zoneKey(kc.srcZone, false)
	case "wait":
		return k.Waiting()
	case "zwait":
		return k.waiting(kc.zone)
	case "szwait":
		return k.waiting(kc.srcZone)
	case "zbytes":
		return k.ZoneBytes()
	case "zpull":
		return k.ZonePulling(kc.zone) // no zone: a key no script touches
	case "lease":
		return k.Lease(kc.host)
	case "generation":
		return k.Generation()
	case "switched":
		return k.Switched()
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
	case "starved":
		return k.Starved()
	case "rescue":
		return k.Rescue()
	case "slow":
		return k.SlowRelays()
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
	case "full":
		return k.SyncFull()
	case "part":
		return k.SyncPartial()
	case "leases":
		return k.LeaseIndex()
	case "hooks":
		return k.Hooks()
	case "tasks":
		return k.Tasks()
	case "task":
		return k.Task()
	case "taskopts":
		return k.TaskOptions()
	}
	panic("coord: unknown script key " + name)
}

// luaHelpers are defined in every script. A helper only touches the keys
// it names in K; a script that calls it declares them.
const luaHelpers = `
-- nowMS is Redis's own clock, in ms: the only clock liveness relies on.
-- Read once a call (a script runs in microseconds): a finish that frees
-- three slots asked for it four times.
local NOW
local function nowMS()
  if not NOW then
    local t = redis.call('TIME')
    NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return NOW
end

-- current is the generation's id, digest, state and origin, read once a
-- call: the helpers below asked for them again for every slot a call
-- freed. Only the publish, done, cancel and switch scripts write those
-- fields, and none of them reads current after (the publish forgets it).
-- K.generation
local CUR
local function current()
  if not CUR then
    local g = redis.call('HMGET', K.generation, 'id', 'digest', 'state', 'origin')
    CUR = {id = g[1], digest = g[2], state = g[3], origin = g[4]}
  end
  return CUR
end

-- slotSource extracts the host of a slot "host#n".
local function slotSource(slot)
  return string.match(slot, '^(.*)#%d+$')
end

-- RESCUE numbers a partial source's (or the origin's) rescue slot,
-- "host#64" (see RescueSlot): it is never in synchronize_queue nor in the
-- indexes the claims of a chain sample; the source offers it in K.rescue,
-- where only its grandchildren's rescue claims take it.
local RESCUE = 64
local function isRescue(slot)
  return tonumber(string.match(slot, '#(%d+)$')) == RESCUE
end

-- zoneOf returns z when it is a valid zone name (see ValidZone), else ''.
local function zoneOf(z)
  if type(z) == 'string' and #z <= 64 and string.match(z, '^[%w][%w._-]*$') then return z end
  return ''
end

-- isCurrent: generation id and digest are the current generation's. K.generation
local function isCurrent(id, digest)
  local g = current()
  return g.id == id and g.digest == digest
end

-- isWhole: src holds the whole generation (the origin or a finished host).
-- K.generation, K.finished
local function isWhole(src)
  return src == current().origin or redis.call('SISMEMBER', K.finished, src) == 1
end

-- takeSlot withdraws slot from every free set it can be in: a rescue
-- slot is only ever in K.rescue (see freeSlot), any other slot never is.
-- K.sync, K.full, K.part (and K.rescue, when declared). Returns 1 when
-- the slot was in synchronize_queue.
local function takeSlot(slot)
  if isRescue(slot) then
    if K.rescue then redis.call('SREM', K.rescue, slot) end
    return 0
  end
  redis.call('SREM', K.full, slot)
  redis.call('SREM', K.part, slot)
  return redis.call('SREM', K.sync, slot)
end

-- scope is the prefix of the task's keys (the plain task's or a named
-- one's): the generation key's. K.generation
local function scope()
  return string.sub(K.generation, 1, #K.generation - #'generation')
end

-- notify publishes msg on the channel scope..name (every script that
-- notifies declares K.generation).
local function notify(name, msg)
  redis.call('PUBLISH', scope() .. name, msg)
end

-- event appends to the capped events stream. K.events
local function event(maxlen, typ, host, gen, slot, msg)
  redis.call('XADD', K.events, 'MAXLEN', '~', maxlen, '*',
    'type', typ, 'host', host, 'gen', gen, 'slot', slot, 'msg', msg)
end

-- WAIT_MS: a queued host (see handoff) counts as waiting while its last
-- first claim that found no source (K.starved) is this recent; it claims
-- again within 30 s (queuedPoll). HANDOFF_MS: how long a slot handed to a
-- waiting host is held for it before it takes the claim up; then the
-- reaper ends the claim like an expired lease, and the slot goes to the
-- next host waiting. UPLOADS: a host's upload slots are host#0 ..
-- host#63, and host#64 its rescue slot. ALONE_SLOTS: the fewest of a
-- host's upload slots read to know whether anything pulls from it (a
-- host restarted mid-generation with fewer upload slots may still have a
-- puller on a higher one).
local WAIT_MS, HANDOFF_MS, UPLOADS, ALONE_SLOTS = 35000, 5000, 64, 9

-- handoff gives slot, just freed, to the host that has waited longest in
-- the waiting queue wait (K.waiting, or a zone's, K.zwait or K.szwait: the
-- zone of slot's source), in the order the hosts entered it: it writes
-- that host's claim (record, holder, running_queue, an expiry of
-- HANDOFF_MS in the lease index) and tells it on its wake channel; the
-- host's next claim takes it up (claimScript), with no search. So hosts
-- that wait do not poll for slots, and a slot offered by the last link of
-- a chain is the next link's at once. An entry is dropped when its host
-- has not claimed in WAIT_MS (dead, or pulling or idle since: a publish
-- empties K.starved), found a source meanwhile, holds the generation, is
-- this slot's source, or has a puller on any of its slots (a handed slot
-- would close a cycle: a newcomer may claim a queued host's slot); a few
-- at most per call, the rest age out. Reports whether slot was handed.
-- The slots read are the rescue slot and as many upload slots as the
-- host registered (K.hosts, when the script declares it), at least
-- ALONE_SLOTS as the claim's own check reads, else all 65: at 1,000 hosts
-- reading all 65 cost a tenth of Redis's time for a task.
-- K.generation, K.claims, K.holders, K.running, K.finished, K.leases,
-- K.events, K.starved, K.sync, K.full, K.part (and K.hosts, when declared)
local function handoff(slot, wait)
  local g = current()
  if not g.id or not g.digest or g.state == 'failed' then return false end
  local src = slotSource(slot)
  local now = nowMS()
  local function pulledFrom(w)
    local n = UPLOADS
    local info = K.hosts and redis.call('HGET', K.hosts, w)
    if info then
      local ok, h = pcall(cjson.decode, info)
      if ok and type(h) == 'table' then
        n = math.min(math.max(tonumber(h.uploads) or 0, ALONE_SLOTS), UPLOADS)
      end
    end
    local fields = {w .. '#' .. RESCUE}
    for i = 0, n - 1 do fields[#fields + 1] = w .. '#' .. i end
    for _, v in ipairs(redis.call('HMGET', K.holders, unpack(fields))) do
      if v then return true end
    end
    return false
  end
  for _ = 1, 4 do
    local p = redis.call('ZPOPMIN', wait)
    if #p == 0 then return false end
    local w = p[1]
    local seen = tonumber(redis.call('ZSCORE', K.starved, w) or '0')
    if seen >= now - WAIT_MS and w ~= src
      and redis.call('HEXISTS', K.claims, w) == 0
      and redis.call('SISMEMBER', K.finished, w) == 0
      and not pulledFrom(w) then
      local record = g.id .. ' ' .. slot .. ' ' .. now .. ' ' .. g.digest
      -- The queue's zone is the source's: "waiting:ZONE" in the task's scope.
      local zone = string.match(string.sub(wait, #scope() + 1), '^waiting:(.+)$')
      if zone then record = record .. ' ' .. zone end
      takeSlot(slot)
      redis.call('HSET', K.holders, slot, w)
      redis.call('HSET', K.claims, w, record)
      redis.call('SADD', K.running, w)
      redis.call('ZADD', K.leases, now + HANDOFF_MS, w)
      event(EVENTS_MAX, 'claim', w, g.id, slot, 'handed')
      notify('wake:' .. w, g.id .. ' ' .. slot)
      return true
    end
  end
  return false
end

-- isSlow: host relayed too slowly for the current generation (K.slow,
-- when declared: see bypassScript). An entry names the generation too
-- ("host id"), so one that a master too old to empty the set at each
-- publish left behind never matches a later generation. K.generation
local function isSlow(host)
  if not K.slow then return false end
  local id = current().id
  return id and redis.call('SISMEMBER', K.slow, host .. ' ' .. id) == 1 or false
end

-- freeSlot offers slot (unless its source relayed too slowly for this
-- generation, K.slow when declared: see bypassScript): synchronize_queue (the seed's set of free slots)
-- and the index of free slots of whole or of partial sources, which claims
-- sample in O(1); and the same index of the source's zone, zf and zp (the
-- global ones when the source has no zone). K.sync, K.full, K.part
-- A rescue slot returns to K.rescue (when the script declares it) while its
-- source is partial, or is the origin; a finished host offers none. With
-- wait (a waiting queue, see handoff), any other slot goes to the host
-- that waited longest, if one waits.
local function freeSlot(slot, whole, zf, zp, wait)
  if isSlow(slotSource(slot) or '') then return end
  if isRescue(slot) then
    if K.rescue and (not whole or (K.generation and slotSource(slot) == current().origin)) then
      redis.call('SADD', K.rescue, slot)
    end
    return
  end
  if wait and handoff(slot, wait) then return end
  redis.call('SADD', K.sync, slot)
  if whole then
    redis.call('SADD', K.full, slot)
    redis.call('SREM', K.part, slot)
  else
    redis.call('SADD', K.part, slot)
    redis.call('SREM', K.full, slot)
  end
  if zf ~= K.full then
    if whole then
      redis.call('SADD', zf, slot)
      redis.call('SREM', zp, slot)
    else
      redis.call('SADD', zp, slot)
      redis.call('SREM', zf, slot)
    end
  end
end

-- claimed: slot is held by a claim whose record names it; a stale holder
-- entry is dropped. K.holders, K.claims
local function claimed(slot)
  local h = redis.call('HGET', K.holders, slot)
  if not h then return false end
  local c = redis.call('HGET', K.claims, h)
  if c and string.find(c, ' ' .. slot .. ' ', 1, true) then return true end
  redis.call('HDEL', K.holders, slot)
  return false
end

-- offer offers host#0..uploads-1, skipping slots claimed now (capacity is
-- never doubled) and, unless force, slots backing off after a dead
-- verdict. host is the caller, whose zone's indexes are K.zfull, K.zpart.
-- K.sync, K.full, K.part, K.zfull, K.zpart, K.holders, K.claims, K.dead,
-- K.generation, K.finished. With rescue (K.rescue declared), a partial
-- source or the origin also offers its rescue slot.
local function offer(host, uploads, force, rescue)
  if isSlow(host) then return end
  local origin = host == current().origin
  local whole = origin or redis.call('SISMEMBER', K.finished, host) == 1
  if rescue and K.rescue and (origin or not whole) then
    local slot = host .. '#' .. RESCUE
    if not claimed(slot) then redis.call('SADD', K.rescue, slot) end
  end
  for i = 0, uploads - 1 do
    local slot = host .. '#' .. i
    if not claimed(slot) then
      if force then
        redis.call('ZREM', K.dead, slot)
        freeSlot(slot, whole, K.zfull, K.zpart, K.zwait)
      elseif not redis.call('ZSCORE', K.dead, slot) then
        freeSlot(slot, whole, K.zfull, K.zpart, K.zwait)
      end
    end
  end
end

-- release ends claim cid ("host", or "host/n" for a host's n-th claim at
-- once) on slot for generation (id, digest). When the lease or the claims
-- record still matches, both are deleted and, with giveBack, the slot
-- returns if the generation is current and its source not bad. A claim
-- already reaped returns nothing (the reaper did). The slot's source's zone
-- indexes are K.szfull, K.szpart.
-- K.lease (cid's), K.claims, K.holders, K.leases, K.sync, K.full, K.part,
-- K.szfull, K.szpart, K.bad, K.generation, K.finished, K.zpull (the
-- caller's zone's serving pullers: cid is no longer one)
local function release(cid, id, digest, slot, giveBack)
  if slot == '' then return end
  if K.zfull ~= K.full then redis.call('SREM', K.zpull, cid) end
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
  redis.call('ZREM', K.leases, cid)
  local src = slotSource(slot)
  if giveBack and src and isCurrent(id, digest) and redis.call('SISMEMBER', K.bad, src) == 0 then
    freeSlot(slot, isWhole(src), K.szfull, K.szpart, K.szwait)
  end
end

`

// publishScript starts a generation. Its id is one more than the last,
// and above ARGV floor (the last id the publishing master knows it used),
// so ids never repeat even when Redis lost the counter.
// ARGV: path, delete, digest, state, error, origin, origin_addr, files,
// bytes, uploads, maxlen, floor, proto, origin_zone, compress, dest,
// groups, atomic, rollback, switch, name, task, adopted_ttl_ms, task_gen.
// Returns
// {id, published_ms}. The task key is put back to ARGV task (see
// Generation.Task) when it holds another adopted value. The origin's
// slots go to its zone's indexes too (the client's zone's, K.zfull and
// K.zpart). Other zones' indexes are not
// cleared: their entries of the last generation are no longer in the
// global indexes, and claims drop them when they sample them.
var publishScript = newScript(
	[]string{"task", "generation", "sync", "full", "part", "zfull", "zpart", "running", "finished", "claims", "leases", "failures", "bad", "lookup", "events", "progress", "holders", "dead", "strikes", "repairing", "repairs", "zbytes", "hooks", "starved", "rescue", "switched", "tasks", "wait", "zwait", "slow"}, `
-- A named task (ARGV[21]) is published only while it is in the task
-- list: a master that was building it when it was retired publishes
-- nothing.
if (ARGV[21] or '') ~= '' and redis.call('SISMEMBER', K.tasks, ARGV[21]) == 0 then
  return redis.error_reply('NOTASK task ' .. ARGV[21] .. ' is not in the task list (retired)')
end
-- Redis lost this master's adoption of ARGV[22] (a publish retried on a
-- restarted server after its reply was lost, or run after a failover to a
-- replica that missed the adoption): the key holds an older adopted value
-- (a TTL marks adoption). Write the value back, marked adopted, so the
-- master does not take the older value for a task to publish again. A key
-- an operator wrote since (no TTL) or deleted is left alone, and so is one
-- another master adopted and published since (the id moved past ARGV[24],
-- the id current at this master's adoption).
if (ARGV[22] or '') ~= '' and redis.call('PTTL', K.task) > 0 and redis.call('GET', K.task) ~= ARGV[22]
    and tonumber(redis.call('HGET', K.generation, 'id') or '0') <= tonumber(ARGV[24] or '0') then
  redis.call('SET', K.task, ARGV[22], 'PX', ARGV[23])
end
local now = nowMS()
redis.call('HDEL', K.generation, 'retired')
local id = redis.call('HINCRBY', K.generation, 'id', 1)
local floor = tonumber(ARGV[12])
if id <= floor then
  id = floor + 1
  redis.call('HSET', K.generation, 'id', id)
end
redis.call('HSET', K.generation, 'path', ARGV[1], 'delete', ARGV[2], 'digest', ARGV[3],
  'state', ARGV[4], 'error', ARGV[5], 'origin', ARGV[6], 'origin_addr', ARGV[7],
  'published', now, 'files', ARGV[8], 'bytes', ARGV[9], 'done_at', '0', 'proto', ARGV[13],
  'origin_zone', ARGV[14] or '', 'compress', ARGV[15] or '0', 'dest', ARGV[16] or '', 'groups', ARGV[17] or '',
  'atomic', ARGV[18] or '0', 'rollback', ARGV[19] or '0', 'switch', ARGV[20] or '', 'switch_at', '0')
-- origin_pending names the generation whose origin has yet to offer its
-- slots (see none in claimScript): not when this call offers them, nor
-- for a rollback (the hosts that kept the release serve it; the origin
-- offers nothing). Keyed by id, so a field an older master never clears
-- names an older generation and says nothing.
redis.call('HDEL', K.generation, 'origin_pending')
if tonumber(ARGV[10]) == 0 and (ARGV[19] or '0') == '0' and ARGV[4] ~= 'failed' then
  redis.call('HSET', K.generation, 'origin_pending', id)
end
CUR = nil -- the generation just written (see current)
redis.call('DEL', K.sync, K.full, K.part, K.running, K.finished, K.claims, K.leases, K.failures,
  K.bad, K.lookup, K.progress, K.holders, K.dead, K.strikes, K.repairing, K.repairs, K.zbytes, K.hooks, K.starved, K.rescue, K.switched,
  K.wait, K.zwait, K.slow)
if K.zfull ~= K.full then redis.call('DEL', K.zfull, K.zpart) end
for i = 0, tonumber(ARGV[10]) - 1 do
  freeSlot(ARGV[6] .. '#' .. i, true, K.zfull, K.zpart)
end
local typ = 'published'
if ARGV[4] == 'failed' then typ = 'fail' end
event(ARGV[11], typ, ARGV[6], id, '', ARGV[1] .. ' ' .. ARGV[5])
return {id, now}
`)

// claimScript takes a free slot for claim cid of host (a host may hold
// several claims at once, "host/1", "host/2"..., each with its own lease;
// those extra claims take nothing while a host waits for its first, and
// only whole sources' slots, leaving the end of a chain to newcomers).
// Its cost does not grow with the fleet: it samples the index of free
// slots of whole sources (the origin and finished hosts) first, then that
// of partial sources (hosts still pulling, pipelining), then the seed's
// synchronize_queue itself (slots offered by older fanouts, which keep no
// index), at most a few batches of 16 each. A sampled slot of a bad source
// or of a host whose heartbeat is older than the grace is dropped on the
// way. A partial source is taken only if it does not pull, directly or
// through others (a bounded walk), from host: data never flows in a cycle;
// unless acyclic (chunked generations: a partial source serves only chunks
// it verified, so a cycle is harmless), which still skips a source at most
// 16 links below host (see below): it would bring little. An extra claim
// takes no partial source at all (see below). A slot whose
// chain is too long to follow is withdrawn from the free sets when met
// (its source offers it again at its finish or its next offering
// heartbeat), so waiting hosts do not walk the same chains at every poll.
// Sources named in avoid (comma-separated: the ones host pulls from
// already) are skipped. A
// finished host may claim only to repair (ARGV repair): it stays in
// finished_queue and enters repairing instead of running_queue. With no
// source, it returns how many hosts wait for one (lookup minus the
// running and the finished), three O(1) reads. A host with no downstream
// (none of its ARGV slots slots is claimed: K.holders) walks no chain: nothing pulls from it, so no slot
// closes a cycle, and it takes the end of a chain of any length.
//
// Zones: a host with a zone (K.zfull, K.zpart are its zone's indexes, not
// the global ones) samples its zone's indexes first, whole then partial
// sources, and the global ones only when its zone has no usable slot free;
// with ARGV same_zone = 1, never. An entry of a zone index counts only
// while the slot is in the global index of the same kind (and in
// synchronize_queue); otherwise it is dropped. The claim record carries
// the source's zone, so the reaper returns the slot to that zone's index.
// A zone waits for its own: a claim of a host that serves (ARGV serves =
// 1) is recorded in K.zpull until it ends, and while another host of the
// zone has such a claim of this generation, a claim that finds no source
// in its zone waits (nosource) for that host to offer its slots in the
// zone (at once when pipelining), rather than bring the content across
// once more. So one host of a zone crosses, and the zone chains from it.
// Hand-offs: a claim that finds no source queues the host (ARGV queue = 1,
// see none and handoff), and a claim that finds a slot handed to the host
// takes it up, before any search.
// With ARGV offer > 0, a first claim that succeeds then offers the host's
// first offer slots (and its rescue slot with offer_rescue = 1), as the
// offer script would (see ClaimOptions.Offer), unless the host is bad or
// a relay bypassed as slow.
// With ARGV rescue_index > 0, a first claim of a partial source also
// makes the host's rescue claim (see rescueToo), whose lease key follows
// the named KEYS.
// ARGV: host, gen, digest, lease_ms, rand, maxlen, repair, cid, acyclic,
// avoid, grace_ms, same_zone, serves, slots, rescue, queue, lookup, offer,
// offer_rescue, rescue_index.
// Returns {'ok', slot, source addr, 'whole' or 'partial', source zone,
// free slots, starved hosts, '1' if it offered the host's slots or an
// empty string}, then the rescue claim's slot, source addr, kind and zone
// when it made one.
var claimScript = newScript(
	[]string{"generation", "finished", "lease", "sync", "full", "part", "zfull", "zpart", "zpull", "bad", "running", "claims", "leases", "hosts", "heartbeats", "events", "holders", "repairing", "lookup", "starved", "rescue", "zwait", "dead", "slow"}, `
local host, gen, digest, cid = ARGV[1], ARGV[2], ARGV[3], ARGV[8]
-- STARVED_MS: how long a first claim that found no source counts as a
-- host waiting (a waiting host claims again within 30 polls at most).
local STARVED_MS = 35000
local acyclic = ARGV[9] == '1'
local avoid = {}
for src in string.gmatch(ARGV[10], '[^,]+') do avoid[src] = true end
local g = redis.call('HMGET', K.generation, 'id', 'state', 'origin', 'origin_addr', 'digest', 'origin_zone', 'origin_pending')
if g[1] ~= gen or g[5] ~= digest or g[2] == 'failed' then return {'stale'} end
CUR = {id = g[1], digest = g[5], state = g[2], origin = g[3]} -- read once (see current)
-- ARGV lookup = 1: the host's first claim of the generation counts its
-- discovery (see ClaimOptions.Lookup).
if ARGV[17] == '1' then redis.call('INCR', K.lookup) end
local fin = redis.call('SISMEMBER', K.finished, host) == 1
if fin and ARGV[7] ~= '1' then return {'finished'} end
if redis.call('EXISTS', K.lease) == 1 then return {'busy'} end
local now = nowMS()
local cutoff = now - tonumber(ARGV[11])
local function whole(src)
  return src == g[3] or redis.call('SISMEMBER', K.finished, src) == 1
end
-- answer is the reply for a claim of slot, whose source is src: the
-- source's address and zone (the origin's are in the generation, every
-- other host's in its registration) and whether it holds the whole
-- generation.
local function answer(slot, src, bare)
  local addr, zone = '', ''
  if src == g[3] then addr, zone = g[4] or '', zoneOf(g[6]) end
  if addr == '' or src ~= g[3] then
    local info = redis.call('HGET', K.hosts, src)
    if info then
      local ok, h = pcall(cjson.decode, info)
      if ok and type(h) == 'table' then
        if addr == '' and type(h.addr) == 'string' then addr = h.addr end
        if src ~= g[3] then zone = zoneOf(h.zone) end
      end
    end
  end
  local kind = 'partial'
  if whole(src) then kind = 'whole' end
  if bare then return {'ok', slot, addr, kind, zone} end
  -- What an extra claim would find now (see Outlook), so the pull's swarm
  -- need not ask: the free slots of whole sources of this host's zone
  -- (every one without a zone) and the hosts waiting for a first source.
  local free = redis.call('SCARD', K.zfull)
  local starved = redis.call('ZCOUNT', K.starved, now - STARVED_MS, '+inf')
  return {'ok', slot, addr, kind, zone, tostring(free), tostring(starved), ''}
end
-- offered is reply, the claim made, once the host offered itself as a
-- partial source (ARGV offer > 0: see ClaimOptions.Offer).
local function offered(reply)
  local n = tonumber(ARGV[18] or '0') or 0
  if n > 0 and not string.find(cid, '/', 1, true) and redis.call('SISMEMBER', K.bad, host) == 0
    and not isSlow(host) then
    offer(host, math.min(n, UPLOADS), false, ARGV[19] == '1')
    reply[8] = '1'
  end
  return reply
end
local extra = string.find(cid, '/', 1, true) ~= nil
-- upstream returns the source h pulls from (its first claim) for this
-- generation, if any.
local function upstream(h)
  local c = redis.call('HGET', K.claims, h)
  if not c then return nil end
  local cg, slot = string.match(c, '^(%S+) (%S+)')
  if cg ~= gen then return nil end
  return slotSource(slot)
end
-- usable returns slot's source when host may take it, dropping the slots
-- of bad or silent sources for good; an extra claim takes no slot of a
-- host whose first claim is on host (one HGET).
local function usable(slot)
  local src = slotSource(slot)
  if not src then takeSlot(slot) return nil end
  if src == host or avoid[src] then return nil end
  -- An extra source is never host's own puller: what it has came from
  -- host, and its slot is the end of a chain, a newcomer's.
  if extra and upstream(src) == host then return nil end
  if redis.call('SISMEMBER', K.bad, src) == 1 then takeSlot(slot) return nil end
  if src ~= g[3] then
    local s = redis.call('ZSCORE', K.heartbeats, src)
    if not s or tonumber(s) < cutoff then takeSlot(slot) return nil end
  end
  return src
end
-- sourceZone is the zone of h's source, as h's claim record names it.
local function sourceZone(h)
  local c = redis.call('HGET', K.claims, h)
  return c and string.match(c, '^%S+ %S+ %S+ %S+ (%S+)') or ''
end
-- grandparent is the rescue slot a rescue claim of host would take (see
-- ARGV rescue below) when host's first claim is on src: the rescue slot
-- of src's own source, if src is partial, that source is in src's
-- source's zone, and its rescue slot is offered, unclaimed and usable.
local function grandparent(src)
  local up2 = src and not whole(src) and upstream(src)
  if not up2 or sourceZone(host) ~= sourceZone(src) then return nil end
  local s = up2 .. '#' .. RESCUE
  if redis.call('SISMEMBER', K.rescue, s) == 1 and not claimed(s) and usable(s) then return s end
  return nil
end
-- hold writes claim c of slot s, whose lease key is lease and whose
-- source's zone is zone ('': none): holder, lease, claim record (the
-- reaper returns the slot to that zone's index), lease index and event.
local function hold(c, lease, s, zone)
  redis.call('HSET', K.holders, s, c)
  redis.call('SET', lease, gen .. ' ' .. s, 'PX', ARGV[4])
  local record = gen .. ' ' .. s .. ' ' .. now .. ' ' .. digest
  if zone ~= '' then record = record .. ' ' .. zone end
  redis.call('HSET', K.claims, c, record)
  redis.call('ZADD', K.leases, now + tonumber(ARGV[4]), c)
  local typ = 'claim'
  if fin then typ = 'repair' end
  event(ARGV[6], typ, host, gen, s, '')
end
-- rescueToo: with ARGV rescue_index > 0, a first claim, once made on src,
-- also makes the host's rescue claim (cid "host/rescue_index", its lease
-- key KEYS[NAMED + 1]), as a later rescue claim would (see ARGV rescue):
-- one call instead of two when a pull starts. Appends the rescue claim's
-- slot, source address, kind and zone to reply, or nothing when it found
-- none or that claim is held already.
local function rescueToo(reply, src)
  local idx = tonumber(ARGV[20] or '0') or 0
  local lease = KEYS[NAMED + 1]
  if extra or idx <= 0 or not lease or redis.call('EXISTS', lease) == 1 then return reply end
  local s = grandparent(src)
  if not s then return reply end
  local rcid, up2 = host .. '/' .. idx, slotSource(s)
  if upstream(up2) == host then return reply end -- a cycle
  takeSlot(s)
  local r = answer(s, up2, true)
  hold(rcid, lease, s, r[5])
  for i = 2, 5 do reply[#reply + 1] = r[i] end
  return reply
end
-- A slot handed to this host while it waited (see handoff): its claim is
-- written, its lease not yet; taking it up starts the lease, if its
-- source is still neither bad nor silent. Otherwise the claim ends here
-- and the search below looks for another. (A claim whose lease expired
-- and that the reaper has not ended yet is taken up the same way.)
if not extra and ARGV[7] ~= '1' then
  local c = redis.call('HGET', K.claims, cid)
  if c then
    local cg, cslot, _, cd = string.match(c, '^(%S+) (%S+) (%S+) (%S+)')
    if cg == gen and cd == digest and redis.call('HGET', K.holders, cslot) == cid then
      local csrc = slotSource(cslot)
      local s = csrc and redis.call('ZSCORE', K.heartbeats, csrc)
      if csrc and redis.call('SISMEMBER', K.bad, csrc) == 0 and (csrc == g[3] or (s and tonumber(s) >= cutoff)) then
        redis.call('SET', K.lease, gen .. ' ' .. cslot, 'PX', ARGV[4])
        redis.call('ZADD', K.leases, now + tonumber(ARGV[4]), cid)
        redis.call('ZREM', K.starved, host)
        if K.zfull ~= K.full and ARGV[13] == '1' then redis.call('SADD', K.zpull, cid) end
        return offered(rescueToo(answer(cslot, csrc), csrc))
      end
      redis.call('HDEL', K.holders, cslot)
      redis.call('HDEL', K.claims, cid)
      redis.call('ZREM', K.leases, cid)
      redis.call('SREM', K.running, host)
    end
  end
end
-- downstream reports whether src pulls, directly or through others, from
-- host (a cycle), and whether src's chain of partial sources is too long
-- to follow (taken for a cycle too; no claimer may take src's slots then).
local function downstream(src)
  local h, steps = src, 0
  while h and steps < 64 do
    if h == host then return true, false end
    if whole(h) then return false, false end
    h = upstream(h)
    steps = steps + 1
  end
  return h ~= nil, h ~= nil
end
-- below reports whether src pulls from host through at most NEAR_STEPS
-- first claims: a descendant near host in its chain. An acyclic claim
-- takes no slot of one: what a descendant has came mostly through host
-- (its rescue sources are host's ancestors; only its own extra sources
-- bring other chunks), so its slot would bring little and hold the end of
-- a chain that a host without a source needs, such as a relay bypassed
-- for its slow uplink (see bypassScript). O(1): at most NEAR_STEPS HGETs;
-- a descendant farther down is taken, as any acyclic claim took one
-- before.
local NEAR_STEPS = 16
local function below(src)
  local h = src
  for _ = 1, NEAR_STEPS do
    h = upstream(h)
    if not h then return false end
    if h == host then return true end
  end
  return false
end
-- isAlone: nothing pulls from host (see above), so no cycle can close.
-- Read once, when a candidate first needs a cycle check (a claim that
-- finds no candidate, or only whole sources, never reads it), in one
-- HMGET of the host's slots.
local aloneKnown, aloneVal = false, false
local function isAlone()
  if aloneKnown then return aloneVal end
  aloneKnown = true
  local slots = tonumber(ARGV[14] or '0') or 0
  if slots <= 0 or slots > 64 then return false end
  -- At least ALONE_SLOTS (see handoff).
  local fields = {host .. '#' .. RESCUE}
  for i = 0, math.max(slots, ALONE_SLOTS) - 1 do fields[#fields + 1] = host .. '#' .. i end
  for _, v in ipairs(redis.call('HMGET', K.holders, unpack(fields))) do
    if v then return false end
  end
  aloneVal = true
  return true
end
local r = tonumber(ARGV[5])
-- pick samples set; a zone index names the global index (of) its entries
-- must be in. It checks the sample's members from a random one on (the
-- sample sorted, so ARGV rand alone decides) and takes the first usable:
-- checking all 16 before choosing among them cost every claim about 50
-- SISMEMBERs (a fifth of Redis's commands at 10,000 simulated hosts).
local function pick(set, checkCycle, of)
  for _ = 1, 4 do
    local sample = redis.call('SRANDMEMBER', set, 16)
    if #sample == 0 then return nil end
    table.sort(sample)
    for i = 1, #sample do
      local m = sample[(r + i) % #sample + 1]
      -- A rescue slot is only ever in K.rescue (one here was offered by a
      -- fanout from before rescue slots with 65 upload slots or more):
      -- dropped, as takeSlot would not remove it from here.
      local stale = isRescue(m) or (set ~= K.sync and redis.call('SISMEMBER', K.sync, m) == 0)
      if not stale and of then stale = redis.call('SISMEMBER', of, m) == 0 end
      if stale then
        redis.call('SREM', set, m) -- a stale index entry
      else
        local src = usable(m)
        if src and checkCycle and not isAlone() and not whole(src) then
          if acyclic then
            if below(src) then src = nil end
          else
            local cycle, long = downstream(src)
            -- A slot at the end of a chain too long to follow is
            -- withdrawn: no claimer may take it, and every waiting host
            -- would walk the chain again at each poll. Its source offers
            -- it again when it finishes, or with its next offering
            -- heartbeat.
            if long then takeSlot(m) end
            if cycle then src = nil end
          end
        end
        if src then return m end
      end
    end
    if #sample < 16 then return nil end -- the whole set was seen
  end
  return nil
end
-- waiting: how many hosts wait for a source (discovered the generation,
-- neither pulling nor finished): waiting hosts space their claims by it.
local function waiting()
  local n = tonumber(redis.call('GET', K.lookup) or '0') - redis.call('SCARD', K.running) - redis.call('SCARD', K.finished)
  return tostring(math.max(n, 0))
end
-- none is the reply when there is no source for this claim. A first
-- claim (not a repair) of a host that listens on its wake channel (ARGV
-- queue = 1) and from which nothing pulls enters its zone's waiting queue
-- (queue: for a host with a zone, only while a host of its zone pulls, so
-- its zone's slots are coming; before, it polls, to cross into the zone):
-- the next slot freed in the zone is handed to it (see handoff), and the
-- reply says so ('queued'): it need not poll for one. It keeps its place
-- (NX) while it claims again.
local function none(queue)
  if extra then return {'nosource', waiting()} end
  -- The origin has not offered its slots yet (a poll or a heartbeat read
  -- the generation between its publish and the master's announcement,
  -- which then wakes the host): the host neither queues nor counts as
  -- waiting. Queued, it took the origin's first slot as a hand-off, a
  -- round trip, while the hosts the announcement woke found nothing and
  -- queued behind it: at 10,000 simulated hosts a third of the runs
  -- left hundreds to thousands of hosts waiting seconds for hand-offs.
  -- Absent, or naming another generation (a master of an older fanout):
  -- offered.
  if g[7] == gen then return {'nosource', waiting()} end
  redis.call('ZADD', K.starved, now, host)
  if queue and ARGV[16] == '1' and ARGV[7] ~= '1' and isAlone() then
    redis.call('ZADD', K.zwait, 'NX', now, host)
    return {'nosource', waiting(), 'queued'}
  end
  return {'nosource', waiting()}
end
-- An extra claim (a swarm's second source, cid "host/n") takes nothing
-- while a host waits for its first (its last first claim found no source
-- within starvedMS): a slot is worth more starting a pull (or the next
-- link of a chain) than speeding one up. Entries of hosts that stopped
-- claiming (dead, gone) age out.
local zoned = K.zfull ~= K.full
local slot
-- A rescue claim (ARGV rescue = 1, an extra one) takes only the rescue
-- slot of host's grandparent: the source of its first claim's source, a
-- host that is ahead of both. When that source link is slow (a slow host
-- in the chain), the grandparent's uplink is what it leaves idle; when it
-- is not, the rescue source has nothing host's own source does not bring
-- as soon. Only where the grandparent is in the parent's zone (the claim
-- records name their sources' zones): a rescue never brings content across
-- zones that the chain did not bring across already. O(1): two claim
-- records and a set member.
if ARGV[15] == '1' then
  if not extra then return {'nosource', waiting()} end
  slot = grandparent(upstream(host))
  if not slot then return {'nosource', waiting()} end
end
if extra and not slot then
  redis.call('ZREMRANGEBYSCORE', K.starved, '-inf', '(' .. (now - STARVED_MS))
  if redis.call('ZCARD', K.starved) > 0 then return {'nosource', waiting(), 'yield'} end
end
-- An extra claim (not a rescue claim) takes only a whole source's slot.
-- A partial source's free slot is most often the end of a chain (every
-- slot of a partial source with one upload slot that is free is one), the
-- slot the next host to claim its first source takes; the starved index
-- counts only hosts that claimed already, so while a chain grew an extra
-- claim could take its end before the next host came for it, and the
-- hosts after that one found no slot, queued, and waited until the first
-- hosts finished (40 to 170 of 10,000 simulated hosts for 25 s, 2.1 ×
-- S/B instead of 1.4, in 3 of 17 runs). And a host that joined the
-- chain after the claimer has little to give it.
-- (A rescue claim has its slot by now.)
if zoned and not slot then
  slot = pick(K.zfull, false, K.full)
  if not slot and not extra then slot = pick(K.zpart, true, K.part) end
end
-- pulling: another serving host of this zone pulls this generation now
-- (entries of ended claims are dropped on the way).
local function pulling()
  for _, c in ipairs(redis.call('SRANDMEMBER', K.zpull, 4)) do
    local rec = redis.call('HGET', K.claims, c)
    if rec and string.sub(rec, 1, #gen + 1) == gen .. ' ' then
      if string.match(c, '^([^/]*)') ~= host then return true end
    else
      redis.call('SREM', K.zpull, c)
    end
  end
  return false
end
if not slot and not (zoned and ARGV[12] == '1') then
  if zoned and pulling() then return none(true) end
  slot = pick(K.full, false)
  if not slot and not extra then slot = pick(K.part, true) or pick(K.sync, true) end
end
if not slot then return none(not zoned or pulling()) end
if not extra then
  redis.call('ZREM', K.starved, host)
  redis.call('ZREM', K.zwait, host)
end
local src = slotSource(slot)
takeSlot(slot)
if zoned then
  redis.call('SREM', K.zfull, slot)
  redis.call('SREM', K.zpart, slot)
end
local reply = answer(slot, src)
if fin then
  redis.call('SADD', K.repairing, host)
else
  redis.call('SADD', K.running, host)
end
if zoned and ARGV[13] == '1' then redis.call('SADD', K.zpull, cid) end
hold(cid, K.lease, slot, reply[5])
return offered(rescueToo(reply, src))
`)

// renewScript extends host's lease on slot, unless the generation was
// cancelled (failed while it ran): then the lease is lost. A lease that vanished while
// the claims record still matches (Redis lost writes, or a renewal came
// late) is re-created (2); a claim lost with its record takes the slot again
// if it is still free (3). 1: renewed; 0: lost.
// With ARGV progress (JSON, see Progress) it also records the pull's
// progress and the host's heartbeat (and its groups' heartbeat indexes,
// the ngroups KEYS after the named ones): a pulling host needs no write
// of either of its own. The host's other claims (a swarm's extra and
// rescue sources) are renewed in the same call: each is a triple of ARGV
// after the eleventh (cid, slot, source zone) and its lease key follows
// the groups' in KEYS. Returns one result per claim, the first claim's
// first, and then the free slots the host's extra claims could take
// and the hosts waiting for a first source (see Renewals).
// ARGV: host, gen, digest, slot, lease_ms, maxlen, repair, cid, progress,
// source_zone, ngroups, [cid, slot, source_zone]...
var renewScript = newScript(
	[]string{"lease", "claims", "leases", "generation", "sync", "full", "part", "holders", "running", "repairing", "events", "progress", "heartbeats", "zfull", "starved"}, `
local host, gen, digest = ARGV[1], ARGV[2], ARGV[3]
local now = nowMS()
local expiry = now + tonumber(ARGV[5])
local ngroups = tonumber(ARGV[11] or '0')
if (ARGV[9] or '') ~= '' then
  redis.call('HSET', K.progress, host, ARGV[9])
  redis.call('ZADD', K.heartbeats, now, host)
  for i = NAMED + 1, NAMED + ngroups do redis.call('ZADD', KEYS[i], now, host) end
end
local g = redis.call('HMGET', K.generation, 'id', 'state', 'digest')
local current = g[1] == gen and g[3] == digest -- isCurrent, from the same read
local function renew(lease, slot, cid, zone)
  local want = gen .. ' ' .. slot
  if g[1] == gen and g[2] == 'failed' then return 0 end -- cancelled: the pull stops
  if redis.call('GET', lease) == want then
    redis.call('PEXPIRE', lease, ARGV[5])
    redis.call('ZADD', K.leases, expiry, cid)
    return 1
  end
  if not current then return 0 end
  local c = redis.call('HGET', K.claims, cid)
  local res, typ = 2, 'lease_recreated'
  if not (c and string.sub(c, 1, #want + 1) == want .. ' ') then
    if takeSlot(slot) == 0 then return 0 end
    local record = want .. ' ' .. now .. ' ' .. digest
    if (zone or '') ~= '' then record = record .. ' ' .. zone end -- the source's zone, as the claim wrote it
    redis.call('HSET', K.claims, cid, record)
    res, typ = 3, 'claim_restored'
  end
  redis.call('SET', lease, want, 'PX', ARGV[5])
  redis.call('ZADD', K.leases, expiry, cid)
  redis.call('HSET', K.holders, slot, cid)
  if ARGV[7] == '1' then
    redis.call('SADD', K.repairing, host)
  else
    redis.call('SADD', K.running, host)
  end
  event(ARGV[6], typ, host, gen, slot, '')
  return res
end
local out = {renew(K.lease, ARGV[4], ARGV[8], ARGV[10])}
local n = 0
for i = 12, #ARGV - 2, 3 do
  n = n + 1
  out[#out + 1] = renew(KEYS[NAMED + ngroups + n], ARGV[i + 1], ARGV[i], ARGV[i + 2])
end
-- The slots an extra claim (same zone) could take: its zone's index of
-- whole sources' free slots, or the global one (see Renewals.Free).
out[#out + 1] = redis.call('SCARD', K.zfull)
-- The hosts waiting for a first source (see Renewals.Starved).
out[#out + 1] = redis.call('ZCOUNT', K.starved, now - 35000, '+inf')
return out
`)

// finishScript releases a claim and records host as holding the generation
// and as a source with uploads slots (its free slots move to the index of
// whole sources). ARGV repaired = 1 (the host changed its tree to repair
// drift) counts one repair; either way the host is no longer listed as
// repairing. The host's other claims listed after progress end first.
// A progress (JSON, see Progress) is recorded as the host's. Returns the
// generation's fields and values (HGETALL) when it is current, else an
// empty array.
// ARGV: host, gen, digest, slot, uploads, maxlen, repaired, cid,
// progress, [cid, slot]...
var finishScript = newScript(
	[]string{"lease", "claims", "leases", "holders", "sync", "full", "part", "zfull", "zpart", "szfull", "szpart", "zpull", "bad", "generation", "running", "finished", "failures", "events", "dead", "strikes", "repairing", "repairs", "rescue", "zwait", "szwait", "starved", "slow", "hosts", "progress"}, `
local host, gen, digest, slot = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
-- The host's other claims (a swarm's extra and rescue sources; pairs of
-- cid and slot after the ninth ARGV, each with its lease key after the
-- named KEYS, their sources in the zone of the first claim's) end first,
-- as the release script would end them.
local lease, n = K.lease, 0
for i = 10, #ARGV - 1, 2 do
  n = n + 1
  K.lease = KEYS[NAMED + n]
  release(ARGV[i], gen, digest, ARGV[i + 1], true)
  event(ARGV[6], 'release', host, gen, ARGV[i + 1], '')
end
K.lease = lease
release(ARGV[8], gen, digest, slot, true)
if not isCurrent(gen, digest) then return {} end
if ARGV[9] ~= '' then redis.call('HSET', K.progress, host, ARGV[9]) end
redis.call('SREM', K.rescue, host .. '#' .. RESCUE) -- a whole source offers none
local src = slotSource(slot)
if src then redis.call('HDEL', K.strikes, src) end
redis.call('SREM', K.running, host)
redis.call('SADD', K.finished, host)
redis.call('SREM', K.repairing, host)
local repaired = ARGV[7] == '1'
if redis.call('SISMEMBER', K.bad, host) == 0 then
  local uploads = tonumber(ARGV[5])
  for i = 0, uploads - 1 do
    local s = host .. '#' .. i
    if redis.call('SREM', K.part, s) == 1 then redis.call('SADD', K.full, s) end
    if K.zfull ~= K.full and redis.call('SREM', K.zpart, s) == 1 then redis.call('SADD', K.zfull, s) end
  end
  offer(host, uploads, false)
end
redis.call('HDEL', K.failures, host)
if repaired then
  redis.call('HINCRBY', K.repairs, host, 1)
  event(ARGV[6], 'repaired', host, gen, slot, '')
else
  event(ARGV[6], 'finish', host, gen, slot, '')
end
notify('master', 'finish ' .. host)
return redis.call('HGETALL', K.generation)
`)

// failScript releases a claim after a failed pull, per the verdict on the
// source: 0 ok: the slot returns; 1 dead: the slot backs off, for a time
// that doubles with each strike against the source, then returns; 2 bad:
// the source is barred for the generation and its slots (as many as it
// registered) withdrawn. Unless the host goes on pulling from another source (switch
// = 1), its own slots, offered while it pulled, are withdrawn if it does
// not hold the generation.
// ARGV: host, gen, digest, slot, verdict, failure_json, maxlen, reason,
// switch, uploads, backoff_ms, backoff_max_ms, cid
var failScript = newScript(
	[]string{"lease", "claims", "leases", "holders", "sync", "full", "part", "zfull", "szfull", "szpart", "zpull", "bad", "generation", "running", "finished", "failures", "events", "dead", "strikes", "hosts", "rescue", "szwait", "starved", "slow"}, `
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
  local uploads = 16 -- as many as it registered
  local info = redis.call('HGET', K.hosts, src)
  if info then
    local ok, h = pcall(cjson.decode, info)
    if ok and type(h) == 'table' and type(h.uploads) == 'number' then uploads = math.max(h.uploads, 1) end
  end
  for i = 0, uploads - 1 do takeSlot(src .. '#' .. i) end
  event(ARGV[7], 'bad_source', src, gen, slot, ARGV[8])
end
if ARGV[9] ~= '1' and redis.call('SISMEMBER', K.finished, host) == 0 then
  for i = 0, tonumber(ARGV[10]) - 1 do
    takeSlot(host .. '#' .. i)
    redis.call('ZREM', K.dead, host .. '#' .. i)
  end
  takeSlot(host .. '#' .. RESCUE)
end
redis.call('SREM', K.running, host)
redis.call('HSET', K.failures, host, ARGV[6])
local typ = 'fail'
if ARGV[9] == '1' then typ = 'switch' end
event(ARGV[7], typ, host, gen, slot, ARGV[8])
return 1
`)

// dueScript finds the work of one reaper tick, a bounded batch of each:
// it offers again the dead slots whose back-off is over, and returns the
// claims whose lease-expiry score has passed (the reaper expires each with
// expireScript, which names the lease key among its KEYS).
// A dead slot offered again goes to the global indexes only (its zone's
// index is named by no key here): the source's next offer (a finish, or a
// heartbeat's, once a minute) puts it back in its zone's.
// ARGV: batch, grace_ms. Returns {claim ids due, the zone of each one's
// source ("" for none)}: the reaper returns each slot to its zone's index.
var dueScript = newScript(
	[]string{"leases", "dead", "sync", "full", "part", "bad", "generation", "finished", "heartbeats", "holders", "claims", "rescue", "slow"}, `
local now = nowMS()
local cutoff = now - tonumber(ARGV[2])
local origin = redis.call('HGET', K.generation, 'origin')
for _, slot in ipairs(redis.call('ZRANGEBYSCORE', K.dead, '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))) do
  redis.call('ZREM', K.dead, slot)
  local src = slotSource(slot)
  if src and redis.call('SISMEMBER', K.bad, src) == 0 and not claimed(slot) then
    local s = redis.call('ZSCORE', K.heartbeats, src)
    if src == origin or (s and tonumber(s) >= cutoff) then freeSlot(slot, isWhole(src), K.full, K.part) end
  end
end
local due = redis.call('ZRANGEBYSCORE', K.leases, '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local zones = {}
for i, cid in ipairs(due) do
  local c = redis.call('HGET', K.claims, cid)
  zones[i] = c and zoneOf(string.match(c, '^%S+ %S+ %S+ %S+ (%S+)')) or ''
end
return {due, zones}
`)

// expireScript ends claim cid if its lease is gone: the claim record is
// removed and its slot returns (if its generation is current and its source
// neither bad nor silent). A lease still there (renewed after the index
// was read) only has its expiry score brought up to date.
// K.szfull, K.szpart are the indexes of the zone the claim record names.
// ARGV: cid, grace_ms, maxlen. Returns 1 when it expired the claim.
var expireScript = newScript(
	[]string{"lease", "claims", "leases", "running", "sync", "full", "part", "szfull", "szpart", "bad", "generation", "finished", "heartbeats", "holders", "events", "rescue", "szwait", "starved", "slow", "hosts"}, `
local cid = ARGV[1]
local now = nowMS()
local ttl = redis.call('PTTL', K.lease)
if ttl > 0 then
  redis.call('ZADD', K.leases, now + ttl, cid)
  return 0
end
redis.call('ZREM', K.leases, cid)
local val = redis.call('HGET', K.claims, cid)
if not val then return 0 end
redis.call('HDEL', K.claims, cid)
local host = string.match(cid, '^([^/]*)')
if host == cid then redis.call('SREM', K.running, host) end
local gen, slot, _, digest = string.match(val, '^(%S+) (%S+) ?(%S*) ?(%S*)')
if slot and redis.call('HGET', K.holders, slot) == cid then redis.call('HDEL', K.holders, slot) end
local cur = redis.call('HMGET', K.generation, 'id', 'origin', 'digest')
local src = slot and slotSource(slot)
if gen == cur[1] and (digest == '' or digest == cur[3]) and src and redis.call('SISMEMBER', K.bad, src) == 0 then
  local s = redis.call('ZSCORE', K.heartbeats, src)
  if src == cur[2] or (s and tonumber(s) >= now - tonumber(ARGV[2])) then freeSlot(slot, isWhole(src), K.szfull, K.szpart, K.szwait) end
end
event(ARGV[3], 'lease_expired', host, gen or '', slot or '', '')
return 1
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
	[]string{"hosts", "heartbeats", "generation", "finished", "running", "sync", "full", "part", "zfull", "zpart", "holders", "claims", "dead", "bad", "events", "leases", "zwait", "starved", "slow"}, `
local host = ARGV[1]
local now = nowMS()
if ARGV[2] ~= '' then redis.call('HSET', K.hosts, host, ARGV[2]) end
redis.call('ZADD', K.heartbeats, now, host)
-- The host's groups' heartbeat indexes follow the named keys.
for i = NAMED + 1, #KEYS do redis.call('ZADD', KEYS[i], now, host) end
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

// cancelScript cancels generation gen while it runs (fanout-master
// cancel): it is marked failed with reason, its free slots are withdrawn,
// and idle hosts are woken to read it. Pulls stop at their next renewal,
// which renewScript refuses. ARGV: gen, digest, reason, maxlen. 1 when
// cancelled.
var cancelScript = newScript([]string{"generation", "sync", "full", "part", "rescue", "events"}, `
local g = redis.call('HMGET', K.generation, 'id', 'state', 'digest')
if g[1] ~= ARGV[1] or g[3] ~= ARGV[2] or g[2] ~= 'running' then return 0 end
redis.call('HSET', K.generation, 'state', 'failed', 'error', ARGV[3])
redis.call('DEL', K.sync, K.full, K.part, K.rescue)
event(ARGV[4], 'cancel', '', ARGV[1], '', ARGV[3])
notify('generations', 'gen ' .. ARGV[1] .. ' ' .. ARGV[2])
return 1
`)

// switchScript orders the hosts of a generation switched fleet-wide
// (publish --switch fleet) to switch: once, while it runs. ARGV: gen,
// digest, maxlen. Returns the order's Redis time (ms), 0 when not given.
var switchScript = newScript([]string{"generation", "events"}, `
local g = redis.call('HMGET', K.generation, 'id', 'state', 'digest', 'switch', 'switch_at')
if g[1] ~= ARGV[1] or g[3] ~= ARGV[2] or g[2] ~= 'running' or g[4] ~= 'fleet' or (g[5] or '0') ~= '0' then return 0 end
local now = nowMS()
redis.call('HSET', K.generation, 'switch_at', now)
event(ARGV[3], 'switch', '', ARGV[1], '', 'every expected host holds the release: switch')
notify('generations', 'switch ' .. ARGV[1] .. ' ' .. ARGV[2])
return now
`)

// switchedScript records that host switched to the release of the
// current generation (publish --switch fleet), and wakes the master.
// ARGV: host, gen, digest. 1 when recorded.
var switchedScript = newScript([]string{"generation", "switched"}, `
if not isCurrent(ARGV[2], ARGV[3]) then return 0 end
redis.call('SADD', K.switched, ARGV[1])
notify('master', 'finish ' .. ARGV[1])
return 1
`)

// offerScript offers host's slots for a generation; force (the origin) also
// cuts short a dead slot's back-off. With announce, it then tells the
// minions of the generation ("gen <id> <digest> <fields>" on the
// generations channel, fields the generation hash as a JSON object: see
// Client.Announced): the master announces a generation once its slots
// are on offer, so the hosts it wakes find a source, and claim it without
// reading the generation first.
// With rescue, a partial source or the origin also offers its rescue slot.
// The origin's offer clears the generation's origin_pending (see none in
// claimScript).
// ARGV: host, gen, digest, uploads, force, announce, rescue
var offerScript = newScript([]string{"generation", "finished", "sync", "full", "part", "zfull", "zpart", "holders", "claims", "dead", "bad", "rescue", "running", "leases", "events", "zwait", "starved", "slow", "hosts"}, `
if not isCurrent(ARGV[2], ARGV[3]) then return 0 end
if redis.call('SISMEMBER', K.bad, ARGV[1]) == 1 then return 0 end
offer(ARGV[1], tonumber(ARGV[4]), ARGV[5] == '1', ARGV[7] == '1')
if ARGV[1] == current().origin then redis.call('HDEL', K.generation, 'origin_pending') end
if ARGV[6] == '1' then
  local h, fields = redis.call('HGETALL', K.generation), {}
  for i = 1, #h, 2 do fields[h[i]] = h[i + 1] end
  notify('generations', 'gen ' .. ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. cjson.encode(fields))
end
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

// forgetScript removes a host from the registry and every set: its slots
// (as many as it registered, 16 if unknown, and its rescue slot), their
// holders and back-offs, and its claims (up to maxClaims at once); K.zfull,
// K.zpart are the indexes of its zone; the keys after the named ones are
// its groups' heartbeat indexes.
// ARGV: host, maxClaims
var forgetScript = newScript(
	[]string{"hosts", "heartbeats", "finished", "running", "sync", "full", "part", "zfull", "zpart", "claims", "leases", "lease", "holders", "dead", "repairing", "repairs", "strikes", "zbytes", "hooks", "rescue", "wait", "zwait"}, `
local host = ARGV[1]
redis.call('ZREM', K.wait, host)
redis.call('ZREM', K.zwait, host)
local uploads = 16
local info = redis.call('HGET', K.hosts, host)
if info then
  local ok, h = pcall(cjson.decode, info)
  if ok and type(h) == 'table' and type(h.uploads) == 'number' then uploads = math.max(h.uploads, 1) end
end
redis.call('HDEL', K.hosts, host)
redis.call('ZREM', K.heartbeats, host)
redis.call('SREM', K.finished, host)
redis.call('SREM', K.running, host)
redis.call('SREM', K.repairing, host)
redis.call('HDEL', K.repairs, host)
redis.call('HDEL', K.hooks, host)
redis.call('HDEL', K.strikes, host)
redis.call('HDEL', K.zbytes, host)
for i = 0, uploads - 1 do
  local slot = host .. '#' .. i
  takeSlot(slot)
  if K.zfull ~= K.full then
    redis.call('SREM', K.zfull, slot)
    redis.call('SREM', K.zpart, slot)
  end
  redis.call('ZREM', K.dead, slot)
  redis.call('HDEL', K.holders, slot)
end
takeSlot(host .. '#' .. RESCUE)
-- Its groups' heartbeat indexes follow the named keys.
for i = NAMED + 1, #KEYS do redis.call('ZREM', KEYS[i], host) end
for n = 0, tonumber(ARGV[2]) do
  local cid = host
  if n > 0 then cid = host .. '/' .. n end
  local c = redis.call('HGET', K.claims, cid)
  if c then
    local slot = string.match(c, '^%S+ (%S+)')
    if slot and redis.call('HGET', K.holders, slot) == cid then redis.call('HDEL', K.holders, slot) end
    redis.call('HDEL', K.claims, cid)
  end
  redis.call('ZREM', K.leases, cid)
end
redis.call('DEL', K.lease)
return 1
`)

// releaseScript gives back one of a host's claims that its pull no longer
// needs (a slow source replaced, an extra source after the endgame): the
// slot returns, nothing is recorded against the source.
// ARGV: host, gen, digest, slot, maxlen, cid
var releaseScript = newScript([]string{"lease", "claims", "leases", "holders", "sync", "full", "part", "zfull", "szfull", "szpart", "zpull", "bad", "generation", "finished", "events", "rescue", "running", "szwait", "starved", "slow", "hosts"}, `
release(ARGV[6], ARGV[2], ARGV[3], ARGV[4], true)
event(ARGV[5], 'release', ARGV[1], ARGV[2], ARGV[4], '')
return 1
`)

// bypassScript moves host's first claim off its source, a partial host
// (the relay) that relays too slowly, onto the relay's own claim: the slot
// of the grandparent, whose rescue slot host holds with claim rcid. The
// relay's claim ends (its lease key deleted, so its next renewal finds it
// lost, and it is told on its wake channel to claim again now); host's
// rescue claim ends and the rescue slot returns; the relay's slots are
// withdrawn and not offered again for the generation (K.slow): a slow
// uplink serves nobody, and the relay, with nothing pulling from it but
// rescue claims, takes the end of a chain. Nothing happens unless the
// claims are still as host saw them: the relay's first claim is on the
// rescue slot's source, and each slot's holder is the claim named; and
// never for a host that was bypassed itself (its own link is slow).
// KEYS after the named ones: the relay's lease key, the rescue claim's.
// ARGV: host, gen, digest, slot (host's first claim's), rescue cid,
// rescue slot, lease_ms, maxlen.
// Returns {'ok', slot, 'whole' or 'partial', source zone} or {'moved'} or
// {'stale'}.
var bypassScript = newScript([]string{"lease", "generation", "finished", "claims", "holders", "leases", "running", "sync", "full", "part", "rescue", "slow", "events"}, `
local host, gen, digest, mslot, rcid, rslot = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local relayLease, rescueLease = KEYS[NAMED + 1], KEYS[NAMED + 2]
if not isCurrent(gen, digest) then return {'stale'} end
-- record returns the slot and source zone of claim cid's record for this
-- generation, held by cid.
local function record(cid)
  local c = redis.call('HGET', K.claims, cid)
  if not c then return nil end
  local cg, slot, _, cd, zone = string.match(c, '^(%S+) (%S+) (%S+) (%S+) ?(%S*)')
  if cg ~= gen or cd ~= digest or redis.call('HGET', K.holders, slot) ~= cid then return nil end
  return slot, zone or ''
end
local relay, gp = slotSource(mslot), slotSource(rslot)
if not relay or not gp or not isRescue(rslot) or record(host) ~= mslot or record(rcid) ~= rslot then return {'moved'} end
-- A host bypassed itself never bypasses: its own link is what is slow, and
-- through it two sources' rates say nothing of theirs.
if isSlow(host) then return {'moved'} end
if isWhole(relay) then return {'moved'} end
local up, zone = record(relay)
if not up or isRescue(up) or slotSource(up) ~= gp then return {'moved'} end
local now = nowMS()
-- The relay's claim is host's now; the relay is running again once it
-- claims another source.
redis.call('DEL', relayLease)
redis.call('HDEL', K.claims, relay)
redis.call('ZREM', K.leases, relay)
redis.call('SREM', K.running, relay)
local rec = gen .. ' ' .. up .. ' ' .. now .. ' ' .. digest
if zone ~= '' then rec = rec .. ' ' .. zone end
redis.call('HSET', K.claims, host, rec)
redis.call('HSET', K.holders, up, host)
redis.call('SET', K.lease, gen .. ' ' .. up, 'PX', ARGV[7])
redis.call('ZADD', K.leases, now + tonumber(ARGV[7]), host)
redis.call('HDEL', K.holders, mslot)
-- The rescue claim ends; its slot returns for others.
redis.call('DEL', rescueLease)
redis.call('HDEL', K.claims, rcid)
redis.call('ZREM', K.leases, rcid)
redis.call('HDEL', K.holders, rslot)
local whole = isWhole(gp)
freeSlot(rslot, whole)
-- The relay serves nobody new this generation.
redis.call('SADD', K.slow, relay .. ' ' .. gen)
for i = 0, UPLOADS do takeSlot(relay .. '#' .. i) end
event(ARGV[8], 'bypass', host, gen, up, relay .. ' relayed too slowly: pulling from its source ' .. gp)
notify('wake:' .. relay, 'slow ' .. gen)
local kind = 'partial'
if whole then kind = 'whole' end
return {'ok', up, kind, zone}
`)

// zoneBytesScript adds to host's count of bytes received from sources in
// other zones, if generation (gen, digest) is still current: bytes of an
// older generation never count for a newer one.
// ARGV: host, gen, digest, bytes. 1 when counted.
var zoneBytesScript = newScript([]string{"generation", "zbytes"}, `
if not isCurrent(ARGV[2], ARGV[3]) then return 0 end
redis.call('HINCRBY', K.zbytes, ARGV[1], ARGV[4])
return 1
`)
