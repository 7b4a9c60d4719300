package faults

import (
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/fleet"
)

// kill -9 of a source in the middle of serving a large file: the host
// streaming from it resumes from another source, the dead source's slots
// are never claimed again, and the task completes on every live host.
func TestKillSourceMidFile(t *testing.T) {
	e := newEnv(t, redisURL(t))
	slow := []string{"--bwlimit", "4M"}
	e.master(12<<20, slow...)
	hosts := map[string]*fleet.Proc{}
	for _, n := range []string{"m1", "m2", "m3"} {
		hosts[n] = e.minion(n, slow...)
	}
	if err := e.WaitRegistered(e.ctx, 3); err != nil {
		t.Fatal(err)
	}
	e.set(task)
	// A source with a puller behind it that has some bytes already.
	var victim, behind string
	e.waitFor("a minion streaming from another minion", func(st coord.Status) bool {
		for h := range st.Claims {
			if up := upstream(st, h); up != "" && up != "master" && st.Progress[h].Done > 1<<20 {
				victim, behind = up, h
				return true
			}
		}
		return false
	})
	killed := time.Now()
	hosts[victim].Kill()
	st := e.waitDone(0)
	if contains(st.Finished, victim) {
		t.Errorf("the killed %s is listed as finished", victim)
	}
	var live []*fleet.Proc
	for n, h := range hosts {
		if n != victim {
			live = append(live, h)
			if !contains(st.Finished, n) {
				t.Errorf("%s did not finish", n)
			}
		}
	}
	e.check(task, live...)
	for _, ev := range e.events("claim") {
		if ev.At.After(killed.Add(time.Second)) && strings.HasPrefix(ev.Slot, victim+"#") {
			t.Errorf("%s claimed %s of the killed source at %v", ev.Host, ev.Slot, ev.At)
		}
	}
	if !hasEvent(e, "switch", behind) && !hasEvent(e, "fail", behind) {
		t.Errorf("%s, which pulled from %s, recorded no switch", behind, victim)
	}
}

// kill -9 of a puller mid-file: its lease expires and its source slot
// returns; restarted, it sweeps its temporary file and finishes.
func TestKillPullerMidFile(t *testing.T) {
	e := newEnv(t, redisURL(t))
	slow := []string{"--bwlimit", "4M"}
	e.master(12<<20, slow...)
	m1 := e.minion("m1", slow...)
	if err := e.WaitRegistered(e.ctx, 1); err != nil {
		t.Fatal(err)
	}
	e.set(task)
	e.waitFor("m1 mid-file", func(st coord.Status) bool { return st.Progress["m1"].Done > 1<<20 })
	m1.Kill()
	st := e.waitFor("the origin's slot to return after the lease", func(st coord.Status) bool {
		return contains(st.Sources, "master#0") && !contains(st.Running, "m1")
	})
	if !hasEvent(e, "lease_expired", "m1") {
		t.Error("no lease_expired event for m1")
	}
	if err := m1.Start(e.ctx); err != nil {
		t.Fatal(err)
	}
	done := e.waitDone(0)
	if done.Generation.ID != st.Generation.ID {
		t.Errorf("generation changed from %d to %d", st.Generation.ID, done.Generation.ID)
	}
	e.check(task, m1)
}

// The master killed after seeding and restarted: the task continues in the
// same generation, and no host receives a byte twice.
func TestMasterRestart(t *testing.T) {
	e := newEnv(t, redisURL(t))
	slow := []string{"--bwlimit", "4M"}
	master := e.master(8<<20, slow...)
	m1, m2 := e.minion("m1", slow...), e.minion("m2", slow...)
	if err := e.WaitRegistered(e.ctx, 2); err != nil {
		t.Fatal(err)
	}
	e.set(task)
	st := e.waitFor("a minion with part of the tree", func(st coord.Status) bool {
		return st.Progress["m1"].Done > 1<<20 || st.Progress["m2"].Done > 1<<20
	})
	master.Kill()
	time.Sleep(500 * time.Millisecond) // the hosts notice: their streams break
	if err := master.Start(e.ctx); err != nil {
		t.Fatal(err)
	}
	done := e.waitDone(0)
	if done.Generation.ID != st.Generation.ID {
		t.Errorf("the restarted master published generation %d; want %d continued", done.Generation.ID, st.Generation.ID)
	}
	e.check(task, m1, m2)
	for _, h := range []*fleet.Proc{m1, m2} {
		if got := received(t, h); got != done.Generation.Bytes {
			t.Errorf("%s received %d bytes for a tree of %d: something was sent twice", h.Name, got, done.Generation.Bytes)
		}
	}
}

func hasEvent(e *env, typ, host string) bool {
	for _, ev := range e.events(typ) {
		if ev.Host == host {
			return true
		}
	}
	return false
}
