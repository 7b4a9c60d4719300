package coord

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fanout/fanout/internal/redistest"
)

// fixture is a protocol client on one server (or a cluster), with a
// settable clock.
type fixture struct {
	t   *testing.T
	srv redistest.Server
	rdb redis.UniversalClient
	c   *Client
	now time.Time
	mu  sync.Mutex
}

func (f *fixture) clock() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fixture) advance(d time.Duration) {
	f.mu.Lock()
	f.now = f.now.Add(d)
	f.mu.Unlock()
}

// onCluster, while TestScenariosOnCluster runs, is the cluster on which
// each runs its scenario, instead of miniredis and redis-server.
var onCluster *redistest.Cluster

// each runs fn on miniredis and, when installed, on a real redis-server;
// or, within TestScenariosOnCluster, on a Redis Cluster.
func each(t *testing.T, lease time.Duration, fn func(t *testing.T, f *fixture)) {
	if onCluster != nil {
		eachOnCluster(t, onCluster, lease, fn)
		return
	}
	for _, srv := range redistest.Servers(t) {
		t.Run(srv.Name, func(t *testing.T) {
			opts, err := redis.ParseURL(srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			rdb := redis.NewClient(opts)
			t.Cleanup(func() { rdb.Close() })
			rdb.FlushAll(context.Background())
			f := &fixture{t: t, srv: srv, rdb: rdb, now: time.Now()}
			f.c = New(rdb, Config{Prefix: "{fanout}:", LeaseTTL: lease, HostGrace: 30 * time.Second, Now: f.clock})
			fn(t, f)
		})
	}
}

func (f *fixture) publish(uploads int) Generation {
	f.t.Helper()
	g, err := f.c.Publish(context.Background(), Generation{Path: "/data/m42", Digest: strings.Repeat("d", 64), Origin: "master", OriginAddr: "10.0.0.1:7070", Files: 3, Bytes: 300}, uploads)
	if err != nil {
		f.t.Fatal(err)
	}
	return g
}

func (f *fixture) members(key string) []string {
	f.t.Helper()
	m, err := f.rdb.SMembers(context.Background(), key).Result()
	if err != nil {
		f.t.Fatal(err)
	}
	slices.Sort(m)
	return m
}

func (f *fixture) heartbeat(hosts ...string) {
	f.t.Helper()
	for _, h := range hosts {
		if _, err := heartbeatErr(f.c, h); err != nil {
			f.t.Fatal(err)
		}
	}
}

func TestPublishAndTaskKey(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		if v, fresh, err := f.c.TaskKey(ctx); v != "" || fresh || err != nil {
			t.Fatalf("missing task: %q %v %v", v, fresh, err)
		}
		if err := f.c.SetTask(ctx, "/data/m42", TaskOptions{Delete: true}); err != nil {
			t.Fatal(err)
		}
		if v, fresh, _ := f.c.TaskKey(ctx); v != "/data/m42" || !fresh {
			t.Fatalf("set task: %q fresh=%v", v, fresh)
		}
		opts, err := f.c.Adopt(ctx)
		if err != nil || !opts.Delete {
			t.Fatalf("Adopt = %+v, %v", opts, err)
		}
		if _, fresh, _ := f.c.TaskKey(ctx); fresh {
			t.Fatal("adopted task still fresh")
		}
		if opts, _ := f.c.Adopt(ctx); opts.Delete {
			t.Fatal("options consumed twice")
		}
		// A plain SET of the same value is fresh again.
		f.rdb.Set(ctx, k.Task(), "/data/m42", 0)
		if _, fresh, _ := f.c.TaskKey(ctx); !fresh {
			t.Fatal("SET of the same path not seen as fresh")
		}

		f.rdb.SAdd(ctx, k.Finished(), "old")
		f.rdb.SAdd(ctx, k.Running(), "old")
		f.rdb.Set(ctx, k.Lookup(), 5, 0)
		g1 := f.publish(2)
		g2 := f.publish(2)
		if g1.ID < 1 || g2.ID != g1.ID+1 {
			t.Fatalf("generation ids %d then %d", g1.ID, g2.ID)
		}
		if got := f.members(k.Sync()); !slices.Equal(got, []string{"master#0", "master#1"}) {
			t.Errorf("sync = %v", got)
		}
		if len(f.members(k.Finished())) != 0 || len(f.members(k.Running())) != 0 {
			t.Error("publish did not reset the queues")
		}
		if n, _ := f.rdb.Exists(ctx, k.Lookup()).Result(); n != 0 {
			t.Error("publish did not reset lookup")
		}
		cur, err := f.c.Current(ctx)
		if err != nil || cur.ID != g2.ID || cur.State != StateRunning || cur.Path != "/data/m42" || cur.OriginAddr != "10.0.0.1:7070" || cur.Bytes != 300 {
			t.Fatalf("Current = %+v, %v", cur, err)
		}
		fg, err := f.c.PublishFailed(ctx, "relative", TaskOptions{}, "task is relative", "master", 0)
		if err != nil || fg.ID != g2.ID+1 {
			t.Fatal(err)
		}
		cur, _ = f.c.Current(ctx)
		if cur.State != StateFailed || cur.Error != "task is relative" || len(f.members(k.Sync())) != 0 {
			t.Errorf("failed generation %+v, sync %v", cur, f.members(k.Sync()))
		}
		if _, err := f.c.Claim(ctx, "a", cur.Ref(), ClaimOptions{}); !errors.Is(err, ErrStale) {
			t.Errorf("claim on a failed generation: %v", err)
		}
	})
}

