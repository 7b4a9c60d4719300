package coord

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Generation states, and "idle" for no generation at all.
const (
	StateIdle    = "idle"
	StateRunning = "running"
	StateDone    = "done"
	StateFailed  = "failed"
)

// Errors of the claim protocol, to be tested with errors.Is.
var (
	ErrNoSource  = errors.New("no free source slot")
	ErrStale     = errors.New("generation is no longer current")
	ErrFinished  = errors.New("host already holds the generation")
	ErrBusy      = errors.New("host already holds a live lease")
	ErrLeaseLost = errors.New("lease lost")
)

// adoptedTTL marks a task key the master has adopted (see TaskKey).
const adoptedTTL = 100 * 365 * 24 * time.Hour

// eventsMax caps the events stream (approximately).
const eventsMax = 10000

// Config configures a Client.
type Config struct {
	Prefix string
	// LeaseTTL is how long a claim lives without renewal; default 15s.
	LeaseTTL time.Duration
	// HostGrace: a host is alive (expected) while its last heartbeat is
	// newer than this; default 30s.
	HostGrace time.Duration
	// Now is the clock for heartbeats and timestamps; default time.Now.
	Now func() time.Time
}

// Client speaks the protocol over one Redis connection pool.
type Client struct {
	rdb  redis.UniversalClient
	cfg  Config
	keys Keys
}

// New returns a Client.
func New(rdb redis.UniversalClient, cfg Config) *Client {
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = 15 * time.Second
	}
	if cfg.HostGrace <= 0 {
		cfg.HostGrace = 30 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Client{rdb: rdb, cfg: cfg, keys: Keys{Prefix: cfg.Prefix}}
}

// Keys returns the key names in use.
func (c *Client) Keys() Keys { return c.keys }

// Generation describes one published task.
type Generation struct {
	ID         int64
	Path       string
	Delete     bool
	Digest     string
	State      string
	Error      string
	Origin     string
	OriginAddr string
	Published  time.Time
	Files      int64
	Bytes      int64
	DoneAt     time.Time
}

func ms(t time.Time) string { return strconv.FormatInt(t.UnixMilli(), 10) }

func fromMS(s string) time.Time {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n == 0 {
		return time.Time{}
	}
	return time.UnixMilli(n)
}

func parseGeneration(h map[string]string) Generation {
	atoi := func(k string) int64 { n, _ := strconv.ParseInt(h[k], 10, 64); return n }
	return Generation{
		ID: atoi("id"), Path: h["path"], Delete: h["delete"] == "1", Digest: h["digest"], State: h["state"],
		Error: h["error"], Origin: h["origin"], OriginAddr: h["origin_addr"], Published: fromMS(h["published"]),
		Files: atoi("files"), Bytes: atoi("bytes"), DoneAt: fromMS(h["done_at"]),
	}
}

// Current returns the current generation; ID 0 when there is none.
func (c *Client) Current(ctx context.Context) (Generation, error) {
	h, err := c.rdb.HGetAll(ctx, c.keys.Generation()).Result()
	if err != nil {
		return Generation{}, fmt.Errorf("read generation: %w", err)
	}
	if h["state"] == "" {
		return Generation{}, nil
	}
	return parseGeneration(h), nil
}

// TaskKey reads the task key and whether it was written since the master
// adopted it. The master marks adoption with a very long TTL, and SET clears
// a key's TTL, so a key without one is fresh. A missing key is ("", false).
func (c *Client) TaskKey(ctx context.Context) (string, bool, error) {
	var get *redis.StringCmd
	var ttl *redis.DurationCmd
	_, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		get = p.Get(ctx, c.keys.Task())
		ttl = p.PTTL(ctx, c.keys.Task())
		return nil
	})
	if errors.Is(err, redis.Nil) || errors.Is(get.Err(), redis.Nil) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("read task: %w", err)
	}
	return get.Val(), ttl.Val() == -1, nil
}

// TaskOptions are the options published with a task.
type TaskOptions struct {
	Delete bool `json:"delete"`
}

// SetTask sets the task and its options in one transaction.
func (c *Client) SetTask(ctx context.Context, path string, opts TaskOptions) error {
	_, err := c.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, c.keys.Task(), path, 0)
		if opts == (TaskOptions{}) {
			p.Del(ctx, c.keys.TaskOptions())
		} else {
			b, _ := json.Marshal(opts)
			p.Set(ctx, c.keys.TaskOptions(), b, 0)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("set task: %w", err)
	}
	return nil
}

// Adopt marks the task key as seen and consumes its options.
func (c *Client) Adopt(ctx context.Context) (TaskOptions, error) {
	var get *redis.StringCmd
	_, err := c.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.PExpire(ctx, c.keys.Task(), adoptedTTL)
		get = p.Get(ctx, c.keys.TaskOptions())
		p.Del(ctx, c.keys.TaskOptions())
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return TaskOptions{}, fmt.Errorf("adopt task: %w", err)
	}
	var opts TaskOptions
	if v, gerr := get.Result(); gerr == nil && v != "" {
		if err := json.Unmarshal([]byte(v), &opts); err != nil {
			return TaskOptions{}, fmt.Errorf("task options %q: %w", v, err)
		}
	}
	return opts, nil
}

