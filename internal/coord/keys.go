// Package coord is fanout's whole Redis protocol: the key names, the Lua
// scripts that claim, renew, finish, fail and reap source slots, generation
// publishing, the host registry and status. Every state change that reads
// and writes several keys is one script, so it is atomic.
//
// A generation is named by its id and its manifest digest together (Ref):
// ids restart when Redis loses its data, and a script that compared ids alone
// could count a host finished for content it does not hold. Times that decide
// liveness (heartbeats, lease and back-off expiry) are Redis TIME, never a
// host's clock.
//
// On Redis Cluster, give every key one hash slot with a prefix that holds a
// hash tag, such as "{fanout}:". Reap builds lease key names inside its
// script from the prefix; with a hash-tagged prefix they share the slot.
package coord

import (
	"strconv"
	"strings"
)

// Keys names every key of the protocol under a prefix, for one task.
//
// The keys of the plain task (Name empty or DefaultTask) are the seed's:
// PREFIX task, PREFIX synchronize_queue and so on. A named task's keys
// are the same names under PREFIX t:NAME: (PREFIX t:models:task). Only the
// host registry (Hosts), the master's registration (Master) and the task
// list (Tasks, TasksChannel) are shared by every task: heartbeats, queues,
// claims, events and history are each task's own, so a task's cost and
// status are its own, and a host counts for a task only while it runs it.
type Keys struct {
	Prefix string
	// Name is the task's name (see ValidTaskName); "" is DefaultTask.
	Name string
}

// ForTask returns the keys of task name ("" or DefaultTask: the plain
// task) under the same prefix.
func (k Keys) ForTask(name string) Keys {
	if name == DefaultTask {
		name = ""
	}
	return Keys{Prefix: k.Prefix, Name: name}
}

// TaskName is the task's name: DefaultTask for the plain task.
func (k Keys) TaskName() string {
	if k.Name == "" {
		return DefaultTask
	}
	return k.Name
}

// scope is the prefix of the task's own keys.
func (k Keys) scope() string {
	if k.Name == "" || k.Name == DefaultTask {
		return k.Prefix
	}
	return k.Prefix + "t:" + k.Name + ":"
}

// Tasks is the set of the names of the named tasks (publish --name adds
// one; retire removes it). The plain task is not in it: it is always
// there. Shared by every task.
func (k Keys) Tasks() string { return k.Prefix + "tasks" }

// TasksChannel carries "add NAME" and "retire NAME" when the task list
// changes: daemons start and stop the task at once rather than at their
// next read of Tasks. Shared by every task.
func (k Keys) TasksChannel() string { return k.Prefix + "tasks" }

// HashTag returns the hash tag of the prefix, as Redis Cluster reads it:
// the text between the first '{' and the first '}' after it, when not
// empty. Keys that share it share a hash slot; without one (false), keys
// are spread over the cluster and the scripts, which touch several keys,
// are refused (CROSSSLOT).
func (k Keys) HashTag() (string, bool) {
	open := strings.IndexByte(k.Prefix, '{')
	if open < 0 {
		return "", false
	}
	n := strings.IndexByte(k.Prefix[open+1:], '}')
	if n <= 0 {
		return "", false
	}
	return k.Prefix[open+1 : open+1+n], true
}

// The keys of the original cron scripts.

// Task is the absolute path operators set to start a task.
func (k Keys) Task() string { return k.scope() + "task" }

// Lookup counts minions that discovered the current generation.
func (k Keys) Lookup() string { return k.scope() + "lookup" }

// Sync is the set of free source slots ("host#n").
func (k Keys) Sync() string { return k.scope() + "synchronize_queue" }

// Running is the set of hosts pulling now.
func (k Keys) Running() string { return k.scope() + "running_queue" }

// Finished is the set of hosts that hold the current generation.
func (k Keys) Finished() string { return k.scope() + "finished_queue" }

// fanout's own keys.

