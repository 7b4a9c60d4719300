package coord

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

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
	// ErrMoved: claims are no longer as the caller saw them (see Bypass).
	ErrMoved = errors.New("the claims moved meanwhile")
)

// adoptedTTL marks a task key the master has adopted (see TaskKey).
const adoptedTTL = 100 * 365 * 24 * time.Hour

// eventsMax caps the events stream (approximately).
const eventsMax = 10000

// MaxClaims bounds the claims one host holds at once (its sources).
const MaxClaims = 16

// Proto is the version of the protocol this build speaks: the key schema,
// the scripts' arguments and the manifest format. A generation records the
// version it was published with ("proto"; absent means 1), and hosts
// register theirs, so a fleet that upgrades host by host either works
// together or says which host to upgrade.
//
//	1: the first release.
//	2: generations named by id and digest; Redis TIME for liveness; slot
//	   holders, dead-slot back-off, drift repair; owners in the manifest.
//	3: manifests of content-defined chunks (format 3); several claims per
//	   host; claim indexes and the lease-expiry index.
//	4: exclude patterns, in task_options and in the manifest (format 4):
//	   a minion of protocol 3 would delete what a generation excludes, so
//	   it refuses (with the upgrade message) rather than pull it; the watch
//	   key (the master's watch mode).
//	5: a destination (publish --dest) in task_options and in the
//	   generation ("dest"): a minion of protocol 4 would write the tree at
//	   the task path, so a generation with a destination is published as
//	   protocol 5 and such a minion refuses it; a generation without one
//	   is still published as protocol 4, which those minions pull.
//	6: releases (publish --atomic): "atomic" (releases kept) and
//	   "rollback" (the generation a rollback returns to) in task_options
//	   and the generation. A minion of protocol 5 would write such a tree
//	   in place, so it refuses the generation; others are published as
//	   before (protocol 4 or 5).
//	7: named tasks: each task's keys under PREFIX t:NAME: and the tasks
//	   set (see Keys). Hosts of protocol 6 never read them: they hold the
//	   plain task alone and are not expected by named ones.
//
// Additions that hosts of the same protocol built before them ignore
// safely keep the number: zones (per-zone claim indexes, a "zone" in the
// registration, "origin_zone" in the generation, a source zone at the end
// of a claim record, zone_bytes) are one. A host built before zones runs
// its own scripts, which keep the global indexes exactly as before and
// never read the zone keys; to zoned hosts it is a host without a zone.
// Keys that no host must understand to work with the others do not raise
// it: the hooks hash (hook results, see HookFormat) is read and written
// only by hosts that know it, and its records carry their own format. Compression is another (see
// TaskOptions.Compress). Hand-offs are another (the waiting queues and
// wake channels, see ClaimOptions.Queue): a handed slot is an ordinary
// claim record, which every script of protocol 7 reads as before, and a
// host that does not queue finds free slots as before.
const Proto = ProtoTasks

// ProtoTasks is the protocol that added named tasks (keys under
// PREFIX t:NAME:, the tasks set). Their generations are published as
// before: a host of an older protocol never reads a named task's keys, so
// it neither pulls one nor is expected by it (a task's hosts are those
// that heartbeat in its own index); publish --name needs a master of this
// protocol.
const ProtoTasks = 7

// ProtoDest is the protocol that added Generation.Dest.
const ProtoDest = 5

// ProtoAtomic is the protocol that added Generation.Atomic and
// Generation.Rollback.
const ProtoAtomic = 6

// Config configures a Client.
type Config struct {
	// Prefix is put before every key name. On Redis Cluster it must hold
	// a hash tag, such as "{fanout}:", so every key shares one slot (see
	// Keys.HashTag).
	Prefix string
	// DB is the database the client selects (0 on Cluster): the task
	// key's keyspace channel names it (see TaskKeyspaceChannel).
	DB int
	// LeaseTTL is how long a claim lives without renewal; default 15s.
	LeaseTTL time.Duration
	// HostGrace: a host is alive (expected) while its last heartbeat, in
	// Redis time, is newer than this; default 30s.
	HostGrace time.Duration
	// DeadBackoff is how long a slot judged dead waits before it is
	// offered again; it doubles with each strike against the same source,
	// up to DeadBackoffMax. Defaults 5s and 2m.
	DeadBackoff, DeadBackoffMax time.Duration
	// Now is this host's clock; default time.Now. Nothing in the protocol
	// depends on it agreeing with other hosts: Client.Now corrects it by
	// the offset to Redis TIME.
	Now func() time.Time
	// Zone is the zone of the host this client speaks for (--zone; empty:
	// none, see ValidZone): its slots are offered in its zone's claim
	// indexes too (Keys.SyncFullZone), and its claims try those first.
	Zone string
}

// Client speaks the protocol over one Redis connection pool.
type Client struct {
	rdb  redis.UniversalClient
	cfg  Config
	keys Keys
	clk  *clock // shared by the clients of every task (see ForTask)
}

