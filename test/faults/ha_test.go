package faults

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/fleet"
	"github.com/fanout/fanout/internal/lab"
	"github.com/fanout/fanout/internal/redistest"
)

// Production Redis: the fleet runs against Sentinel and Cluster through
// their URLs, and the primary is killed with SIGKILL in the middle of a
// task. The clients follow the failover, what the promoted replica lacks
// is re-asserted, and the task completes with every copy identical.

// midTree waits until some minion holds part of the tree but not all.
func (e *env) midTree() {
	e.t.Helper()
	e.waitFor("a minion mid-tree", func(st coord.Status) bool {
		for _, p := range st.Progress {
			if p.Done > 1<<20 && p.Done < p.Total {
				return true
			}
		}
		return false
	})
}

// connections checks that no minion holds more than max connections to the
// Redis node at addr (each names its connections, fanout-minion:ID).
func (e *env) connections(addr string, max int) {
	e.t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	list, err := rdb.ClientList(e.ctx).Result()
	if err != nil {
		e.t.Fatal(err)
	}
	per := map[string]int{}
	for _, line := range strings.Split(list, "\n") {
		for _, f := range strings.Fields(line) {
			if name, ok := strings.CutPrefix(f, "name=fanout-minion:"); ok {
				per[name]++
			}
		}
	}
	e.t.Logf("minion connections to %s: %v", addr, per)
	for name, n := range per {
		if n > max {
			e.t.Errorf("minion %s holds %d connections to %s, want at most %d", name, n, addr, max)
		}
	}
}

// TestSentinelFailoverMidTask: a master and three minions on
// redis+sentinel://; the primary dies mid-task, a sentinel promotes the
// replica, and the task completes on every host.
func TestSentinelFailoverMidTask(t *testing.T) {
	s := redistest.NeedSentinel(t)
	e := newEnv(t, s.URL)
	slow := []string{"--bwlimit", "4M"}
	e.master(8<<20, slow...)
	hosts := []*fleet.Proc{e.minion("m1", slow...), e.minion("m2", slow...), e.minion("m3", slow...)}
	if err := e.WaitRegistered(e.ctx, 3); err != nil {
		t.Fatal(err)
	}
	e.set(task)
	e.midTree()
	primary, err := s.PrimaryAddr(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	e.connections(primary, 2)
	for _, n := range s.Sentinels {
		e.connections(n.Addr, 2) // commands (the primary's address) and +switch-master
	}
	old := s.KillPrimary(t)
	killed := time.Now()
	now, err := s.WaitFailover(e.ctx, old)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("primary %s killed; %s promoted after %v", old, now, time.Since(killed).Round(time.Millisecond))
	e.waitDone(0)
	t.Logf("done %v after the kill", time.Since(killed).Round(time.Millisecond))
	// A host whose heartbeats missed the failover for longer than the
	// fleet's 3 s --host-grace is not waited for: it finishes after done.
	st := e.waitFor("every minion to hold the generation", func(st coord.Status) bool {
		return len(st.Finished) == len(hosts)
	})
	e.check(task, hosts...)
	e.finishedHold(st, task, hosts...)
}

// TestClusterTaskAndFailover: a master and three minions on
// redis+cluster:// with the default {fanout}: prefix (the fleet's own
// client uses it too). A task completes; then, in the middle of the next
// one, the primary that owns the {fanout} slot dies, its replica takes
// over, and the task completes again with identical copies.
func TestClusterTaskAndFailover(t *testing.T) {
	c := redistest.NeedCluster(t)
	e := newEnv(t, c.URL)
	slow := []string{"--bwlimit", "4M"}
	master := e.master(2<<20, slow...)
	hosts := []*fleet.Proc{e.minion("m1", slow...), e.minion("m2", slow...), e.minion("m3", slow...)}
	if err := e.WaitRegistered(e.ctx, 3); err != nil {
		t.Fatal(err)
	}
	e.set(task)
	first := e.waitDone(0)
	e.check(task, hosts...)
	owner, _, err := c.SlotPrimary(e.ctx, "{fanout}")
	if err != nil {
		t.Fatal(err)
	}
	e.connections(owner, 2)
	for _, n := range c.Nodes {
		if n.Addr != owner {
			e.connections(n.Addr, 1) // the slot map, read once from some node
		}
	}

	next := task + "-v2"
	nextSrc := filepath.Join(master.Root, next)
	if err := os.MkdirAll(nextSrc, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := lab.SampleTree(nextSrc, 8<<20, 10); err != nil {
		t.Fatal(err)
	}
	e.set(next)
	e.waitFor("the next generation", func(st coord.Status) bool { return st.Generation.ID > first.Generation.ID })
	e.midTree()
	old := c.KillSlotPrimary(t, "{fanout}")
	killed := time.Now()
	now, err := c.WaitFailover(e.ctx, "{fanout}", old)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("primary %s of {fanout} killed; %s took over after %v", old, now, time.Since(killed).Round(time.Millisecond))
	st := e.waitFor("the next task to be done after the failover, on every minion", func(st coord.Status) bool {
		return st.Generation.Path == next && st.Generation.State == coord.StateDone && len(st.Finished) == len(hosts)
	})
	t.Logf("done %v after the kill", time.Since(killed).Round(time.Millisecond))
	e.src = nextSrc
	e.check(next, hosts...)
	e.finishedHold(st, next, hosts...)
}

// TestForgetAfter: a host silent for longer than --forget-after leaves the
// registry by itself; the live ones stay.
func TestForgetAfter(t *testing.T) {
	e := newEnv(t, redisURL(t))
	e.master(1<<10, "--forget-after", "4s")
	gone := e.minion("gone")
	e.minion("stay")
	if err := e.WaitRegistered(e.ctx, 2); err != nil {
		t.Fatal(err)
	}
	gone.Kill()
	killed := time.Now()
	err := fleet.Poll(e.ctx, "the silent host to be forgotten", func() (bool, error) {
		hosts, err := e.Coord.Hosts(e.ctx)
		if err != nil {
			return false, nil
		}
		var ids []string
		for _, h := range hosts {
			ids = append(ids, h.ID)
		}
		if contains(ids, "gone") {
			return false, nil
		}
		if !contains(ids, "stay") {
			return false, fmt.Errorf("the live host was forgotten too: %v", ids)
		}
		return true, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Its last heartbeat was at most one --heartbeat (300ms) before the
	// kill: forgotten sooner, it was not for its silence.
	if took := time.Since(killed); took < 3*time.Second {
		t.Errorf("forgotten %v after it was killed, before --forget-after 4s", took)
	}
	if !strings.Contains(e.Logs(), "forgot a host silent for longer than --forget-after") {
		t.Error("the master did not log the host it forgot")
	}
}
