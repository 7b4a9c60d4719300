package faults

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/fleet"
	"github.com/fanout/fanout/internal/lab"
	"github.com/fanout/fanout/internal/redistest"
)

// Redis loses its last writes, as when a failover promotes a replica that
// lagged behind: the test restores Redis from a snapshot taken a moment
// earlier. Whatever was lost (finishes, claims, leases, a publish), the
// task completes, every copy is identical, and no host is ever counted
// finished for content it does not hold.

// finishedHold checks that every host Redis lists as finished holds the
// generation's content.
func (e *env) finishedHold(st coord.Status, path string, hosts ...*fleet.Proc) {
	e.t.Helper()
	src := filepath.Join(filepath.Dir(e.src), filepath.Base(path))
	for _, h := range hosts {
		if contains(st.Finished, h.Name) && !contains(st.Repairing, h.Name) {
			if err := lab.Compare(src, filepath.Join(h.Root, path)); err != nil {
				e.t.Errorf("%s is listed finished for generation %d but its copy differs: %v", h.Name, st.Generation.ID, err)
			}
		}
	}
}

// Mid-task: claims, leases, progress and maybe finishes of the last second
// are lost.
func TestRedisLosesLastWritesMidTask(t *testing.T) {
	srv := redistest.NeedReal(t) // a snapshot needs a real server
	e := newEnv(t, srv.URL)
	slow := []string{"--bwlimit", "4M"}
	e.master(8<<20, slow...)
	m1, m2, m3 := e.minion("m1", slow...), e.minion("m2", slow...), e.minion("m3", slow...)
	if err := e.WaitRegistered(e.ctx, 3); err != nil {
		t.Fatal(err)
	}
	e.set(task)
	e.waitFor("a minion mid-tree", func(st coord.Status) bool {
		for _, p := range st.Progress {
			if p.Done > 1<<20 {
				return true
			}
		}
		return false
	})
	restore := srv.Snapshot(t)
	time.Sleep(time.Second) // writes that will be lost: more claims, progress, maybe finishes
	restore(t)
	// Check, while the task goes on, that no host is ever listed finished
	// without the content.
	var st coord.Status
	err := fleet.Poll(e.ctx, "the generation to be done after the loss", func() (bool, error) {
		var err error
		st, err = e.Coord.Status(e.ctx)
		if err != nil {
			return false, nil // Redis restarting
		}
		e.finishedHold(st, task, m1, m2, m3)
		return st.State == coord.StateDone && st.Generation.State == coord.StateDone, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	e.check(task, m1, m2, m3)
	e.finishedHold(st, task, m1, m2, m3)
}

// Just after a host finished: its finish is lost. It announces it again (a
// heartbeat re-asserts it), and the generation completes.
func TestRedisLosesAFinish(t *testing.T) {
	srv := redistest.NeedReal(t) // a snapshot needs a real server
	e := newEnv(t, srv.URL)
	e.master(4<<20, "--bwlimit", "8M")
	fast := e.minion("fast")
	slow := e.minion("slow", "--bwlimit", "1M")
	if err := e.WaitRegistered(e.ctx, 2); err != nil {
		t.Fatal(err)
	}
	e.set(task)
	// Snapshots every 100ms until a host has finished: the last one taken
	// before a status that showed no host finished is restored. (Taken
	// after that status read, a snapshot could hold a finish that came in
	// between, and then nothing would be lost.)
	var restore func(testing.TB)
	err := fleet.Poll(e.ctx, "a host to finish", func() (bool, error) {
		snap := srv.Snapshot(t)
		st, err := e.Coord.Status(e.ctx)
		if err != nil {
			return false, err
		}
		if len(st.Finished) > 0 {
			return true, nil
		}
		restore = snap
		return false, nil
	})
	if err != nil || restore == nil {
		t.Fatalf("no snapshot before the first finish: %v", err)
	}
	restore(t)
	st := e.waitFor("the generation to be done after the lost finish", func(st coord.Status) bool {
		e.finishedHold(st, task, fast, slow)
		return st.State == coord.StateDone && st.Generation.State == coord.StateDone
	})
	e.check(task, fast, slow)
	e.finishedHold(st, task, fast, slow)
	if len(e.events("reassert")) == 0 {
		t.Error("no host re-asserted its lost finish")
	}
}

// A publish is lost: Redis goes back to the previous, done generation of
// another path. The master publishes the task it knows is newer again (a
// new id, never the lost one reused for other content), and every host
// ends with it.
func TestRedisLosesAPublish(t *testing.T) {
	srv := redistest.NeedReal(t) // a snapshot needs a real server
	e := newEnv(t, srv.URL)
	master := e.master(1 << 20)
	m1, m2 := e.minion("m1"), e.minion("m2")
	if err := e.WaitRegistered(e.ctx, 2); err != nil {
		t.Fatal(err)
	}
	e.set(task)
	first := e.waitDone(0)
	restore := srv.Snapshot(t)
	// The next task: another path.
	next := task + "-v2"
	nextSrc := filepath.Join(master.Root, next)
	if err := os.MkdirAll(nextSrc, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := lab.SampleTree(nextSrc, 2<<20, 5); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(nextSrc, "version"), []byte("2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.set(next)
	lost := e.waitFor("the next generation to be published", func(st coord.Status) bool {
		return st.Generation.ID > first.Generation.ID && st.Generation.Path == next
	}).Generation
	restore(t) // Redis forgets the second task and its generation
	st := e.waitFor("the lost task to be published again and done", func(st coord.Status) bool {
		return st.Generation.Path == next && st.State == coord.StateDone && st.Generation.State == coord.StateDone
	})
	// An id never names two contents. The lost id comes back only when
	// the master's publish itself ran again on the restored server (its
	// reply lost in the kill, the client retried it): then with the lost
	// generation's content.
	if g := st.Generation; g.ID < lost.ID || (g.ID == lost.ID && g.Digest != lost.Digest) {
		t.Errorf("republished as generation %s: the lost generation was %s", g.Ref(), lost.Ref())
	}
	e.src = nextSrc
	e.check(next, m1, m2)
	e.finishedHold(st, next, m1, m2)
}

// Push, not polling: master and minions poll only every 30 s, yet a task
// set with a plain SET is published and distributed well before any poll
// could have seen it (keyspace notifications tell the master, the
// generations channel the minions, the finish channel the master again).
func TestPushedNotPolled(t *testing.T) {
	srv := redistest.NeedReal(t) // keyspace notifications need a real server
	e := newEnv(t, srv.URL)
	lazy := []string{"--poll", "30s"}
	e.master(1<<20, append(lazy, "--max-uploads", "2")...) // no host waits for a slot
	m1, m2 := e.minion("m1", lazy...), e.minion("m2", lazy...)
	if err := e.WaitRegistered(e.ctx, 2); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // the first polls are behind every process
	start := time.Now()
	e.set(task)
	set, err := e.Redis.Time(e.ctx).Result() // Redis time, as the events'
	if err != nil {
		t.Fatal(err)
	}
	st := e.waitDone(0)
	took := time.Since(start)
	t.Logf("SET task to done with 30 s polls: %v", took.Round(time.Millisecond))
	if pub, claims := e.events("published"), e.events("claim"); len(pub) > 0 && len(claims) > 0 {
		t.Logf("SET -> published %v (the master's walk and hash included), published -> first claim %v",
			pub[0].At.Sub(set).Round(time.Millisecond), claims[0].At.Sub(pub[0].At).Round(time.Millisecond))
	}
	if took > 20*time.Second {
		t.Errorf("took %v: the processes waited for a poll, nothing pushed", took)
	}
	if len(st.Finished) != 2 {
		t.Errorf("finished %v", st.Finished)
	}
	e.check(task, m1, m2)
}