// clock is the offset of Redis TIME from this host's clock.
type clock struct {
	mu     sync.Mutex
	offset time.Duration // Redis TIME minus this host's clock
	known  bool          // offset was measured
	// redis is Redis TIME at the last measurement, and local this host's
	// clock then (with its monotonic reading, when it has one).
	redis, local time.Time
}

// New returns a Client.
func New(rdb redis.UniversalClient, cfg Config) *Client {
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = 15 * time.Second
	}
	if cfg.HostGrace <= 0 {
		cfg.HostGrace = 30 * time.Second
	}
	if cfg.DeadBackoff <= 0 {
		cfg.DeadBackoff = 5 * time.Second
	}
	if cfg.DeadBackoffMax <= 0 {
		cfg.DeadBackoffMax = 2 * time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Client{rdb: rdb, cfg: cfg, keys: Keys{Prefix: cfg.Prefix}, clk: &clock{}}
}

// Keys returns the key names in use.
func (c *Client) Keys() Keys { return c.keys }

// Now is this host's clock corrected to Redis TIME, as last measured by a
// heartbeat or a status read: hosts whose clocks disagree agree on it (to
// within a round trip), so peers sign and check requests with it.
func (c *Client) Now() time.Time {
	c.clk.mu.Lock()
	defer c.clk.mu.Unlock()
	return c.cfg.Now().Add(c.clk.offset)
}

// observe records Redis's clock, read between sent and received.
func (c *Client) observe(redisNow, sent, received time.Time) {
	mid := sent.Add(received.Sub(sent) / 2)
	c.clk.mu.Lock()
	c.clk.offset = redisNow.Sub(mid)
	c.clk.known = true
	c.clk.redis, c.clk.local = redisNow, mid
	c.clk.mu.Unlock()
}

// Ref names a generation: ids restart when Redis loses its data, so the
// manifest digest goes with the id everywhere the protocol names one.
type Ref struct {
	ID     int64
	Digest string
}

// String prints r as "id/digest-prefix".
func (r Ref) String() string { return fmt.Sprintf("%d/%.12s", r.ID, r.Digest) }

// Generation describes one published task.
type Generation struct {
	ID     int64
	Path   string
	Delete bool
	// Compress asks every host pulling the generation to ask its sources
	// for compressed chunks (publish --compress); a host's own --compress
	// asks too. Absent in Redis: false.
	Compress   bool
	Digest     string
	State      string
	Error      string
	Origin     string
	OriginAddr string
	// OriginZone is the origin's zone ("" for none).
	OriginZone string
	Published  time.Time // Redis time
	Files      int64
	Bytes      int64
	DoneAt     time.Time // Redis time
	// Proto is the protocol version the generation was published with.
	Proto int
	// Dest is where hosts write the tree (publish --dest): an absolute
	// path under each host's --root, as Path is on the master; "" for
	// Path itself. Read only from generations of protocol ProtoDest or
	// later (an older master leaves the field of a newer one behind).
	Dest string
	// Groups limits the generation to hosts in one of these groups
	// (publish --group): only they pull it and only they are expected;
	// none: every host. Protocol ProtoDest, read as Dest is.
	Groups []string
	// Atomic is how many releases hosts keep of the task (publish
	// --atomic, --keep): each generation is built beside the live tree
	// and switched to at once; 0: written in place. Protocol ProtoAtomic.
	Atomic int
	// Rollback is the generation whose release this one switches back to
	// (fanout-master rollback); 0 for a generation of a new tree. The
	// master serves no content of a rollback: hosts that kept the release
	// switch to it, the others pull it from them. Protocol ProtoAtomic.
	Rollback int64
	// Switch is when hosts switch to an atomic generation's release:
	// SwitchHost ("") each as soon as its release verifies, SwitchFleet
	// all once every expected host holds it (SwitchAt, Redis time, set
	// by the master's order). Protocol ProtoAtomic.
	Switch   string
	SwitchAt time.Time
	// Task is the task key's value the generation answers (the value
	// the master adopted), given to Publish and never stored. When Redis
	// lost the adoption (the key holds another adopted value: a publish
	// retried after its reply was lost with the server, or run after a
	// failover to a replica that missed the adoption), publish writes
	// it back, so the key and the generation agree. A key written or
	// deleted since stays as it is, and so does one adopted by another
	// master that published since (the current id above TaskGen): its
	// task stands. "": the key is not checked.
	Task string
	// TaskGen is the id of the generation that was current when the
	// master adopted Task (see Task).
	TaskGen int64
}

// Switch modes of an atomic generation (publish --switch).
const (
	SwitchHost  = ""
	SwitchFleet = "fleet"
)

// SwitchPending reports whether hosts that hold g's release wait for the
// master's order to switch to it.
func (g Generation) SwitchPending() bool { return g.Switch == SwitchFleet && g.SwitchAt.IsZero() }