// A publish that finds the task key as it was before its adoption (Redis
// lost the adoption: the publish was retried on a restarted server after
// its reply was lost, or runs after a failover) writes the adopted value
// back, still marked adopted; a key written or deleted since is left as
// it is. Adopt reports the value it marked.
func TestPublishRestoresALostAdoption(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		adopt := func(value string) TaskOptions {
			t.Helper()
			if err := f.c.SetTask(ctx, value, TaskOptions{}); err != nil {
				t.Fatal(err)
			}
			cur, err := f.c.Current(ctx) // as the master's tick reads it
			if err != nil {
				t.Fatal(err)
			}
			opts, err := f.c.Adopt(ctx)
			if err != nil || opts.Task != value {
				t.Fatalf("Adopt = %+v, %v; want task %q", opts, err, value)
			}
			opts.TaskGen = cur.ID
			return opts
		}
		publish := func(path string, opts TaskOptions) {
			t.Helper()
			if _, err := f.c.Publish(ctx, Generation{Path: path, Task: opts.Task, TaskGen: opts.TaskGen, Digest: strings.Repeat("d", 64), Origin: "master"}, 1); err != nil {
				t.Fatal(err)
			}
		}
		task := func() (string, bool) {
			t.Helper()
			v, fresh, err := f.c.TaskKey(ctx)
			if err != nil {
				t.Fatal(err)
			}
			return v, fresh
		}
		publish("/data/m42", adopt("/data/m42"))
		// The next task is adopted, then Redis loses that write: the key
		// holds the older adopted value again when the publish runs.
		opts := adopt("/data/m42-v2/")
		f.rdb.Set(ctx, k.Task(), "/data/m42", time.Hour)
		publish("/data/m42-v2", opts)
		if v, fresh := task(); v != "/data/m42-v2/" || fresh {
			t.Errorf("after a publish over a lost adoption the task key is %q (fresh %v), want %q adopted", v, fresh, "/data/m42-v2/")
		}
		// A failed generation restores it too.
		opts = adopt("relative")
		f.rdb.Set(ctx, k.Task(), "/data/m42-v2/", time.Hour)
		if _, err := f.c.PublishFailed(ctx, "relative", opts, "task is relative", "master", 0); err != nil {
			t.Fatal(err)
		}
		if v, fresh := task(); v != "relative" || fresh {
			t.Errorf("after a failed publish over a lost adoption the task key is %q (fresh %v)", v, fresh)
		}
		// An operator's newer write stays, fresh: the master publishes it next.
		opts = adopt("/data/m43")
		f.rdb.Set(ctx, k.Task(), "/data/m44", 0)
		publish("/data/m43", opts)
		if v, fresh := task(); v != "/data/m44" || !fresh {
			t.Errorf("an operator's write since the adoption became %q (fresh %v)", v, fresh)
		}
		// A deleted key stays deleted: no task, the master serves what it has.
		opts = adopt("/data/m45")
		f.rdb.Del(ctx, k.Task())
		publish("/data/m45", opts)
		if n, _ := f.rdb.Exists(ctx, k.Task()).Result(); n != 0 {
			t.Error("a deleted task key was written back")
		}
		// No task given (a republish of the tree being served): the key is
		// not checked.
		adopt("/data/m46")
		f.rdb.Set(ctx, k.Task(), "/data/m46/", time.Hour)
		publish("/data/m46", TaskOptions{})
		if v, _ := task(); v != "/data/m46/" {
			t.Errorf("a publish without a task value rewrote the key to %q", v)
		}
		// Another master adopted the key since and published it: its task
		// stands, and the key goes on disagreeing with this publish, so a
		// master publishes it again.
		opts = adopt("/data/m47")
		other := adopt("/data/m48")
		publish("/data/m48", other)
		publish("/data/m47", opts)
		if v, _ := task(); v != "/data/m48" {
			t.Errorf("a publish rewrote the key another master adopted and published since to %q", v)
		}
	})
}

func TestClaimLifecycle(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		g := f.publish(1)
		f.heartbeat("a", "b")
		cl, err := f.c.Claim(ctx, "a", g.Ref(), ClaimOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if cl.Slot != "master#0" || cl.Source != "master" || cl.SourceAddr != "10.0.0.1:7070" {
			t.Fatalf("claim = %+v", cl)
		}
		if len(f.members(k.Sync())) != 0 || !slices.Equal(f.members(k.Running()), []string{"a"}) {
			t.Fatalf("after claim: sync %v running %v", f.members(k.Sync()), f.members(k.Running()))
		}
		if ttl := f.rdb.PTTL(ctx, k.Lease("a")).Val(); ttl <= 0 || ttl > 15*time.Second {
			t.Errorf("lease ttl %v", ttl)
		}
		if _, err := f.c.Claim(ctx, "b", g.Ref(), ClaimOptions{}); !errors.Is(err, ErrNoSource) {
			t.Errorf("second claim with no slot: %v", err)
		}
		if _, err := f.c.Claim(ctx, "a", g.Ref(), ClaimOptions{}); !errors.Is(err, ErrBusy) {
			t.Errorf("claim while holding a lease: %v", err)
		}
		if _, err := f.c.Claim(ctx, "b", Ref{ID: g.ID - 1, Digest: g.Digest}, ClaimOptions{}); !errors.Is(err, ErrStale) {
			t.Errorf("claim for an old generation: %v", err)
		}
		if _, err := f.c.Renew(ctx, cl); err != nil {
			t.Fatal(err)
		}
		if err := f.c.Finish(ctx, cl, 2); err != nil {
			t.Fatal(err)
		}
		if got := f.members(k.Sync()); !slices.Equal(got, []string{"a#0", "a#1", "master#0"}) {
			t.Errorf("after finish: sync %v", got)
		}
		if !slices.Equal(f.members(k.Finished()), []string{"a"}) || len(f.members(k.Running())) != 0 {
			t.Errorf("after finish: finished %v running %v", f.members(k.Finished()), f.members(k.Running()))
		}
		if _, err := f.c.Claim(ctx, "a", g.Ref(), ClaimOptions{}); !errors.Is(err, ErrFinished) {
			t.Errorf("claim after finishing: %v", err)
		}
		// b takes a's slot (never its own), and learns a's address.
		for range 20 {
			cl2, err := f.c.Claim(ctx, "b", g.Ref(), ClaimOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if cl2.Source == "a" && cl2.SourceAddr != "a:7070" {
				t.Fatalf("address of source a: %q", cl2.SourceAddr)
			}
			if err := f.c.Fail(ctx, cl2, SourceOK, "disk full", 1); err != nil {
				t.Fatal(err)
			}
		}
		st, err := f.c.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.Failures["b"].Error != "disk full" || st.Failures["b"].Gen != g.ID {
			t.Errorf("failure not recorded: %+v", st.Failures)
		}
		if got := f.members(k.Sync()); !slices.Equal(got, []string{"a#0", "a#1", "master#0"}) {
			t.Errorf("SourceOK failures lost slots: %v", got)
		}
	})
}

