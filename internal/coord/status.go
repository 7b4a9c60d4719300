package coord

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Status is everything `fanout-master status` shows.
type Status struct {
	// Name is the task's name (DefaultTask for the plain task); Task the
	// task key's value.
	Name       string
	Task       string
	Generation Generation
	// State is idle (no generation), failed, done (the generation is done,
	// or every expected host holds it), or running.
	State    string
	Expected []string // hosts alive in the registry (of the generation's groups, if it has any)
	Finished []string
	Running  []string
	Sources  []string // free slots
	Failures map[string]Failure
	Hosts    []Host
	Lookup   int64
	Claims   map[string]string // host → slot(s) it pulls from, comma-separated, its own claim's first
	Progress map[string]Progress
	// Repairing lists finished hosts repairing drift on their disk;
	// Repairs counts each host's repairs in this generation.
	Repairing []string
	Repairs   map[string]int64
	// SlowRelays lists the hosts that relayed this generation too slowly
	// for the host behind them, which took their place on their source
	// (see Client.Bypass): their uplinks are the fleet's slow ones.
	SlowRelays []string
	// Switched lists the hosts that switched to the release of a
	// generation switched fleet-wide (Generation.Switch); until every
	// expected host did, it is not done.
	Switched []string
	// CrossZone maps a host to the bytes it received in this generation
	// from sources in another zone (see CrossZone); hosts without a zone
	// are not counted.
	CrossZone map[string]int64
	// Hooks holds each host's hook run for this generation (hosts with
	// no hook configured have none). An expected host whose hook is
	// still running keeps the generation from being done.
	Hooks map[string]HookRecord
	// Watch is the master's watch-mode state; nil when no master ever
	// ran with --watch.
	Watch *WatchState
	// Now is Redis's clock when the status was read: every time above
	// (heartbeats, publish, done) is Redis time, so durations are
	// computed against Now, never against the reader's clock.
	Now time.Time
}