// LocalPath is where hosts hold the generation's tree, under their --root:
// Dest, or Path when it has none.
func (g Generation) LocalPath() string {
	if g.Dest != "" {
		return g.Dest
	}
	return g.Path
}

// Ref returns g's id and digest.
func (g Generation) Ref() Ref { return Ref{ID: g.ID, Digest: g.Digest} }

func ms(t time.Time) string { return strconv.FormatInt(t.UnixMilli(), 10) }

func fromMS(s string) time.Time {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n == 0 {
		return time.Time{}
	}
	return time.UnixMilli(n)
}

// parseGeneration reads the generation hash stored at key. A corrupt field
// is an error naming the key and the field, not a silent zero.
func parseGeneration(key string, h map[string]string) (Generation, error) {
	num := func(field string, min int64) (int64, error) {
		v, ok := h[field]
		if !ok || v == "" {
			if min > 0 {
				return 0, fmt.Errorf("Redis key %s has no %q field: it is corrupt; delete it (redis-cli del %s) and set the task again", key, field, key)
			}
			return 0, nil
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < min {
			return 0, fmt.Errorf("Redis key %s field %q is %q, not a number >= %d: it is corrupt; delete it (redis-cli del %s) and set the task again", key, field, v, min, key)
		}
		return n, nil
	}
	id, err := num("id", 1)
	if err != nil {
		return Generation{}, err
	}
	files, err := num("files", 0)
	if err != nil {
		return Generation{}, err
	}
	bytes, err := num("bytes", 0)
	if err != nil {
		return Generation{}, err
	}
	proto, err := num("proto", 0)
	if err != nil {
		return Generation{}, err
	}
	switch st := h["state"]; st {
	case StateRunning, StateDone, StateFailed:
	default:
		return Generation{}, fmt.Errorf("Redis key %s field \"state\" is %q, not running, done or failed: it is corrupt; delete it (redis-cli del %s) and set the task again", key, st, key)
	}
	g := Generation{
		ID: id, Path: h["path"], Delete: h["delete"] == "1", Compress: h["compress"] == "1", Digest: h["digest"], State: h["state"],
		Error: h["error"], Origin: h["origin"], OriginAddr: h["origin_addr"], OriginZone: h["origin_zone"], Published: fromMS(h["published"]),
		Files: files, Bytes: bytes, DoneAt: fromMS(h["done_at"]), Proto: max(int(proto), 1),
	}
	if g.Proto >= ProtoDest {
		g.Dest = h["dest"]
		g.Groups = splitGroups(h["groups"])
	}
	if g.Proto >= ProtoAtomic {
		keep, err := num("atomic", 0)
		if err != nil {
			return Generation{}, err
		}
		back, err := num("rollback", 0)
		if err != nil {
			return Generation{}, err
		}
		g.Atomic, g.Rollback = int(min(keep, MaxKeep)), back
		switch sw := h["switch"]; sw {
		case SwitchHost, SwitchFleet:
			g.Switch = sw
		default:
			return Generation{}, fmt.Errorf("Redis key %s field \"switch\" is %q, not \"\" or %q: it is corrupt; delete it (redis-cli del %s) and set the task again", key, sw, SwitchFleet, key)
		}
		g.SwitchAt = fromMS(h["switch_at"])
	}
	return g, nil
}

// Current returns the current generation; ID 0 when there is none. A
// corrupt generation key is an error that names it.
func (c *Client) Current(ctx context.Context) (Generation, error) {
	h, err := c.rdb.HGetAll(ctx, c.keys.Generation()).Result()
	if err != nil {
		return Generation{}, fmt.Errorf("read generation: %w", err)
	}
	if h["state"] == "" && h["id"] == "" {
		return Generation{}, nil
	}
	return parseGeneration(c.keys.Generation(), h)
}

// Announced is the generation an announcement carries: msg, a message of
// the generations channel, as the origin's announcing offer writes it
// ("gen <id> <digest> <fields>", fields the generation hash as a JSON
// object, as it stood once the origin's slots were on offer). ok is
// false for any other message (a cancel, a switch order, a rollback's
// wake, an announcement of a master from before the fields), whose
// generation must be read from Redis. At 10,000 simulated hosts the
// generation read each host made on an announcement delayed the first
// claim by 0.5-1 s.
func (c *Client) Announced(msg string) (g Generation, ok bool) {
	// encoding/json would turn bytes that are not UTF-8 (a path may hold
	// them; Redis's cjson passes them through) into U+FFFD: another path.
	if !utf8.ValidString(msg) {
		return Generation{}, false
	}
	head, fields, found := strings.Cut(msg, " {")
	if !found {
		return Generation{}, false
	}
	var h map[string]string
	if err := json.Unmarshal([]byte("{"+fields), &h); err != nil {
		return Generation{}, false
	}
	if head != "gen "+h["id"]+" "+h["digest"] {
		return Generation{}, false
	}
	g, err := parseGeneration(c.keys.Generation(), h)
	if err != nil {
		return Generation{}, false
	}
	return g, true
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
	// Compress: hosts ask their sources for zstd-compressed chunks.
	Compress bool `json:"compress,omitempty"`
	// Exclude lists rsync exclude patterns (package exclude): the master
	// leaves what they match out of the manifest, and minions neither
	// fetch nor delete it. Protocol 4.
	Exclude []string `json:"exclude,omitempty"`
	// Dest is where hosts write the tree (see Generation.Dest): an
	// absolute path under their --root; "" for the task path. Protocol 5.
	Dest string `json:"dest,omitempty"`
	// Groups limits the task to hosts in one of them (see
	// Generation.Groups). Protocol 5.
	Groups []string `json:"groups,omitempty"`
	// Atomic is the releases hosts keep (see Generation.Atomic); 0: the
	// tree is written in place. Protocol 6.
	Atomic int `json:"atomic,omitempty"`
	// Rollback asks the master to publish, without reading any tree, the
	// release of this completed generation again (fanout-master
	// rollback); Digest, Files and Bytes are that generation's. Protocol 6.
	Rollback int64 `json:"rollback,omitempty"`
	// Switch is SwitchFleet to switch every host at once (see
	// Generation.Switch). Protocol 6.
	Switch string `json:"switch,omitempty"`
	Digest string `json:"digest,omitempty"`
	Files  int64  `json:"files,omitempty"`
	Bytes  int64  `json:"bytes,omitempty"`
	// Task is the task key's value these options came with (set by
	// Adopt, never stored with the options), and TaskGen the id of the
	// generation current when it was adopted (set by the master).
	Task    string `json:"-"`
	TaskGen int64  `json:"-"`
}

// MaxKeep bounds the releases a host keeps of an atomic task.
const MaxKeep = 100

// DefaultKeep is the releases kept when publish --atomic names no --keep.
const DefaultKeep = 3

// SetTask sets the task and its options in one transaction.
func (c *Client) SetTask(ctx context.Context, path string, opts TaskOptions) error {
	_, err := c.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, c.keys.Task(), path, 0)
		if !opts.Delete && !opts.Compress && len(opts.Exclude) == 0 && opts.Dest == "" && len(opts.Groups) == 0 && opts.Atomic == 0 && opts.Rollback == 0 && opts.Switch == "" {
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

// Adopt marks the task key as seen and consumes its options. It returns
// the value it marked in opts.Task, read in the same transaction: a value
// an operator wrote after the caller's read is the one adopted, and the
// one to publish.
func (c *Client) Adopt(ctx context.Context) (TaskOptions, error) {
	var get, task *redis.StringCmd
	_, err := c.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		task = p.Get(ctx, c.keys.Task())
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
	opts.Task = task.Val()
	return opts, nil
}

// Publish starts a new generation described by g (its state and time are
// set here) and offers the origin's first uploads slots. g.ID, when set, is
// the last id this master published: the new id is above it even if Redis
// lost its counter, so an id never names two contents.
func (c *Client) Publish(ctx context.Context, g Generation, uploads int) (Generation, error) {
	g.State = StateRunning
	g.Error = ""
	return c.publish(ctx, g, uploads)
}

// PublishFailed records a bad task as a new failed generation: status shows
// the reason and minions leave their trees alone. floor is as g.ID for
// Publish, task's Task and TaskGen as g's.
func (c *Client) PublishFailed(ctx context.Context, path string, task TaskOptions, reason, origin string, floor int64) (Generation, error) {
	return c.publish(ctx, Generation{ID: floor, Path: path, Task: task.Task, TaskGen: task.TaskGen, State: StateFailed, Error: reason, Origin: origin}, 0)
}

func (c *Client) publish(ctx context.Context, g Generation, uploads int) (Generation, error) {
	flag := func(b bool) string {
		if b {
			return "1"
		}
		return "0"
	}
	// The lowest protocol that reads the generation: hosts of protocol 4
	// pull one without a destination or groups, hosts of protocol 5 one
	// that is not atomic.
	proto := ProtoDest - 1
	switch {
	case g.Atomic > 0 || g.Rollback > 0:
		proto = ProtoAtomic
	case g.Dest != "" || len(g.Groups) > 0:
		proto = ProtoDest
	}
	res, err := c.run(ctx, publishScript, g.Origin,
		g.Path, flag(g.Delete), g.Digest, g.State, g.Error, g.Origin, g.OriginAddr,
		g.Files, g.Bytes, uploads, eventsMax, g.ID, proto, g.OriginZone, flag(g.Compress), g.Dest, joinGroups(g.Groups),
		g.Atomic, g.Rollback, g.Switch, c.keys.Name, g.Task, adoptedTTL.Milliseconds(), g.TaskGen).Int64Slice()
	if err != nil {
		if strings.HasPrefix(err.Error(), "NOTASK ") {
			return Generation{}, fmt.Errorf("publish generation of task %s: %w", c.keys.Name, ErrNoTask)
		}
		return Generation{}, fmt.Errorf("publish generation: %w", err)
	}
	g.ID, g.Published, g.Proto = res[0], time.UnixMilli(res[1]), proto
	return g, nil
}

// MarkDone moves generation r from running to done; false when it is not
// the current running generation.
func (c *Client) MarkDone(ctx context.Context, r Ref) (bool, error) {
	at, err := c.markDone(ctx, r)
	return !at.IsZero(), err
}

// markDone is MarkDone returning the Redis time it marked the generation
// done at (zero when it did not).
func (c *Client) markDone(ctx context.Context, r Ref) (time.Time, error) {
	n, err := c.run(ctx, markDoneScript, "", r.ID, r.Digest, eventsMax).Int64()
	if err != nil {
		return time.Time{}, fmt.Errorf("mark generation done: %w", err)
	}
	if n == 0 {
		return time.Time{}, nil
	}
	return time.UnixMilli(n), nil
}

// Cancel stops generation r while it runs: it becomes failed with
// reason, no source slot stays on offer, and every pull of it stops at
// its next lease renewal (at once where the announcement on the
// generations channel wakes it; within half the lease) keeping the files
// it verified. ErrStale when r is not the current running generation.
func (c *Client) Cancel(ctx context.Context, r Ref, reason string) error {
	n, err := c.run(ctx, cancelScript, "", r.ID, r.Digest, reason, eventsMax).Int64()
	if err != nil {
		return fmt.Errorf("cancel generation %s: %w", r, err)
	}
	if n == 0 {
		return fmt.Errorf("cancel generation %s: %w", r, ErrStale)
	}
	return nil
}

// OrderSwitch orders the hosts of generation r, switched fleet-wide, to
// switch to its release: once, while it runs. It returns the order's
// Redis time, zero when no order was given (given already, or r is not
// current).
func (c *Client) OrderSwitch(ctx context.Context, r Ref) (time.Time, error) {
	n, err := c.run(ctx, switchScript, "", r.ID, r.Digest, eventsMax).Int64()
	if err != nil {
		return time.Time{}, fmt.Errorf("order the switch: %w", err)
	}
	if n == 0 {
		return time.Time{}, nil
	}
	return time.UnixMilli(n), nil
}

// Switched records that host switched to the release of generation r
// (switched fleet-wide); ErrStale when r is not current.
func (c *Client) Switched(ctx context.Context, host string, r Ref) error {
	n, err := c.run(ctx, switchedScript, host, host, r.ID, r.Digest).Int64()
	if err != nil {
		return fmt.Errorf("record the switch: %w", err)
	}
	if n == 0 {
		return ErrStale
	}
	return nil
}

// OfferSlots offers host's slots for generation r, skipping slots that are
// claimed right now; nothing when r is not current or host is bad. force
// (the origin, which knows it is alive) also ends a dead slot's back-off.
func (c *Client) OfferSlots(ctx context.Context, host string, r Ref, uploads int, force bool) error {
	return c.offer(ctx, host, r, uploads, force, false, false)
}

// OfferPartial offers the slots of host, which pulls generation r and
// serves it as its chunks land (pipelining), and its rescue slot
// (RescueSlot), which only the rescue claims of the hosts that pull from
// its pullers take (ClaimOptions.Rescue).
func (c *Client) OfferPartial(ctx context.Context, host string, r Ref, uploads int) error {
	return c.offer(ctx, host, r, uploads, false, false, true)
}

// OfferOrigin offers the slots of the origin of generation r, as
// OfferSlots with force, and its rescue slot (RescueSlot): when the first
// host of a chain is slow, the hosts that pull from it take the data from
// the origin through it.
func (c *Client) OfferOrigin(ctx context.Context, origin string, r Ref, uploads int) error {
	return c.offer(ctx, origin, r, uploads, true, false, true)
}

// Announce offers the origin's slots for generation r (as OfferOrigin)
// and then tells every subscribed minion of r, so the hosts it wakes find
// a source on offer.
func (c *Client) Announce(ctx context.Context, origin string, r Ref, uploads int) error {
	return c.offer(ctx, origin, r, uploads, true, true, true)
}

// MasterInfo is a running master's registration (the master key).
type MasterInfo struct {
	ID      string    `json:"id"`
	Addr    string    `json:"addr"`
	Version string    `json:"version,omitempty"`
	Proto   int       `json:"proto"`
	Started time.Time `json:"started"`
}

// RegisterMaster records m as the running master for ttl (it renews it
// well within). Proto is this build's.
func (c *Client) RegisterMaster(ctx context.Context, m MasterInfo, ttl time.Duration) error {
	m.Proto = Proto
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if err := c.rdb.Set(ctx, c.keys.Master(), b, ttl).Err(); err != nil {
		return fmt.Errorf("register the master: %w", err)
	}
	return nil
}

// Master returns the running master's registration; false when none is
// registered (none runs, or one older than protocol 6, which does not
// register).
func (c *Client) Master(ctx context.Context) (MasterInfo, bool, error) {
	v, err := c.rdb.Get(ctx, c.keys.Master()).Result()
	if errors.Is(err, redis.Nil) {
		return MasterInfo{}, false, nil
	}
	if err != nil {
		return MasterInfo{}, false, fmt.Errorf("read the master's registration: %w", err)
	}
	var m MasterInfo
	if err := json.Unmarshal([]byte(v), &m); err != nil {
		return MasterInfo{}, false, fmt.Errorf("Redis key %s is %.80q, not a master's registration: %w", c.keys.Master(), v, err)
	}
	return m, true, nil
}

// Wake tells every subscribed minion of generation r without offering a
// slot: a rollback, whose release the hosts serve, not the origin.
func (c *Client) Wake(ctx context.Context, r Ref) error {
	if err := c.rdb.Publish(ctx, c.keys.GenerationsChannel(), fmt.Sprintf("gen %d %s", r.ID, r.Digest)).Err(); err != nil {
		return fmt.Errorf("wake the minions: %w", err)
	}
	return nil
}

func (c *Client) offer(ctx context.Context, host string, r Ref, uploads int, force, announce, rescue bool) error {
	if err := c.run(ctx, offerScript, host, host, r.ID, r.Digest, uploads, flag(force), flag(announce), flag(rescue)).Err(); err != nil {
		return fmt.Errorf("offer slots: %w", err)
	}
	return nil
}

// Drift marks host, which finished generation r, as repairing: its tree
// changed on disk. It stays in finished_queue; status shows it repairing
// until it finishes again. msg says what drifted.
func (c *Client) Drift(ctx context.Context, host string, r Ref, msg string) error {
	if err := c.run(ctx, driftScript, host, host, r.ID, r.Digest, msg, eventsMax).Err(); err != nil {
		return fmt.Errorf("report drift: %w", err)
	}
	return nil
}

func flag(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// Host is a registered host.
type Host struct {
	ID       string    `json:"-"`
	Addr     string    `json:"addr"`
	Version  string    `json:"version"`
	Proto    int       `json:"proto,omitempty"`   // absent: 1
	Uploads  int       `json:"uploads,omitempty"` // source slots it offers
	Zone     string    `json:"zone,omitempty"`    // its --zone; empty: none (or a fanout before zones)
	Groups   []string  `json:"groups,omitempty"`  // its --group names (protocol 5)
	Role     string    `json:"role"`
	Started  time.Time `json:"started"`
	LastSeen time.Time `json:"-"` // Redis time
	Alive    bool      `json:"-"`
}

// Beat is what a heartbeat tells besides the registration: the generation
// the host holds, verified on its disk and announced, and the slots it
// offers.
type Beat struct {
	Held    Ref // zero while the host holds nothing verified
	Uploads int
	// Register sends the registration (Host) too: on the first beat and
	// when it changed; it is kept in Redis between beats.
	Register bool
	// Offer offers the host's slots (those not claimed or backing off), as
	// a safety net against a write Redis lost; a host sends it now and then.
	Offer bool
}

// Pulse is what a heartbeat learns.
type Pulse struct {
	// Reasserted: Redis had lost this host's finish; it is recorded again.
	Reasserted bool
	// Current is the current generation and its state ("" when none): an
	// idle host learns of a generation it was not told of.
	Current Ref
	State   string
}

// Heartbeat records that the host is alive now, in Redis time (and its
// registration h with b.Register). When the host holds the current
// generation (b.Held), it is re-asserted in finished_queue, so a finish
// Redis lost is never lost for good.
//
// A beat that neither registers nor offers, once this host's clock offset
// to Redis is known, is a light beat: plain commands in one round trip,
// scored by Now, which cost Redis a fraction of a script call (an idle
// fleet's load is nearly all heartbeats). The script runs for the others,
// and when the light beat finds the host's finish lost; it measures the
// clock offset again (see Now), so the light beats' scores never drift
// more than one registration interval from it. A light beat that finds
// the host's registration gone (Redis lost it) registers it through the
// script at once: a host alive with no registration has no known protocol,
// and the master publishes for the oldest one it sees.
func (c *Client) Heartbeat(ctx context.Context, h Host, b Beat) (Pulse, error) {
	if at, ok := c.beatTime(); ok && !b.Register && !b.Offer {
		p, done, registered, err := c.lightBeat(ctx, h, b, at)
		if err != nil || (done && registered) {
			return p, err
		}
		b.Register = !registered
	}
	return c.scriptBeat(ctx, h, b)
}

// beatTime is Redis time now for a light heartbeat: Redis TIME at the last
// measurement plus the time elapsed since on this host's monotonic clock.
// Not ok before a measurement, or when that disagrees by more than a
// second with this host's wall clock corrected by the measured offset (the
// wall clock was stepped, or the host slept): the script beat then
// measures again.
func (c *Client) beatTime() (time.Time, bool) {
	now := c.cfg.Now()
	c.clk.mu.Lock()
	defer c.clk.mu.Unlock()
	if !c.clk.known {
		return time.Time{}, false
	}
	at := c.clk.redis.Add(now.Sub(c.clk.local))
	if d := now.Add(c.clk.offset).Sub(at); d > time.Second || d < -time.Second {
		return time.Time{}, false
	}
	return at, true
}

// lightBeat records the heartbeat with ZADD at Redis time at (see
// beatTime) and reads the current generation, in one round trip. done is
// false when the host holds the current generation but finished_queue
// does not list it: the script must re-assert the finish. registered is
// false when the host's registration is gone: the script must register
// it again.
func (c *Client) lightBeat(ctx context.Context, h Host, b Beat, at time.Time) (p Pulse, done, registered bool, err error) {
	var gen *redis.SliceCmd
	var listed, reg *redis.BoolCmd
	_, err = c.rdb.Pipelined(ctx, func(pl redis.Pipeliner) error {
		reg = pl.HExists(ctx, c.keys.Hosts(), h.ID)
		c.queueBeat(ctx, pl, h.ID, h.Groups, at)
		gen = pl.HMGet(ctx, c.keys.Generation(), "id", "digest", "state")
		if b.Held.ID > 0 {
			listed = pl.SIsMember(ctx, c.keys.Finished(), h.ID)
		}
		return nil
	})
	if err != nil {
		return Pulse{}, false, false, fmt.Errorf("heartbeat: %w", err)
	}
	v := gen.Val()
	str := func(i int) string {
		if s, ok := v[i].(string); ok {
			return s
		}
		return ""
	}
	p.Current.ID, _ = strconv.ParseInt(str(0), 10, 64)
	p.Current.Digest, p.State = str(1), str(2)
	if listed != nil && !listed.Val() && p.Current == b.Held && p.State != StateFailed {
		return p, false, reg.Val(), nil
	}
	return p, true, reg.Val(), nil
}

// queueBeat queues host's heartbeat at Redis time at (see beatTime) in
// the heartbeat index and those of its groups: a light heartbeat's, and
// a light renewal's, which beats for a pulling host.
func (c *Client) queueBeat(ctx context.Context, pl redis.Pipeliner, host string, groups []string, at time.Time) {
	z := redis.Z{Score: float64(at.UnixMilli()), Member: host}
	pl.ZAdd(ctx, c.keys.Heartbeats(), z)
	for _, g := range groups {
		pl.ZAdd(ctx, c.keys.GroupHeartbeats(g), z)
	}
}

// scriptBeat is the heartbeat script: registration, offer and re-assertion
// atomically, at Redis TIME, which it returns to measure the clock offset.
func (c *Client) scriptBeat(ctx context.Context, h Host, b Beat) (Pulse, error) {
	info := ""
	if b.Register {
		h.Proto = Proto
		j, err := json.Marshal(h)
		if err != nil {
			return Pulse{}, err
		}
		info = string(j)
	}
	gen := ""
	if b.Held.ID > 0 {
		gen = strconv.FormatInt(b.Held.ID, 10)
	}
	sent := c.cfg.Now()
	kc := keyCtx{host: h.ID, zone: c.cfg.Zone}
	extra := make([]string, len(h.Groups))
	for i, g := range h.Groups {
		extra[i] = c.keys.GroupHeartbeats(g)
	}
	res, err := c.runExtra(ctx, heartbeatScript, kc, extra, h.ID, info, gen, b.Held.Digest, b.Uploads, eventsMax, flag(b.Offer)).Slice()
	if err != nil {
		return Pulse{}, fmt.Errorf("heartbeat: %w", err)
	}
	if len(res) != 5 {
		return Pulse{}, fmt.Errorf("heartbeat: unexpected reply %v", res)
	}
	now, _ := res[0].(int64)
	c.observe(time.UnixMilli(now), sent, c.cfg.Now())
	p := Pulse{Reasserted: res[1] == int64(1), State: fmt.Sprint(res[4])}
	p.Current.ID, _ = strconv.ParseInt(fmt.Sprint(res[2]), 10, 64)
	p.Current.Digest = fmt.Sprint(res[3])
	return p, nil
}

// Hosts lists the registered hosts, sorted by id. It reads the registry
// and the heartbeats by scans (see pages): the master lists hosts at each
// publish. The first page of each comes with the Redis time in one round
// trip; alive is judged at that time (a beat read later is only newer).
func (c *Client) Hosts(ctx context.Context) ([]Host, error) {
	var now *redis.TimeCmd
	var hpages, zpages pages
	sent := c.cfg.Now()
	_, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		now = p.Time(ctx)
		hpages = hashPages(ctx, p, c.rdb, c.keys.Hosts())
		zpages = zsetPages(ctx, p, c.rdb, c.keys.Heartbeats())
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read hosts: %w", err)
	}
	c.observe(now.Val(), sent, c.cfg.Now())
	info, err := hpages.pairs()
	if err != nil {
		return nil, fmt.Errorf("read hosts: %w", err)
	}
	beats, err := zpages.pairs()
	if err != nil {
		return nil, fmt.Errorf("read heartbeats: %w", err)
	}
	return c.hosts(info, beats, now.Val()), nil
}

// hosts joins registrations and heartbeats; alive is judged at now, a
// Redis time.
func (c *Client) hosts(info, beats map[string]string, now time.Time) []Host {
	seen := map[string]time.Time{}
	for id, score := range beats { // member → score, a Redis time in ms
		if ms, err := strconv.ParseFloat(score, 64); err == nil {
			seen[id] = time.UnixMilli(int64(ms))
		}
	}
	ids := map[string]bool{}
	for id := range info {
		ids[id] = true
	}
	for id := range seen {
		ids[id] = true
	}
	cutoff := now.Add(-c.cfg.HostGrace)
	out := make([]Host, 0, len(ids))
	for id := range ids {
		var h Host
		if v, ok := info[id]; ok {
			json.Unmarshal([]byte(v), &h)
		}
		h.ID = id
		h.Proto = max(h.Proto, 1)
		if c.keys.Name != "" && h.Proto < ProtoTasks && seen[id].IsZero() {
			// A host too old for named tasks never runs this one.
			continue
		}
		h.LastSeen = seen[id]
		h.Alive = !h.LastSeen.IsZero() && h.LastSeen.After(cutoff)
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Forget removes host from the registry and from every set (its zone's
// claim indexes too, as its registration names the zone).
func (c *Client) Forget(ctx context.Context, host string) error {
	zone := ""
	info, err := c.rdb.HGet(ctx, c.keys.Hosts(), host).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("forget %s: read its registration: %w", host, err)
	}
	var h Host
	if info != "" && json.Unmarshal([]byte(info), &h) == nil && ValidZone("zone", h.Zone) == nil {
		zone = h.Zone
	}
	// Its groups' heartbeat indexes, as its registration names them.
	var groups []string
	if ValidGroups("groups", h.Groups) == nil {
		for _, g := range h.Groups {
			groups = append(groups, c.keys.GroupHeartbeats(g))
		}
	}
	if err := c.runExtra(ctx, forgetScript, keyCtx{host: host, zone: zone}, groups, host, MaxClaims).Err(); err != nil {
		return fmt.Errorf("forget %s: %w", host, err)
	}
	return nil
}

// Silent returns up to limit hosts whose last heartbeat is older than age,
// oldest first, judged by Redis time (read here, which also measures this
// host's clock offset, see Now): the master forgets them (Forget), so the
// registry does not grow without bound as hosts come and go. The read is
// bounded by limit, so a large backlog is worked off a batch at a time.
func (c *Client) Silent(ctx context.Context, age time.Duration, limit int) ([]string, error) {
	sent := c.cfg.Now()
	now, err := c.rdb.Time(ctx).Result()
	if err != nil {
		return nil, fmt.Errorf("read Redis time: %w", err)
	}
	c.observe(now, sent, c.cfg.Now())
	cutoff := now.Add(-age).UnixMilli()
	hosts, err := c.rdb.ZRangeByScore(ctx, c.keys.Heartbeats(), &redis.ZRangeBy{
		Min: "-inf", Max: "(" + strconv.FormatInt(cutoff, 10), Count: int64(limit),
	}).Result()
	if err != nil {
		return nil, fmt.Errorf("read heartbeats older than %s: %w", age, err)
	}
	return hosts, nil
}

// Lookup counts one more minion that discovered the current generation.
func (c *Client) Lookup(ctx context.Context) error {
	if err := c.rdb.Incr(ctx, c.keys.Lookup()).Err(); err != nil {
		return fmt.Errorf("count lookup: %w", err)
	}
	return nil
}

// Refuse records that host will not pull generation r, and why (a protocol
// it does not speak): status shows the reason as the host's last error.
func (c *Client) Refuse(ctx context.Context, host string, r Ref, reason string) error {
	f, err := json.Marshal(Failure{Gen: r.ID, Error: reason, At: c.Now().UTC()})
	if err != nil {
		return err
	}
	_, err = c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, c.keys.Failures(), host, f)
		p.XAdd(ctx, &redis.XAddArgs{Stream: c.keys.Events(), MaxLen: eventsMax, Approx: true,
			Values: []any{"type", "refuse", "host", host, "gen", r.ID, "slot", "", "msg", reason}})
		return nil
	})
	if err != nil {
		return fmt.Errorf("record refusal: %w", err)
	}
	return nil
}
