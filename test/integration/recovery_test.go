package integration

import (
	"context"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/lab"
	"github.com/fanout/fanout/internal/master"
)

// TestMasterRestartResumes stops the master after a generation is done and
// starts a new one on the same state: it serves the same generation again
// (no new generation, the origin's slot offered again) and moves no bytes.
func TestMasterRestartResumes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, src := startWithTree(ctx, t, 3)
	st, err := l.WaitGeneration(ctx, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Master.Stop(); err != nil {
		t.Fatal(err)
	}
	// While the master is down, its slot may be gone; take it away to be
	// sure the restarted master offers it again.
	if err := l.Redis.SRem(ctx, l.Coord.Keys().Sync(), "master#0").Err(); err != nil {
		t.Fatal(err)
	}
	if err := l.StartMaster(ctx); err != nil {
		t.Fatal(err)
	}
	var now coord.Status
	for ctx.Err() == nil {
		now, err = l.Coord.Status(ctx)
		if err == nil && slices.Contains(now.Sources, "master#0") {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if now.Generation.ID != st.Generation.ID || now.State != coord.StateDone {
		t.Fatalf("after restart: generation %d state %s, want generation %d done", now.Generation.ID, now.State, st.Generation.ID)
	}
	for _, h := range l.Minions {
		if err := lab.Compare(src, filepath.Join(h.Root, task)); err != nil {
			t.Error(err)
		}
	}
}

// TestRedisDataLoss flushes Redis after a generation is done: the master
// publishes the task again, the minions re-register and announce that they
// hold it, and not a byte is transferred again.
func TestRedisDataLoss(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, src := startWithTree(ctx, t, 3)
	if _, err := l.WaitGeneration(ctx, 0, nil); err != nil {
		t.Fatal(err)
	}
	l.Mini.FlushAll()
	st, err := l.WaitGeneration(ctx, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Finished) != 3 {
		t.Fatalf("after data loss: %d hosts finished, want 3", len(st.Finished))
	}
	// The event stream starts empty after the flush: any claim in it is a
	// host that pulled again.
	events, err := l.Redis.XRange(ctx, l.Coord.Keys().Events(), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range events {
		if e.Values["type"] == "claim" {
			t.Errorf("a host claimed a source after the flush: %v", e.Values)
		}
	}
	for _, h := range l.Minions {
		if err := lab.Compare(src, filepath.Join(h.Root, task)); err != nil {
			t.Error(err)
		}
	}
}

// startWithTree starts a lab with n minions and sets the task on a sample
// tree.
func startWithTree(ctx context.Context, t *testing.T, n int) (*lab.Lab, string) {
	t.Helper()
	return startLab(ctx, t, lab.Config{Minions: n})
}

// startLab starts a lab as cfg says (in a temporary directory), writes the
// sample tree on the master and sets the task.
func startLab(ctx context.Context, t *testing.T, cfg lab.Config) (*lab.Lab, string) {
	t.Helper()
	l, src := startTree(ctx, t, cfg)
	if err := l.Set(ctx, task); err != nil {
		t.Fatal(err)
	}
	return l, src
}

// startTree is startLab without setting the task: the test sets it, with
// the options it is about.
func startTree(ctx context.Context, t *testing.T, cfg lab.Config) (*lab.Lab, string) {
	t.Helper()
	cfg.Dir = t.TempDir()
	l, err := lab.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Stop)
	src := filepath.Join(l.Master.Root, task)
	mustMkdir(t, src)
	if err := lab.SampleTree(src, 1<<20, 20); err != nil {
		t.Fatal(err)
	}
	return l, src
}

// TestOriginReoffersItsSlots: one transient error must never leave a
// generation without its origin. A puller judges the origin's slot dead
// (with an hour's back-off), and Redis loses the slot from the set: the
// master offers it again within a tick, both times.
func TestOriginReoffersItsSlots(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, _ := startLab(ctx, t, lab.Config{})
	var g coord.Generation
	waitFor(ctx, t, "the generation", func() bool {
		g, _ = l.Coord.Current(ctx)
		return g.State == coord.StateRunning
	})
	offered := func() bool {
		st, _ := l.Coord.Status(ctx)
		return slices.Contains(st.Sources, "master#0")
	}
	waitFor(ctx, t, "the origin's slot", offered)
	patient := coord.New(l.Redis, coord.Config{Prefix: l.Config().Prefix, DeadBackoff: time.Hour, DeadBackoffMax: time.Hour})
	cl, err := patient.Claim(ctx, "puller", g.Ref(), coord.ClaimOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := patient.Fail(ctx, cl, coord.SourceDead, "connection reset (transient)", 0); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "the origin to offer its slot again after a dead verdict", offered)
	l.Redis.SRem(ctx, l.Coord.Keys().Sync(), "master#0") // a write Redis lost
	waitFor(ctx, t, "the origin to offer its slot again after Redis lost it", offered)
}

// TestResumeOnlyWhatTheTaskNames: the publish of a new task was lost (Redis
// holds the new task value, adopted, but still the previous generation of
// the old path). A restarted master must not resume the old generation: it
// publishes the task the key names.
func TestResumeOnlyWhatTheTaskNames(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, _ := startWithTree(ctx, t, 2)
	first, err := l.WaitGeneration(ctx, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Master.Stop(); err != nil {
		t.Fatal(err)
	}
	next := task + "-next"
	nextSrc := filepath.Join(l.Master.Root, next)
	mustMkdir(t, nextSrc)
	if err := lab.SampleTree(nextSrc, 1<<10, 3); err != nil {
		t.Fatal(err)
	}
	k := l.Coord.Keys()
	l.Redis.Set(ctx, k.Task(), next, 0)
	l.Redis.PExpire(ctx, k.Task(), 100*365*24*time.Hour) // adopted; its generation was lost
	if err := l.StartMaster(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := l.WaitGeneration(ctx, first.Generation.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.Generation.Path != next {
		t.Fatalf("restarted master resumed %s, but the task names %s", st.Generation.Path, next)
	}
	for _, h := range l.Minions {
		if err := lab.Compare(nextSrc, filepath.Join(h.Root, next)); err != nil {
			t.Error(err)
		}
	}
}

// lostAdoption is a master's coordinator whose first publish of path finds
// the task key as it was before the master adopted it: what a master sees
// when go-redis retries its publish on a server restarted from a snapshot
// older than the adoption (the first reply lost in the kill), or when a
// failover promotes a replica that missed the adoption only.
type lostAdoption struct {
	master.Coordinator
	rdb       *redis.Client
	path, old string
	once      sync.Once
}

func (c *lostAdoption) Publish(ctx context.Context, g coord.Generation, uploads int) (coord.Generation, error) {
	if g.Path == c.path {
		c.once.Do(func() { c.rdb.Set(ctx, c.Keys().Task(), c.old, 100*365*24*time.Hour) })
	}
	return c.Coordinator.Publish(ctx, g, uploads)
}

// TestPublishOverALostAdoption: the new task's publish runs where the task
// key names the previous task, adopted. The generation and the key must
// agree again: the master never takes the older value for a new task and
// publishes the old tree over the newer one.
func TestPublishOverALostAdoption(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, _ := startWithTree(ctx, t, 2)
	first, err := l.WaitGeneration(ctx, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	next := task + "-next"
	nextSrc := filepath.Join(l.Master.Root, next)
	mustMkdir(t, nextSrc)
	if err := lab.SampleTree(nextSrc, 1<<10, 3); err != nil {
		t.Fatal(err)
	}
	if err := l.Master.Stop(); err != nil {
		t.Fatal(err)
	}
	l.Master.WrapMaster = func(co master.Coordinator) master.Coordinator {
		return &lostAdoption{Coordinator: co, rdb: l.Redis, path: next, old: task}
	}
	if err := l.StartMaster(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.Set(ctx, next); err != nil {
		t.Fatal(err)
	}
	st, err := l.WaitGeneration(ctx, first.Generation.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The master ticks every 100 ms: give it ten to act on a key that
	// disagrees with the generation.
	time.Sleep(time.Second)
	k := l.Coord.Keys()
	if v, _ := l.Redis.Get(ctx, k.Task()).Result(); v != next {
		t.Errorf("task key %q after the publish of %s, want %q", v, next, next)
	}
	cur, err := l.Coord.Current(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cur.Ref() != st.Generation.Ref() || cur.Path != next {
		t.Fatalf("generation %s of %s after %s of %s: the master published the older task again", cur.Ref(), cur.Path, st.Generation.Ref(), st.Generation.Path)
	}
	for _, h := range l.Minions {
		if err := lab.Compare(nextSrc, filepath.Join(h.Root, next)); err != nil {
			t.Error(err)
		}
	}
}