// TestClaimCountsLookup: a host's first claim of a generation counts its
// discovery in lookup (the original scripts' key, which the claims' count
// of waiting hosts reads) in the same call; a claim of a stale generation
// or one not marked first counts nothing.
func TestClaimCountsLookup(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		g := f.publish(1)
		f.heartbeat("a", "b", "c")
		lookup := func() int64 {
			t.Helper()
			n, err := f.rdb.Get(ctx, f.c.Keys().Lookup()).Int64()
			if err != nil && !errors.Is(err, redis.Nil) {
				t.Fatal(err)
			}
			return n
		}
		if _, err := f.c.Claim(ctx, "a", g.Ref(), ClaimOptions{Lookup: true}); err != nil {
			t.Fatal(err)
		}
		if n := lookup(); n != 1 {
			t.Fatalf("lookup after a's first claim = %d, want 1", n)
		}
		// b finds no source; its claim counts it, and it counts itself
		// among the waiting hosts.
		var none *NoSourceError
		if _, err := f.c.Claim(ctx, "b", g.Ref(), ClaimOptions{Lookup: true}); !errors.As(err, &none) || none.Waiting != 1 {
			t.Fatalf("b's first claim: %v, want no source with 1 host waiting", err)
		}
		if _, err := f.c.Claim(ctx, "b", g.Ref(), ClaimOptions{}); !errors.As(err, &none) || none.Waiting != 1 {
			t.Fatalf("b's second claim: %v, want no source with 1 host waiting", err)
		}
		if _, err := f.c.Claim(ctx, "c", Ref{ID: g.ID - 1, Digest: g.Digest}, ClaimOptions{Lookup: true}); !errors.Is(err, ErrStale) {
			t.Fatalf("claim of an old generation: %v, want stale", err)
		}
		if n := lookup(); n != 2 {
			t.Errorf("lookup = %d, want 2 (a and b, each once)", n)
		}
	})
}

// TestFinishReport: a finish that carries the pull's final progress
// records it with the host as finished and returns the generation as it
// found it; one of a generation that moved on records neither.
func TestFinishReport(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		g := f.publish(1)
		f.heartbeat("a")
		cl, err := f.c.Claim(ctx, "a", g.Ref(), ClaimOptions{})
		if err != nil {
			t.Fatal(err)
		}
		started := f.clock().Add(-time.Minute)
		now, err := f.c.FinishReport(ctx, cl, 1, Progress{Gen: g.ID, Source: cl.Slot, Done: 300, Total: 300, Started: started})
		if err != nil {
			t.Fatal(err)
		}
		if now.Ref() != g.Ref() || now.Path != g.Path || now.State != StateRunning || now.Origin != "master" {
			t.Errorf("the finish found generation %+v, want %+v", now, g)
		}
		st, err := f.c.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		p := st.Progress["a"]
		if !slices.Contains(st.Finished, "a") || p.Gen != g.ID || p.Source != "master#0" || p.Done != 300 || p.Total != 300 || !p.Started.Equal(started) || p.Updated.IsZero() {
			t.Fatalf("after the finish: finished %v, progress %+v", st.Finished, p)
		}
		// A pull of a superseded generation: its finish is refused, and
		// the new generation's progress stays empty.
		g2 := f.publish(1)
		f.heartbeat("a")
		cl, err = f.c.Claim(ctx, "a", g2.Ref(), ClaimOptions{})
		if err != nil {
			t.Fatal(err)
		}
		f.publish(1)
		if now, err := f.c.FinishReport(ctx, cl, 1, Progress{Gen: g2.ID, Source: cl.Slot, Done: 300, Total: 300}); !errors.Is(err, ErrStale) || now.ID != 0 {
			t.Fatalf("finish of a superseded generation: %+v, %v; want stale", now, err)
		}
		if st, err = f.c.Status(ctx); err != nil {
			t.Fatal(err)
		}
		if p, ok := st.Progress["a"]; ok || slices.Contains(st.Finished, "a") {
			t.Errorf("a stale finish recorded: finished %v, progress %+v", st.Finished, p)
		}
	})
}

// TestConcurrentClaimsNeverShareASlot races 50 claimers for k slots.
func TestConcurrentClaimsNeverShareASlot(t *testing.T) {
	for _, slots := range []int{1, 3} {
		t.Run(fmt.Sprint(slots, " slots"), func(t *testing.T) {
			each(t, 15*time.Second, func(t *testing.T, f *fixture) {
				g := f.publish(slots)
				var wg sync.WaitGroup
				got := make(chan string, 50)
				start := make(chan struct{})
				for i := range 50 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						<-start
						cl, err := f.c.Claim(context.Background(), fmt.Sprintf("h%02d", i), g.Ref(), ClaimOptions{})
						if err == nil {
							got <- cl.Slot
						} else if !errors.Is(err, ErrNoSource) {
							t.Error(err)
						}
					}()
				}
				close(start)
				wg.Wait()
				close(got)
				var won []string
				for s := range got {
					won = append(won, s)
				}
				slices.Sort(won)
				if len(won) != slots || len(slices.Compact(slices.Clone(won))) != slots {
					t.Fatalf("%d slots, claims won: %v", slots, won)
				}
				if n := len(f.members(f.c.Keys().Running())); n != slots {
					t.Errorf("running_queue has %d hosts, want %d", n, slots)
				}
			})
		})
	}
}