// Publish starts a new generation described by g (its ID, state and time
// are set here) and offers the origin's first uploads slots.
func (c *Client) Publish(ctx context.Context, g Generation, uploads int) (Generation, error) {
	g.State = StateRunning
	g.Error = ""
	return c.publish(ctx, g, uploads)
}

// PublishFailed records a bad task as a new failed generation: status shows
// the reason and minions leave their trees alone.
func (c *Client) PublishFailed(ctx context.Context, path, reason, origin string) (Generation, error) {
	return c.publish(ctx, Generation{Path: path, State: StateFailed, Error: reason, Origin: origin}, 0)
}

func (c *Client) publish(ctx context.Context, g Generation, uploads int) (Generation, error) {
	k := c.keys
	g.Published = c.cfg.Now()
	del := "0"
	if g.Delete {
		del = "1"
	}
	id, err := publishScript.Run(ctx, c.rdb,
		[]string{k.Generation(), k.Sync(), k.Running(), k.Finished(), k.Claims(), k.Failures(), k.BadSources(), k.Lookup(), k.Events(), k.Progress()},
		g.Path, del, g.Digest, g.State, g.Error, g.Origin, g.OriginAddr, ms(g.Published),
		g.Files, g.Bytes, uploads, eventsMax).Int64()
	if err != nil {
		return Generation{}, fmt.Errorf("publish generation: %w", err)
	}
	g.ID = id
	return g, nil
}

// MarkDone moves generation gen from running to done; false when it is not
// the current running generation.
func (c *Client) MarkDone(ctx context.Context, gen int64) (bool, error) {
	n, err := markDoneScript.Run(ctx, c.rdb, []string{c.keys.Generation(), c.keys.Events()},
		gen, ms(c.cfg.Now()), eventsMax).Int()
	if err != nil {
		return false, fmt.Errorf("mark generation done: %w", err)
	}
	return n == 1, nil
}

// OfferSlots offers host's slots for generation gen, skipping slots that are
// claimed right now; nothing when gen is not current or host is bad.
func (c *Client) OfferSlots(ctx context.Context, host string, gen int64, uploads int) error {
	k := c.keys
	err := offerScript.Run(ctx, c.rdb, []string{k.Generation(), k.Claims(), k.Sync(), k.BadSources()}, host, gen, uploads).Err()
	if err != nil {
		return fmt.Errorf("offer slots: %w", err)
	}
	return nil
}

// Host is a registered host.
type Host struct {
	ID       string    `json:"-"`
	Addr     string    `json:"addr"`
	Version  string    `json:"version"`
	Role     string    `json:"role"`
	Started  time.Time `json:"started"`
	LastSeen time.Time `json:"-"`
	Alive    bool      `json:"-"`
}

// Heartbeat registers h and records that it is alive now.
func (c *Client) Heartbeat(ctx context.Context, h Host) error {
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	_, err = c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, c.keys.Hosts(), h.ID, b)
		p.ZAdd(ctx, c.keys.Heartbeats(), redis.Z{Score: float64(c.cfg.Now().UnixMilli()), Member: h.ID})
		return nil
	})
	if err != nil {
		return fmt.Errorf("heartbeat: %w", err)
	}
	return nil
}

// Hosts lists the registered hosts, sorted by id.
func (c *Client) Hosts(ctx context.Context) ([]Host, error) {
	var info *redis.MapStringStringCmd
	var beats *redis.ZSliceCmd
	_, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		info = p.HGetAll(ctx, c.keys.Hosts())
		beats = p.ZRangeWithScores(ctx, c.keys.Heartbeats(), 0, -1)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read hosts: %w", err)
	}
	return c.hosts(info.Val(), beats.Val()), nil
}

func (c *Client) hosts(info map[string]string, beats []redis.Z) []Host {
	seen := map[string]time.Time{}
	for _, z := range beats {
		seen[fmt.Sprint(z.Member)] = time.UnixMilli(int64(z.Score))
	}
	ids := map[string]bool{}
	for id := range info {
		ids[id] = true
	}
	for id := range seen {
		ids[id] = true
	}
	cutoff := c.cfg.Now().Add(-c.cfg.HostGrace)
	out := make([]Host, 0, len(ids))
	for id := range ids {
		var h Host
		if v, ok := info[id]; ok {
			json.Unmarshal([]byte(v), &h)
		}
		h.ID = id
		h.LastSeen = seen[id]
		h.Alive = !h.LastSeen.IsZero() && h.LastSeen.After(cutoff)
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Forget removes host from the registry and from every set.
func (c *Client) Forget(ctx context.Context, host string) error {
	k := c.keys
	err := forgetScript.Run(ctx, c.rdb,
		[]string{k.Hosts(), k.Heartbeats(), k.Finished(), k.Running(), k.Sync(), k.Claims(), k.Lease(host)}, host).Err()
	if err != nil {
		return fmt.Errorf("forget %s: %w", host, err)
	}
	return nil
}

// Lookup counts one more minion that discovered the current generation.
func (c *Client) Lookup(ctx context.Context) error {
	if err := c.rdb.Incr(ctx, c.keys.Lookup()).Err(); err != nil {
		return fmt.Errorf("count lookup: %w", err)
	}
	return nil
}
