package coord

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// historyMax bounds the completion history.
const historyMax = 100

// Completion records a finished generation.
type Completion struct {
	Gen       int64         `json:"gen"`
	Path      string        `json:"path"`
	Digest    string        `json:"digest"`
	Hosts     int           `json:"hosts"`
	Files     int64         `json:"files"`
	Bytes     int64         `json:"bytes"`
	Rounds    int           `json:"rounds"`
	Published time.Time     `json:"published"`
	Done      time.Time     `json:"done"`
	Elapsed   time.Duration `json:"elapsed_ns"`
	// Hook runs of the generation (absent in records of a fanout without
	// hooks): how many hosts ran theirs to exit 0, how many failed, and
	// the failed hosts (at most 32, sorted).
	HooksOK         int      `json:"hooks_ok,omitempty"`
	HooksFailed     int      `json:"hooks_failed,omitempty"`
	HookFailedHosts []string `json:"hook_failed_hosts,omitempty"`
	// What a rollback to the generation publishes again (absent in
	// records of a fanout before releases): its destination, groups,
	// delete option, the releases kept (0: not atomic, so hosts kept no
	// release of it) and, for a rollback itself, the generation it
	// returned to.
	Dest     string   `json:"dest,omitempty"`
	Groups   []string `json:"groups,omitempty"`
	Delete   bool     `json:"delete,omitempty"`
	Atomic   int      `json:"atomic,omitempty"`
	Rollback int64    `json:"rollback,omitempty"`
	Switch   string   `json:"switch,omitempty"`
}

// LocalPath is where hosts wrote the generation: its destination, or its
// path.
func (c Completion) LocalPath() string {
	if c.Dest != "" {
		return c.Dest
	}
	return c.Path
}

// History returns the last n completions, newest first.
func (c *Client) History(ctx context.Context, n int) ([]Completion, error) {
	vals, err := c.rdb.LRange(ctx, c.keys.History(), 0, int64(n)-1).Result()
	if err != nil {
		return nil, fmt.Errorf("read history: %w", err)
	}
	out := make([]Completion, 0, len(vals))
	for _, v := range vals {
		var rec Completion
		if err := json.Unmarshal([]byte(v), &rec); err == nil {
			out = append(out, rec)
		}
	}
	return out, nil
}

func (c *Client) recordCompletion(ctx context.Context, rec Completion) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	_, err = c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.LPush(ctx, c.keys.History(), b)
		p.LTrim(ctx, c.keys.History(), 0, historyMax-1)
		return nil
	})
	if err != nil {
		return fmt.Errorf("record completion: %w", err)
	}
	return nil
}

// Complete marks generation g done (once) and records it in the history.
// It returns false when g was not the current running generation.
func (c *Client) Complete(ctx context.Context, g Generation, hosts int) (Completion, bool, error) {
	now, err := c.markDone(ctx, g.Ref()) // Redis time, like g.Published
	if err != nil || now.IsZero() {
		return Completion{}, false, err
	}
	rounds, err := c.Rounds(ctx, g.ID)
	if err != nil {
		return Completion{}, true, err
	}
	hooks, err := c.Hooks(ctx, g.Ref())
	if err != nil {
		return Completion{}, true, err
	}
	rec := Completion{
		Gen: g.ID, Path: g.Path, Digest: g.Digest, Hosts: hosts, Files: g.Files, Bytes: g.Bytes,
		Rounds: rounds, Published: g.Published, Done: now, Elapsed: now.Sub(g.Published),
		Dest: g.Dest, Groups: g.Groups, Delete: g.Delete, Atomic: g.Atomic, Rollback: g.Rollback, Switch: g.Switch,
	}
	rec.HooksOK, rec.HooksFailed, _, rec.HookFailedHosts = HookCounts(hooks, hookFailedHostsMax)
	return rec, true, c.recordCompletion(ctx, rec)
}

// Rounds derives the depth of generation gen's distribution tree from the
// claim events: a host that pulled from the origin is round 1, from a
// round-1 host round 2, and so on.
func (c *Client) Rounds(ctx context.Context, gen int64) (int, error) {
	want := fmt.Sprint(gen)
	depth := map[string]int{}
	deepest := 0
	err := c.eachEvent(ctx, func(m redis.XMessage) {
		if m.Values["type"] != "claim" || fmt.Sprint(m.Values["gen"]) != want {
			return
		}
		slot := fmt.Sprint(m.Values["slot"])
		source := slot[:max(strings.LastIndexByte(slot, '#'), 0)]
		d := depth[source] + 1
		depth[fmt.Sprint(m.Values["host"])] = d
		deepest = max(deepest, d)
	})
	return deepest, err
}