// TestExpiredLeaseReturnsSlot lets a lease expire for real (Redis PX) and
// reaps it.
func TestExpiredLeaseReturnsSlot(t *testing.T) {
	each(t, 300*time.Millisecond, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		g := f.publish(1)
		cl, err := f.c.Claim(ctx, "a", g.Ref(), ClaimOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if n, err := f.c.Reap(ctx); n != 0 || err != nil {
			t.Fatalf("reap of a live lease: %d, %v", n, err)
		}
		expire(t, f, 400*time.Millisecond)
		n, err := f.c.Reap(ctx)
		if err != nil || n != 1 {
			t.Fatalf("Reap = %d, %v; want 1", n, err)
		}
		if got := f.members(k.Sync()); !slices.Equal(got, []string{"master#0"}) {
			t.Fatalf("slot not returned: %v", got)
		}
		if len(f.members(k.Running())) != 0 {
			t.Error("reaped host still in running_queue")
		}
		// A late renewal takes the slot again while nobody else has: the
		// pull goes on.
		if restored, err := f.c.Renew(ctx, cl); !restored || err != nil {
			t.Errorf("renew after expiry, slot still free: %v, %v", restored, err)
		}
		if got := f.members(k.Sync()); len(got) != 0 || !slices.Equal(f.members(k.Running()), []string{"a"}) {
			t.Fatalf("restored claim: sync %v running %v", got, f.members(k.Running()))
		}
		// Expired again, and this time b takes the slot: a's lease is lost.
		expire(t, f, 400*time.Millisecond)
		if n, err := f.c.Reap(ctx); n != 1 || err != nil {
			t.Fatalf("second Reap = %d, %v", n, err)
		}
		clb, err := f.c.Claim(ctx, "b", g.Ref(), ClaimOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.c.Renew(ctx, cl); !errors.Is(err, ErrLeaseLost) {
			t.Errorf("renew after the slot went to b: %v", err)
		}
		if err := f.c.Fail(ctx, clb, SourceOK, "done with it", 0); err != nil {
			t.Fatal(err)
		}
		// A late finish records the host but does not return the slot a
		// second time.
		if err := f.c.Finish(ctx, cl, 0); err != nil {
			t.Fatal(err)
		}
		if got := f.members(k.Sync()); !slices.Equal(got, []string{"master#0"}) {
			t.Fatalf("slot duplicated by a late finish: %v", got)
		}
		if !hasEvent(t, f, "lease_expired", "a") {
			t.Error("no lease_expired event")
		}
	})
}

// expire waits for Redis to expire keys (miniredis's TTLs run on the wall
// clock too: see redistest.Mini).
func expire(t *testing.T, f *fixture, d time.Duration) {
	time.Sleep(d)
}

func TestFailVerdicts(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		g := f.publish(1)
		f.heartbeat("a", "b", "c", "d")
		// a and b become sources with 2 slots each.
		for _, h := range []string{"a", "b"} {
			cl, err := f.c.Claim(ctx, h, g.Ref(), ClaimOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if err := f.c.Finish(ctx, cl, 2); err != nil {
				t.Fatal(err)
			}
		}
		claimFrom := func(host, source string) Claim {
			for range 100 {
				cl, err := f.c.Claim(ctx, host, g.Ref(), ClaimOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if cl.Source == source {
					return cl
				}
				f.c.Fail(ctx, cl, SourceOK, "retry", 1)
			}
			t.Fatalf("never drew a slot of %s", source)
			return Claim{}
		}
		cl := claimFrom("c", "a")
		if err := f.c.Fail(ctx, cl, SourceDead, "connection refused", 1); err != nil {
			t.Fatal(err)
		}
		if slices.Contains(f.members(k.Sync()), cl.Slot) {
			t.Error("a dead source's slot returned")
		}
		cl = claimFrom("c", "b")
		if err := f.c.Fail(ctx, cl, SourceBad, "hash mismatch", 1); err != nil {
			t.Fatal(err)
		}
		for _, m := range f.members(k.Sync()) {
			if strings.HasPrefix(m, "b#") {
				t.Errorf("bad source still offers %s", m)
			}
		}
		if !slices.Equal(f.members(k.BadSources()), []string{"b"}) {
			t.Errorf("bad_sources = %v", f.members(k.BadSources()))
		}
		// A bad source gets no slots back, not even by finishing again.
		if err := f.c.Finish(ctx, Claim{Host: "b", Gen: g.Ref()}, 2); err != nil {
			t.Fatal(err)
		}
		for range 20 {
			cl, err := f.c.Claim(ctx, "d", g.Ref(), ClaimOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if cl.Source == "b" {
				t.Fatal("claimed a slot of a bad source")
			}
			f.c.Fail(ctx, cl, SourceOK, "retry", 1)
		}
		if !hasEvent(t, f, "bad_source", "b") {
			t.Error("no bad_source event")
		}
	})
}

func TestNewGenerationSupersedes(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		g1 := f.publish(1)
		cl, err := f.c.Claim(ctx, "a", g1.Ref(), ClaimOptions{})
		if err != nil {
			t.Fatal(err)
		}
		g2 := f.publish(1)
		if err := f.c.Finish(ctx, cl, 1); !errors.Is(err, ErrStale) {
			t.Fatalf("finish of a superseded generation: %v", err)
		}
		if got := f.members(k.Sync()); !slices.Equal(got, []string{"master#0"}) {
			t.Errorf("old slot or host leaked into the new generation: %v", got)
		}
		if len(f.members(k.Finished())) != 0 {
			t.Error("host finished for the new generation")
		}
		if _, err := f.c.Claim(ctx, "a", g2.Ref(), ClaimOptions{}); err != nil {
			t.Errorf("claim in the new generation: %v", err)
		}
	})
}