// Status reads the whole protocol state: in one round trip for a fleet
// of up to scanPage hosts, and by scans for a larger one (see pages), so
// that neither the master's completion check nor an operator's status
// holds Redis for milliseconds with a whole read of 10,000 entries.
func (c *Client) Status(ctx context.Context) (Status, error) {
	k := c.keys
	var (
		task, lookup *redis.StringCmd
		gen, watch   *redis.MapStringStringCmd
		now          *redis.TimeCmd
		// Keys with an entry per host (or per slot) are scanned.
		fin, run, src, repairing, switched, slow                  pages
		fails, claims, hostsIn, beats, progress, repairs, zb, hks pages
	)
	sent := c.cfg.Now()
	_, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		task = p.Get(ctx, k.Task())
		gen = p.HGetAll(ctx, k.Generation())
		lookup = p.Get(ctx, k.Lookup())
		watch = p.HGetAll(ctx, k.Watch())
		now = p.Time(ctx)
		fin = setPages(ctx, p, c.rdb, k.Finished())
		run = setPages(ctx, p, c.rdb, k.Running())
		src = setPages(ctx, p, c.rdb, k.Sync())
		repairing = setPages(ctx, p, c.rdb, k.Repairing())
		switched = setPages(ctx, p, c.rdb, k.Switched())
		slow = setPages(ctx, p, c.rdb, k.SlowRelays())
		fails = hashPages(ctx, p, c.rdb, k.Failures())
		claims = hashPages(ctx, p, c.rdb, k.Claims())
		hostsIn = hashPages(ctx, p, c.rdb, k.Hosts())
		beats = zsetPages(ctx, p, c.rdb, k.Heartbeats())
		progress = hashPages(ctx, p, c.rdb, k.Progress())
		repairs = hashPages(ctx, p, c.rdb, k.Repairs())
		zb = hashPages(ctx, p, c.rdb, k.ZoneBytes())
		hks = hashPages(ctx, p, c.rdb, k.Hooks())
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return Status{}, fmt.Errorf("read status: %w", err)
	}
	c.observe(now.Val(), sent, c.cfg.Now())
	var rerr error // the first failed scan
	set := func(pg pages) []string {
		m, err := pg.members()
		rerr = cmp.Or(rerr, err)
		return m
	}
	hash := func(pg pages) map[string]string {
		m, err := pg.pairs()
		rerr = cmp.Or(rerr, err)
		return m
	}
	st := Status{
		Now:        now.Val(),
		Repairing:  set(repairing),
		Switched:   set(switched),
		SlowRelays: set(slow),
		Repairs:    map[string]int64{},
		CrossZone:  map[string]int64{},
		Name:       c.keys.TaskName(),
		Task:       task.Val(),
		Finished:   set(fin),
		Running:    set(run),
		Sources:    set(src),
		Failures:   map[string]Failure{},
		Claims:     map[string]string{},
		Progress:   map[string]Progress{},
		Hosts:      c.hosts(hash(hostsIn), hash(beats), now.Val()),
		Expected:   []string{},
	}
	failsIn, claimsIn, progressIn, repairsIn, zoneBytes, hooks := hash(fails), hash(claims), hash(progress), hash(repairs), hash(zb), hash(hks)
	if rerr != nil {
		return Status{}, fmt.Errorf("read status: %w", rerr)
	}
	if g := gen.Val(); g["state"] != "" || g["id"] != "" {
		if st.Generation, err = parseGeneration(k.Generation(), g); err != nil {
			return Status{}, err
		}
	}
	st.Hooks = hookRecords(hooks, st.Generation.Ref())
	if st.Watch, err = parseWatch(k.Watch(), watch.Val()); err != nil {
		return Status{}, err
	}
	for h, v := range repairsIn {
		st.Repairs[h], _ = strconv.ParseInt(v, 10, 64)
	}
	for h, v := range zoneBytes {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n > 0 {
			st.CrossZone[h] = n
		}
	}
	st.SlowRelays = slowHosts(st.SlowRelays, st.Generation.ID)
	st.Lookup, _ = strconv.ParseInt(lookup.Val(), 10, 64)
	for h, v := range failsIn {
		var f Failure
		if json.Unmarshal([]byte(v), &f) == nil {
			st.Failures[h] = f
		}
	}
	for h, v := range progressIn {
		var p Progress
		if json.Unmarshal([]byte(v), &p) == nil && p.Gen == st.Generation.ID {
			st.Progress[h] = p
		}
	}
	// A host's extra claims ("host/n") are listed with its first, in
	// claim order.
	cids := make([]string, 0, len(claimsIn))
	for cid := range claimsIn {
		cids = append(cids, cid)
	}
	slices.Sort(cids)
	for _, cid := range cids {
		f := strings.Fields(claimsIn[cid])
		if len(f) < 2 {
			continue
		}
		h, _, extra := strings.Cut(cid, "/")
		switch {
		case st.Claims[h] == "":
			st.Claims[h] = f[1]
		case extra:
			st.Claims[h] += "," + f[1]
		default: // the host's own claim comes first
			st.Claims[h] = f[1] + "," + st.Claims[h]
		}
	}
	alive := map[string]bool{st.Generation.Origin: true}
	for _, h := range st.Hosts {
		if h.Alive {
			alive[h.ID] = true
			if InGroups(h.Groups, st.Generation.Groups) {
				st.Expected = append(st.Expected, h.ID)
			}
		}
	}
	// Slots of silent hosts stay in the set until a claim meets them (a
	// claim's cost must not grow with the fleet): status does not show
	// them as sources.
	live := st.Sources[:0]
	for _, slot := range st.Sources {
		if i := strings.LastIndexByte(slot, '#'); i > 0 && alive[slot[:i]] {
			live = append(live, slot)
		}
	}
	st.Sources = live
	st.State = state(st)
	return st, nil
}

