// Package coord is fanout's whole Redis protocol: the key names, the Lua
// scripts that claim, renew, finish, fail and reap source slots, generation
// publishing, the host registry and status. Every state change that reads
// and writes several keys is one script, so it is atomic.
//
// On Redis Cluster, give every key one hash slot with a prefix that holds a
// hash tag, such as "{fanout}:". Reap builds lease key names inside its
// script from the prefix; with a hash-tagged prefix they share the slot.
package coord

// Keys names every key of the protocol under a prefix.
type Keys struct{ Prefix string }

// The keys of the original cron scripts.

// Task is the absolute path operators set to start a task.
func (k Keys) Task() string { return k.Prefix + "task" }

// Lookup counts minions that discovered the current generation.
func (k Keys) Lookup() string { return k.Prefix + "lookup" }

// Sync is the set of free source slots ("host#n").
func (k Keys) Sync() string { return k.Prefix + "synchronize_queue" }

// Running is the set of hosts pulling now.
func (k Keys) Running() string { return k.Prefix + "running_queue" }

// Finished is the set of hosts that hold the current generation.
func (k Keys) Finished() string { return k.Prefix + "finished_queue" }

// fanout's own keys.

// Generation is the hash describing the current generation.
func (k Keys) Generation() string { return k.Prefix + "generation" }

// TaskOptions holds options written with the task by publish.
func (k Keys) TaskOptions() string { return k.Prefix + "task_options" }

// Lease is a puller's lease, which expires unless renewed.
func (k Keys) Lease(host string) string { return k.Prefix + "lease:" + host }

// Claims records every claim (host → "gen slot ms") so an expired lease's
// slot can be returned.
func (k Keys) Claims() string { return k.Prefix + "claims" }

// Hosts maps a host id to its JSON registration.
func (k Keys) Hosts() string { return k.Prefix + "hosts" }

// Heartbeats maps a host id to its last heartbeat (Unix ms).
func (k Keys) Heartbeats() string { return k.Prefix + "heartbeats" }

// Failures maps a host id to its last failure (JSON).
func (k Keys) Failures() string { return k.Prefix + "failures" }

// BadSources is the set of hosts that served bad bytes this generation.
func (k Keys) BadSources() string { return k.Prefix + "bad_sources" }

// Events is the capped stream of protocol events.
func (k Keys) Events() string { return k.Prefix + "events" }

// History is the capped list of completed generations (JSON, newest first).
func (k Keys) History() string { return k.Prefix + "history" }

// Progress maps a host id to its pull progress (JSON).
func (k Keys) Progress() string { return k.Prefix + "progress" }