// sentNames is a go-redis hook that records the name of every command a
// client sends, pipelined or not.
type sentNames struct {
	mu    sync.Mutex
	names []string
}

func (s *sentNames) add(cmds ...redis.Cmder) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range cmds {
		s.names = append(s.names, strings.ToLower(c.Name()))
	}
}

// take returns the names sent since the last take.
func (s *sentNames) take() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.names
	s.names = nil
	return out
}

func (s *sentNames) DialHook(next redis.DialHook) redis.DialHook { return next }

func (s *sentNames) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		s.add(cmd)
		return next(ctx, cmd)
	}
}

func (s *sentNames) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		s.add(cmds...)
		return next(ctx, cmds)
	}
}

// Between registrations a heartbeat is light: plain commands, no script,
// scored by this host's clock corrected to Redis TIME (here three hours
// off); a finish Redis lost still calls the script, which re-asserts it.
func TestLightHeartbeat(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		g := f.publish(1)
		f.mu.Lock()
		f.now = time.Now().Add(-3 * time.Hour)
		f.mu.Unlock()
		sent := &sentNames{}
		f.rdb.AddHook(sent)
		c := New(f.rdb, Config{Prefix: "{fanout}:", Now: f.clock})
		h := Host{ID: "a", Addr: "a:7070", Groups: []string{"gpu"}}
		score := func(key string) float64 {
			t.Helper()
			s, err := f.rdb.ZScore(ctx, key, "a").Result()
			if err != nil {
				t.Fatalf("%s: %v", key, err)
			}
			return s
		}

		// The clock offset is not known yet: the script beats (registering,
		// as a host's first beat does) and measures it.
		if _, err := c.Heartbeat(ctx, h, Beat{Register: true}); err != nil {
			t.Fatal(err)
		}
		if names := sent.take(); !slices.Contains(names, "evalsha") && !slices.Contains(names, "eval") {
			t.Fatalf("first beat sent %v, want the script", names)
		}
		first := score(k.Heartbeats())

		f.advance(2 * time.Second)
		p, err := c.Heartbeat(ctx, h, Beat{})
		if err != nil {
			t.Fatal(err)
		}
		names := sent.take()
		if slices.Contains(names, "evalsha") || slices.Contains(names, "eval") {
			t.Fatalf("light beat sent %v, want no script", names)
		}
		if got := score(k.Heartbeats()); got != first+2000 {
			t.Fatalf("light beat scored %.0f, want %.0f: the first beat's Redis time plus the 2 s this host's clock moved", got, first+2000)
		}
		if got := score(k.GroupHeartbeats("gpu")); got != first+2000 {
			t.Fatalf("group heartbeat scored %.0f, want %.0f", got, first+2000)
		}
		if p.Current != g.Ref() || p.State != StateRunning || p.Reasserted {
			t.Fatalf("light beat's pulse %+v, want generation %v running", p, g.Ref())
		}

		// Registration and offers go through the script.
		if _, err := c.Heartbeat(ctx, h, Beat{Register: true}); err != nil {
			t.Fatal(err)
		}
		if names := sent.take(); !slices.Contains(names, "evalsha") && !slices.Contains(names, "eval") {
			t.Fatalf("registering beat sent %v, want the script", names)
		}
		// The wall clock disagrees by more than a second with the time
		// elapsed since the last measurement (stepped, or the host slept):
		// the script beats, and measures again.
		c.clk.mu.Lock()
		c.clk.offset += 5 * time.Second
		c.clk.mu.Unlock()
		if _, err := c.Heartbeat(ctx, h, Beat{}); err != nil {
			t.Fatal(err)
		}
		if names := sent.take(); !slices.Contains(names, "evalsha") && !slices.Contains(names, "eval") {
			t.Fatalf("beat after a clock step sent %v, want the script", names)
		}
		if _, err := c.Heartbeat(ctx, h, Beat{}); err != nil {
			t.Fatal(err)
		}
		if names := sent.take(); slices.Contains(names, "evalsha") || slices.Contains(names, "eval") {
			t.Fatalf("beat after the new measurement sent %v, want no script", names)
		}

		cl, err := c.Claim(ctx, "a", g.Ref(), ClaimOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Finish(ctx, cl, 1); err != nil {
			t.Fatal(err)
		}
		sent.take()
		if p, err := c.Heartbeat(ctx, h, Beat{Held: g.Ref(), Uploads: 1}); err != nil || p.Reasserted {
			t.Fatalf("beat of a listed finish: %+v %v", p, err)
		}
		if names := sent.take(); slices.Contains(names, "evalsha") || slices.Contains(names, "eval") {
			t.Fatalf("beat of a listed finish sent %v, want no script", names)
		}
		// Redis loses the finish: the light beat sees it and the script
		// re-asserts it.
		f.rdb.SRem(ctx, k.Finished(), "a")
		if p, err := c.Heartbeat(ctx, h, Beat{Held: g.Ref(), Uploads: 1}); err != nil || !p.Reasserted {
			t.Fatalf("beat of a lost finish: %+v %v", p, err)
		}
		if !slices.Contains(f.members(k.Finished()), "a") {
			t.Fatal("lost finish not re-asserted")
		}
		// Redis loses the registration: the light beat sees it and the
		// script registers the host again, with its protocol (the master
		// publishes for the oldest protocol among the hosts alive).
		f.rdb.HDel(ctx, k.Hosts(), "a")
		sent.take()
		if _, err := c.Heartbeat(ctx, h, Beat{Held: g.Ref(), Uploads: 1}); err != nil {
			t.Fatal(err)
		}
		if names := sent.take(); !slices.Contains(names, "evalsha") && !slices.Contains(names, "eval") {
			t.Fatalf("beat of a lost registration sent %v, want the script", names)
		}
		hosts, err := c.Hosts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if i := slices.IndexFunc(hosts, func(x Host) bool { return x.ID == "a" }); i < 0 || hosts[i].Proto != Proto {
			t.Fatalf("hosts after the lost registration: %+v, want a registered with protocol %d", hosts, Proto)
		}
	})
}