// slowHosts returns the hosts of members, Keys.SlowRelays's, that name
// generation gen (see slowMember), sorted.
func slowHosts(members []string, gen int64) []string {
	if gen == 0 {
		return nil
	}
	suffix := " " + strconv.FormatInt(gen, 10)
	var out []string
	for _, m := range members {
		if h, ok := strings.CutSuffix(m, suffix); ok && h != "" {
			out = append(out, h)
		}
	}
	slices.Sort(out)
	return out
}

func state(st Status) string {
	switch g := st.Generation; {
	case g.ID == 0:
		return StateIdle
	case g.State == StateFailed:
		return StateFailed
	case g.State == StateDone:
		return StateDone
	}
	if len(st.Expected) == 0 {
		return StateRunning
	}
	finished := make(map[string]bool, len(st.Finished))
	for _, h := range st.Finished {
		finished[h] = true
	}
	for _, h := range st.Repairing {
		delete(finished, h) // a repairing host's tree differs: not done yet
	}
	for h, r := range st.Hooks {
		if r.State == HookRunning {
			delete(finished, h) // its hook still runs: not done yet
		}
	}
	if st.Generation.Switch == SwitchFleet {
		switched := make(map[string]bool, len(st.Switched))
		for _, h := range st.Switched {
			switched[h] = true
		}
		for h := range finished {
			if !switched[h] {
				delete(finished, h) // holds the release, not switched yet
			}
		}
	}
	for _, h := range st.Expected {
		if !finished[h] {
			return StateRunning
		}
	}
	return StateDone
}

// Ready reports whether every expected host holds the generation and
// none repairs it: for a generation switched fleet-wide, the moment the
// master orders the switch.
func (st Status) Ready() bool {
	if len(st.Expected) == 0 || st.Generation.State != StateRunning {
		return false
	}
	finished := make(map[string]bool, len(st.Finished))
	for _, h := range st.Finished {
		finished[h] = true
	}
	for _, h := range st.Repairing {
		delete(finished, h)
	}
	for _, h := range st.Expected {
		if !finished[h] {
			return false
		}
	}
	return true
}

// Counts are the sizes the master checks each tick: O(log N) to read,
// where Status is O(N).
type Counts struct {
	Finished, Alive, Repairing int64
}

// Count reads the counts of finished, alive (heartbeat within HostGrace,
// judged by this host's clock corrected to Redis time) and repairing
// hosts. Completion is possible only when Finished >= Alive and Repairing
// is 0; Status then tells for sure. For a generation of groups, Alive is
// the alive hosts of its largest group (a host may be in several: the
// union is not counted, and the largest group is a lower bound of it).
func (c *Client) Count(ctx context.Context, groups []string) (Counts, error) {
	k := c.keys
	var fin, rep *redis.IntCmd
	var alive []*redis.IntCmd
	cutoff := strconv.FormatInt(c.Now().Add(-c.cfg.HostGrace).UnixMilli(), 10)
	_, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		fin = p.SCard(ctx, k.Finished())
		rep = p.SCard(ctx, k.Repairing())
		if len(groups) == 0 {
			alive = append(alive, p.ZCount(ctx, k.Heartbeats(), cutoff, "+inf"))
		}
		for _, g := range groups {
			alive = append(alive, p.ZCount(ctx, k.GroupHeartbeats(g), cutoff, "+inf"))
		}
		return nil
	})
	if err != nil {
		return Counts{}, fmt.Errorf("count hosts: %w", err)
	}
	n := Counts{Finished: fin.Val(), Repairing: rep.Val()}
	for _, a := range alive {
		n.Alive = max(n.Alive, a.Val())
	}
	return n, nil
}

// CrossZoneTotal is the sum of CrossZone: the bytes of this generation
// that crossed zones.
func (st Status) CrossZoneTotal() int64 {
	var n int64
	for _, b := range st.CrossZone {
		n += b
	}
	return n
}