// eventsPage is how many events one XRANGE of eachEvent reads: the whole
// stream (10,000 events) in one command held Redis for 7.8 ms in make sim
// at 10,000 hosts, every other client waiting.
const eventsPage = 1000

// eachEvent calls fn for each event of the stream, oldest first, reading
// it eventsPage at a time.
func (c *Client) eachEvent(ctx context.Context, fn func(redis.XMessage)) error {
	start := "-"
	for {
		msgs, err := c.rdb.XRangeN(ctx, c.keys.Events(), start, "+", eventsPage).Result()
		if err != nil {
			return fmt.Errorf("read events: %w", err)
		}
		for _, m := range msgs {
			fn(m)
		}
		if len(msgs) < eventsPage {
			return nil
		}
		next, err := afterID(msgs[len(msgs)-1].ID)
		if err != nil {
			return fmt.Errorf("read events: %w", err)
		}
		start = next
	}
}

// afterID returns the smallest stream entry id after id ("ms-seq"): an
// inclusive start for the next page that works on every Redis version
// (exclusive ranges need 6.2).
func afterID(id string) (string, error) {
	ms, seq, ok := strings.Cut(id, "-")
	m, merr := strconv.ParseUint(ms, 10, 64)
	n, serr := strconv.ParseUint(seq, 10, 64)
	if !ok || merr != nil || serr != nil {
		return "", fmt.Errorf("stream entry id %q is not ms-seq", id)
	}
	if n == math.MaxUint64 {
		return strconv.FormatUint(m+1, 10) + "-0", nil
	}
	return ms + "-" + strconv.FormatUint(n+1, 10), nil
}

// Progress is a host's pull in flight, as status shows it.
type Progress struct {
	Gen     int64     `json:"gen"`
	Source  string    `json:"source"`
	Done    int64     `json:"done"`
	Total   int64     `json:"total"`
	Started time.Time `json:"started"`
	Updated time.Time `json:"updated"`
}

// ReportProgress records host's pull progress (sent when a pull starts,
// with each lease renewal, and when it ends) and, when the client knows
// Redis's clock (see beatTime), the host's heartbeat (in the heartbeat
// indexes of groups too), in one round trip: a pull's first report then
// stands for the heartbeat the host would send before its first renewal
// (about one a host a task, a tenth of a 10,000-host task's requests).
// beat reports whether the heartbeat went with it.
func (c *Client) ReportProgress(ctx context.Context, host string, p Progress, groups []string) (beat bool, err error) {
	p.Updated = c.Now()
	b, err := json.Marshal(p)
	if err != nil {
		return false, err
	}
	at, beat := c.beatTime()
	_, err = c.rdb.Pipelined(ctx, func(pl redis.Pipeliner) error {
		pl.HSet(ctx, c.keys.Progress(), host, b)
		if beat {
			c.queueBeat(ctx, pl, host, groups, at)
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("report progress: %w", err)
	}
	return beat, nil
}

// Event is one entry of the events stream.
type Event struct {
	ID   string
	At   time.Time
	Type string
	Host string
	Gen  string
	Slot string
	Msg  string
}

// Events returns events after id ("0" for all, "$" for only new ones),
// waiting up to block for the first when there are none (0: no wait).
func (c *Client) Events(ctx context.Context, after string, block time.Duration) ([]Event, error) {
	if block <= 0 {
		block = -1 // go-redis: a negative Block omits the BLOCK option
	}
	res, err := c.rdb.XRead(ctx, &redis.XReadArgs{Streams: []string{c.keys.Events(), after}, Block: block, Count: 1000}).Result()
	if err == redis.Nil {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read events: %w", err)
	}
	var out []Event
	for _, s := range res {
		for _, m := range s.Messages {
			e := Event{ID: m.ID}
			if ms, _, ok := strings.Cut(m.ID, "-"); ok {
				var n int64
				fmt.Sscan(ms, &n)
				e.At = time.UnixMilli(n)
			}
			e.Type, e.Host, e.Gen = fmt.Sprint(m.Values["type"]), fmt.Sprint(m.Values["host"]), fmt.Sprint(m.Values["gen"])
			e.Slot, e.Msg = fmt.Sprint(m.Values["slot"]), fmt.Sprint(m.Values["msg"])
			out = append(out, e)
		}
	}
	return out, nil
}