func TestHeartbeatsAndStatus(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		st, err := f.c.Status(ctx)
		if err != nil || st.State != StateIdle {
			t.Fatalf("empty status: %+v %v", st, err)
		}
		g := f.publish(1)
		// Liveness is judged by Redis TIME: this host's clock, a minute
		// off, changes nothing; a heartbeat older than the grace does.
		f.c = New(f.rdb, Config{Prefix: "{fanout}:", LeaseTTL: 15 * time.Second, HostGrace: 700 * time.Millisecond, Now: f.clock})
		f.heartbeat("a", "b")
		f.advance(time.Minute)
		time.Sleep(800 * time.Millisecond)
		f.heartbeat("b", "c") // a is now 800ms old: lost
		hosts, err := f.c.Hosts(ctx)
		if err != nil || len(hosts) != 3 || hosts[0].ID != "a" || hosts[0].Alive || !hosts[1].Alive || hosts[1].Addr != "b:7070" {
			t.Fatalf("Hosts = %+v, %v", hosts, err)
		}
		// a finished earlier and offered a slot; it is dead now: status does
		// not list it, and a claim that meets it drops it.
		f.rdb.SAdd(ctx, k.Sync(), "a#0")
		f.rdb.SAdd(ctx, k.SyncFull(), "a#0")
		if st, _ := f.c.Status(ctx); !slices.Equal(st.Sources, []string{"master#0"}) {
			t.Errorf("status lists a dead host's slot: %v", st.Sources)
		}
		// A claim checks the sampled slots from a random one on and takes
		// the first usable: each claim meets a#0 with probability 1/2, so
		// 8 claims missed it 1 time in 256 (it failed make test once).
		for range 40 { // a#0 met for sure, and never taken
			cl, err := f.c.Claim(ctx, "x", g.Ref(), ClaimOptions{})
			if err != nil || cl.Source == "a" {
				t.Fatalf("claim met a dead host's slot: %+v, %v", cl, err)
			}
			f.c.Fail(ctx, cl, SourceOK, "again", 0)
		}
		if got := f.members(k.Sync()); !slices.Equal(got, []string{"master#0"}) {
			t.Errorf("dead host's slot kept after claims met it: %v", got)
		}
		for _, h := range []string{"b", "c"} {
			cl, err := f.c.Claim(ctx, h, g.Ref(), ClaimOptions{})
			if err != nil {
				t.Fatal(err)
			}
			st, _ = f.c.Status(ctx)
			if st.State != StateRunning || st.Claims[h] == "" || !slices.Contains(st.Running, h) {
				t.Fatalf("while %s pulls: %+v", h, st)
			}
			if err := f.c.Finish(ctx, cl, 1); err != nil {
				t.Fatal(err)
			}
		}
		// b and c beat again: under load the steps above can take longer
		// than the 700 ms grace, and the check below is about completion,
		// not liveness.
		f.heartbeat("b", "c")
		f.c.Lookup(ctx)
		st, err = f.c.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.State != StateDone || !slices.Equal(st.Expected, []string{"b", "c"}) || !slices.Equal(st.Finished, []string{"b", "c"}) || st.Lookup != 1 || st.Task != "" {
			t.Fatalf("status = %+v", st)
		}
		if ok, err := f.c.MarkDone(ctx, g.Ref()); !ok || err != nil {
			t.Fatalf("MarkDone = %v, %v", ok, err)
		}
		if ok, _ := f.c.MarkDone(ctx, g.Ref()); ok {
			t.Error("MarkDone twice")
		}
		if err := f.c.Forget(ctx, "b"); err != nil {
			t.Fatal(err)
		}
		st, _ = f.c.Status(ctx)
		if slices.Contains(st.Finished, "b") || slices.ContainsFunc(st.Sources, func(s string) bool { return strings.HasPrefix(s, "b#") }) || len(st.Hosts) != 2 {
			t.Errorf("after forget: %+v", st)
		}
	})
}

func TestOfferSlotsSkipsClaimed(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		g := f.publish(2)
		if _, err := f.c.Claim(ctx, "a", g.Ref(), ClaimOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := f.c.OfferSlots(ctx, "master", g.Ref(), 2, false); err != nil {
			t.Fatal(err)
		}
		free := f.members(f.c.Keys().Sync())
		st, _ := f.c.Status(ctx)
		if len(free) != 1 || free[0] == st.Claims["a"] {
			t.Fatalf("offer re-added a claimed slot: free %v, claimed %s", free, st.Claims["a"])
		}
		if err := f.c.OfferSlots(ctx, "master", Ref{ID: g.ID - 1, Digest: g.Digest}, 2, false); err != nil || len(f.members(f.c.Keys().Sync())) != 1 {
			t.Error("offer for an old generation changed the set")
		}
	})
}