// Generation is the hash describing the current generation.
func (k Keys) Generation() string { return k.scope() + "generation" }

// TaskOptions holds options written with the task by publish.
func (k Keys) TaskOptions() string { return k.scope() + "task_options" }

// Lease is a puller's lease, which expires unless renewed.
func (k Keys) Lease(host string) string { return k.scope() + "lease:" + host }

// Claims records every claim (host → "gen slot ms") so an expired lease's
// slot can be returned.
func (k Keys) Claims() string { return k.scope() + "claims" }

// Hosts maps a host id to its JSON registration.
func (k Keys) Hosts() string { return k.Prefix + "hosts" }

// Master holds the running master's registration (JSON, see MasterInfo),
// with a TTL it renews: publish reads it before it sets options an older
// master would drop.
func (k Keys) Master() string { return k.Prefix + "master" }

// Heartbeats maps a host id to its last heartbeat (Unix ms).
func (k Keys) Heartbeats() string { return k.scope() + "heartbeats" }

// Starved scores each host whose last first claim of the current
// generation found no source by that claim's Redis time (ms); a host's
// later first claim that succeeds removes it. A swarm's extra claims take
// nothing while it holds a recent entry (see claimScript): a dead host's
// entry ages out, where a count of hosts that looked the generation up
// never comes down. Reset by each publish.
func (k Keys) Starved() string { return k.scope() + "starved" }

// SlowRelays is the set of the hosts that relayed too slowly for the host
// behind them, which then pulled from their own source instead (see
// Client.Bypass): their slots are not offered again for the generation.
// A member is "host id", the host and the generation's id (see
// slowMember): a member of an older generation, which a master of a
// build before the bypass leaves in place, matches nothing. Reset by
// each publish.
func (k Keys) SlowRelays() string { return k.scope() + "slow_relays" }

// slowMember is host's member of Keys.SlowRelays for generation gen.
func slowMember(host string, gen int64) string { return host + " " + strconv.FormatInt(gen, 10) }

// Rescue is the set of free rescue slots ("host#64", see RescueSlot) of
// partial sources: never in synchronize_queue, taken only by rescue claims
// (see ClaimOptions.Rescue). Reset by each publish.
func (k Keys) Rescue() string { return k.scope() + "rescue_slots" }

// GroupHeartbeats maps the ids of the hosts of group to their last
// heartbeat (Redis ms), as Heartbeats does for every host.
func (k Keys) GroupHeartbeats(group string) string { return k.scope() + "heartbeats_group:" + group }

// Failures maps a host id to its last failure (JSON).
func (k Keys) Failures() string { return k.scope() + "failures" }

// BadSources is the set of hosts that served bad bytes this generation.
func (k Keys) BadSources() string { return k.scope() + "bad_sources" }

// Events is the capped stream of protocol events.
func (k Keys) Events() string { return k.scope() + "events" }

// History is the capped list of completed generations (JSON, newest first).
func (k Keys) History() string { return k.scope() + "history" }

// Progress maps a host id to its pull progress (JSON).
func (k Keys) Progress() string { return k.scope() + "progress" }

// Holders maps a claimed slot ("host#n") to the host pulling through it, so
// offering a host's slots costs O(slots) and never doubles a claimed one.
func (k Keys) Holders() string { return k.scope() + "holders" }

// DeadSlots is a sorted set of slots judged dead by a puller, scored by the
// Redis time (ms) at which they are offered again (a back-off, not a drop).
func (k Keys) DeadSlots() string { return k.scope() + "dead_slots" }

// Strikes counts, per source host, the dead verdicts since its last good
// transfer: each doubles the source's back-off.
func (k Keys) Strikes() string { return k.scope() + "strikes" }

// Repairing is the set of finished hosts repairing drift (files changed or
// lost on disk since they finished); they stay in finished_queue.
func (k Keys) Repairing() string { return k.scope() + "repairing" }