// TestPrefixIsolates checks that every key the protocol writes carries the
// prefix.
func TestPrefixIsolates(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		f.c.SetTask(ctx, "/x", TaskOptions{Delete: true})
		f.c.Adopt(ctx)
		g := f.publish(1)
		f.heartbeat("a", "b")
		f.c.Lookup(ctx)
		cl, _ := f.c.Claim(ctx, "a", g.Ref(), ClaimOptions{})
		f.c.Fail(ctx, cl, SourceBad, "x", 1)
		cl, _ = f.c.Claim(ctx, "b", g.Ref(), ClaimOptions{})
		f.c.Finish(ctx, cl, 1)
		f.c.Reap(ctx)
		keys, err := f.allKeys(ctx)
		if err != nil || len(keys) < 5 {
			t.Fatalf("keys %v, %v", keys, err)
		}
		for _, key := range keys {
			if !strings.HasPrefix(key, "{fanout}:") {
				t.Errorf("unprefixed key %q", key)
			}
		}
	})
}

func hasEvent(t *testing.T, f *fixture, typ, host string) bool {
	t.Helper()
	msgs, err := f.rdb.XRange(context.Background(), f.c.Keys().Events(), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if m.Values["type"] == typ && m.Values["host"] == host {
			return true
		}
	}
	return false
}

// Pipelining: a pulling host offers its slots at once. Claims prefer
// sources that hold the whole generation, never pull from a host that is
// downstream (no cycles), and a host that switches sources keeps its own
// offered slots while one that fails withdraws them.
func TestPartialSources(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		g := f.publish(1)
		f.heartbeat("a", "b", "c", "y", "z")
		claim := func(host string) Claim {
			t.Helper()
			cl, err := f.c.Claim(ctx, host, g.Ref(), ClaimOptions{})
			if err != nil {
				t.Fatalf("claim for %s: %v", host, err)
			}
			return cl
		}
		offer := func(host string) {
			t.Helper()
			if err := f.c.OfferSlots(ctx, host, g.Ref(), 1, false); err != nil {
				t.Fatal(err)
			}
		}
		a := claim("a")
		if a.Source != "master" || a.Partial {
			t.Fatalf("first claim = %+v, want the origin, whole", a)
		}
		offer("a")
		b := claim("b")
		if b.Source != "a" || !b.Partial {
			t.Fatalf("second claim = %+v, want a's slot, partial", b)
		}
		offer("b")

		// a's source dies; a switches: it keeps its offered slot (b holds
		// it now) and must not claim b's slot: b pulls from a.
		if err := f.c.Switch(ctx, a, SourceDead, "origin gone"); err != nil {
			t.Fatal(err)
		}
		if _, err := f.c.Claim(ctx, "a", g.Ref(), ClaimOptions{}); !errors.Is(err, ErrNoSource) {
			t.Fatalf("a claimed with only its downstream b offered: %v", err)
		}
		if !hasEvent(t, f, "switch", "a") {
			t.Error("no switch event for a")
		}
		// c is nobody's upstream: it may stream from b.
		c := claim("c")
		if c.Source != "b" || !c.Partial {
			t.Fatalf("c claimed %+v, want b's slot", c)
		}
		offer("c")
		// The origin's slot backs off after the dead verdict; the origin
		// itself offers it again at once (force). Then a gets it, never c
		// (c <- b <- a).
		offer("master")
		if slices.Contains(f.members(k.Sync()), "master#0") {
			t.Fatal("a slot judged dead was offered again before its back-off")
		}
		if err := f.c.OfferSlots(ctx, "master", g.Ref(), 1, true); err != nil {
			t.Fatal(err)
		}
		for range 10 {
			cl := claim("a")
			if cl.Source != "master" {
				t.Fatalf("a claimed %s, downstream of itself", cl.Slot)
			}
			if err := f.c.Switch(ctx, cl, SourceOK, "again"); err != nil {
				t.Fatal(err)
			}
		}

		// y holds the whole generation: z always prefers it to the
		// partial sources on offer.
		if err := f.c.Finish(ctx, Claim{Host: "y", Gen: g.Ref()}, 1); err != nil {
			t.Fatal(err)
		}
		f.rdb.SRem(ctx, k.Sync(), "master#0")
		for range 20 {
			cl := claim("z")
			if cl.Source != "y" || cl.Partial {
				t.Fatalf("z claimed %s (partial %v) with a whole source free", cl.Slot, cl.Partial)
			}
			if err := f.c.Fail(ctx, cl, SourceOK, "again", 1); err != nil {
				t.Fatal(err)
			}
		}

		// c fails for good: its offered slot is withdrawn.
		if !slices.Contains(f.members(k.Sync()), "c#0") {
			t.Fatal("c#0 not on offer")
		}
		if err := f.c.Fail(ctx, c, SourceOK, "disk full", 1); err != nil {
			t.Fatal(err)
		}
		if slices.Contains(f.members(k.Sync()), "c#0") {
			t.Error("a host that failed its pull still offers its slot")
		}
	})
}

func heartbeatErr(c *Client, host string) (Pulse, error) {
	return c.Heartbeat(context.Background(), Host{ID: host, Addr: host + ":7070", Version: "test", Role: "minion"}, Beat{Register: true})
}

// TestSilent: hosts whose heartbeat, in Redis time, is older than the age
// are listed oldest first, a bounded batch at a time, and Forget removes
// them from the registry.
func TestSilent(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		f.heartbeat("fresh")
		now, err := f.rdb.Time(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		week := 7 * 24 * time.Hour
		for i, h := range []string{"old1", "old2", "old3"} {
			f.heartbeat(h)
			f.rdb.ZAdd(ctx, k.Heartbeats(), redis.Z{Score: float64(now.Add(-week - time.Duration(3-i)*time.Hour).UnixMilli()), Member: h})
		}
		got, err := f.c.Silent(ctx, week, 2)
		if err != nil || !slices.Equal(got, []string{"old1", "old2"}) {
			t.Fatalf("Silent(7d, 2) = %v, %v; want the two oldest", got, err)
		}
		for _, h := range got {
			if err := f.c.Forget(ctx, h); err != nil {
				t.Fatal(err)
			}
		}
		got, err = f.c.Silent(ctx, week, 100)
		if err != nil || !slices.Equal(got, []string{"old3"}) {
			t.Fatalf("after forgetting two: Silent = %v, %v", got, err)
		}
		hosts, err := f.c.Hosts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, h := range hosts {
			ids = append(ids, h.ID)
		}
		if !slices.Equal(ids, []string{"fresh", "old3"}) {
			t.Errorf("registry %v, want fresh and old3", ids)
		}
	})
}

// allKeys lists every key: on Cluster, those of every primary.
func (f *fixture) allKeys(ctx context.Context) ([]string, error) {
	cc, ok := f.rdb.(*redis.ClusterClient)
	if !ok {
		return f.rdb.Keys(ctx, "*").Result()
	}
	var mu sync.Mutex
	var all []string
	err := cc.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
		keys, err := n.Keys(ctx, "*").Result()
		mu.Lock()
		all = append(all, keys...)
		mu.Unlock()
		return err
	})
	return all, err
}

// Hosts reads registries larger than a scan page whole: every host once,
// its registration joined with its heartbeat.
func TestHostsScansPages(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		const n = 2*scanPage + 301
		f.manyHosts(n, func(p redis.Pipeliner, i int, id string, now time.Time) {
			if i%2 == 0 { // half of them beat
				p.ZAdd(ctx, k.Heartbeats(), redis.Z{Member: id, Score: float64(now.UnixMilli())})
			}
		})
		hosts, err := f.c.Hosts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(hosts) != n {
			t.Fatalf("%d hosts listed, want %d", len(hosts), n)
		}
		for i, h := range hosts {
			id := fmt.Sprintf("h%05d", i)
			if h.ID != id || h.Addr != id+":7070" || h.Alive != (i%2 == 0) {
				t.Fatalf("host %d = %+v; want %s at %s:7070, alive %v", i, h, id, id, i%2 == 0)
			}
		}
	})
}

// Status reads a fleet larger than a scan page whole, with scans: no
// command reads a key with an entry per host at once.
func TestStatusScansPages(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		g := f.publish(1)
		const n = 2*scanPage + 301
		f.manyHosts(n, func(p redis.Pipeliner, i int, id string, now time.Time) {
			p.ZAdd(ctx, k.Heartbeats(), redis.Z{Member: id, Score: float64(now.UnixMilli())})
			if i%2 == 0 {
				p.SAdd(ctx, k.Finished(), id)
			} else {
				p.SAdd(ctx, k.Running(), id)
				p.HSet(ctx, k.Claims(), id, fmt.Sprintf("%d h%05d#0 0 %s", g.ID, i-1, g.Digest))
				p.HSet(ctx, k.Progress(), id, fmt.Sprintf(`{"gen":%d,"done":%d,"total":100}`, g.ID, i%100))
			}
		})
		sent := &sentNames{}
		f.rdb.AddHook(sent)
		st, err := f.c.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Hosts) != n || len(st.Expected) != n || len(st.Finished) != (n+1)/2 || len(st.Running) != n/2 || len(st.Claims) != n/2 || len(st.Progress) != n/2 {
			t.Fatalf("status of %d hosts: %d hosts, %d expected, %d finished, %d running, %d claims, %d progress",
				n, len(st.Hosts), len(st.Expected), len(st.Finished), len(st.Running), len(st.Claims), len(st.Progress))
		}
		if !slices.IsSorted(st.Finished) || st.Finished[1] != "h00002" || st.Claims["h00003"] != "h00002#0" || st.Progress["h00099"].Done != 99 {
			t.Fatalf("status content: finished %v..., claim of h00003 %q, progress of h00099 %+v", st.Finished[:3], st.Claims["h00003"], st.Progress["h00099"])
		}
		if st.State != StateRunning {
			t.Fatalf("state %s with half the hosts running, want running", st.State)
		}
		names := sent.take()
		for _, whole := range []string{"smembers", "zrange", "zrangebyscore"} {
			if slices.Contains(names, whole) {
				t.Fatalf("status sent %s: %v", whole, names)
			}
		}
		if c := countOf(names, "hgetall"); c > 2 { // the generation and the watch state
			t.Fatalf("status sent %d HGETALL: %v", c, names)
		}
		// The first pipeline scans 7 hashes, 5 sets and the heartbeats;
		// a real Redis pages a key of 2,301 entries (miniredis answers a
		// scan in one page whatever its COUNT).
		if f.srv.Name != "miniredis" && (countOf(names, "hscan") <= 7 || countOf(names, "sscan") <= 5 || countOf(names, "zscan") <= 1) {
			t.Fatalf("status read no second page: %v", names)
		}
	})
}

func countOf(names []string, name string) int {
	n := 0
	for _, s := range names {
		if s == name {
			n++
		}
	}
	return n
}

// manyHosts registers n hosts, h00000 up, in one pipeline, and adds what
// each writes for host i (id) at now, Redis's time.
func (f *fixture) manyHosts(n int, each func(p redis.Pipeliner, i int, id string, now time.Time)) {
	f.t.Helper()
	ctx := context.Background()
	now, err := f.rdb.Time(ctx).Result()
	if err != nil {
		f.t.Fatal(err)
	}
	_, err = f.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range n {
			id := fmt.Sprintf("h%05d", i)
			p.HSet(ctx, f.c.Keys().Hosts(), id, fmt.Sprintf(`{"addr":"%s:7070","proto":3}`, id))
			each(p, i, id, now)
		}
		return nil
	})
	if err != nil {
		f.t.Fatal(err)
	}
}