// Repairs counts, per host, the drift repairs of the current generation.
func (k Keys) Repairs() string { return k.scope() + "repairs" }

// Hooks maps a host id to its hook run for the current generation (JSON,
// see HookRecord); reset by each publish.
func (k Keys) Hooks() string { return k.scope() + "hooks" }

// Switched is the set of hosts that switched to the release of the
// current generation when it is switched fleet-wide (publish --switch
// fleet); reset by each publish.
func (k Keys) Switched() string { return k.scope() + "switched" }

// Pub/sub channels (not keys: they take no hash slot).

// GenerationsChannel carries "gen <id> <digest>" each time a generation is
// published: minions wait on it instead of polling.
func (k Keys) GenerationsChannel() string { return k.scope() + "generations" }

// MasterChannel carries what the master acts on at once: "finish <host>"
// (completion may be due) and "drift <host>".
func (k Keys) MasterChannel() string { return k.scope() + "master" }

// SyncFull indexes the free slots of sources that hold the whole generation
// (the origin and finished hosts), SyncPartial those of hosts still pulling:
// synchronize_queue is their union, kept for the seed's tools; claims
// sample the indexes, so their cost does not grow with the fleet.
func (k Keys) SyncFull() string { return k.scope() + "sync_full" }

// SyncPartial: see SyncFull.
func (k Keys) SyncPartial() string { return k.scope() + "sync_partial" }

// LeaseIndex scores each claim id by its lease's expiry (Redis time, ms), so
// the reaper finds expired claims without reading every claim.
func (k Keys) LeaseIndex() string { return k.scope() + "lease_expiry" }

// SyncFullZone indexes the free slots of whole sources in zone (a subset
// of SyncFull, kept by the scripts that offer and return slots of hosts
// of that zone), SyncPartialZone those of partial sources: a claim of a
// host in zone samples them first, so sources of its own zone are taken
// when one is free. An entry is a hint: a claim keeps it only while the
// slot is in the global index of the same kind, and drops it otherwise.
func (k Keys) SyncFullZone(zone string) string { return k.scope() + "sync_full:" + zone }

// SyncPartialZone: see SyncFullZone.
func (k Keys) SyncPartialZone(zone string) string { return k.scope() + "sync_partial:" + zone }

// ZonePulling is the set of claims of hosts of zone that serve (they offer
// slots while they pull, or once they hold the generation), while the
// claims last: a host of the zone that finds no source of its zone free
// waits for theirs rather than bring the content across once more.
func (k Keys) ZonePulling(zone string) string { return k.scope() + "zone_pulling:" + zone }

// Waiting is the queue (sorted set, by Redis time of the last claim) of
// hosts without a zone that wait for a source and listen on their wake
// channel: a slot of a source without a zone, freed, is handed to the
// first of them (see ClaimOptions.Queue).
func (k Keys) Waiting() string { return k.scope() + "waiting" }

// WaitingZone is Waiting for the hosts of zone: slots of that zone's
// sources are handed to them.
func (k Keys) WaitingZone(zone string) string { return k.scope() + "waiting:" + zone }

// waiting is the waiting queue of zone ("" for none).
func (k Keys) waiting(zone string) string {
	if zone == "" {
		return k.Waiting()
	}
	return k.WaitingZone(zone)
}

// WakeChannel is the pub/sub channel on which host is told that a slot
// was handed to it (message "GEN SLOT"); it claims to take it up.
func (k Keys) WakeChannel(host string) string { return k.scope() + "wake:" + host }

// ZoneBytes maps a host id to the bytes it received in the current
// generation from sources in another zone (both hosts with a zone, the
// zones different); reset by each publish.
func (k Keys) ZoneBytes() string { return k.scope() + "zone_bytes" }

// Watch is the master's watch-mode state (a hash; see WatchState), read
// by status. Protocol 4.
func (k Keys) Watch() string { return k.scope() + "watch" }
