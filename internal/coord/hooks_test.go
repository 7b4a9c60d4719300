package coord

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// finish claims and finishes generation g for each host.
func (f *fixture) finish(g Generation, hosts ...string) {
	f.t.Helper()
	ctx := context.Background()
	for _, h := range hosts {
		cl, err := f.c.Claim(ctx, h, g.Ref(), ClaimOptions{})
		if err != nil {
			f.t.Fatalf("claim %s: %v", h, err)
		}
		if err := f.c.Finish(ctx, cl, 1); err != nil {
			f.t.Fatalf("finish %s: %v", h, err)
		}
	}
}

// TestHookRecords: a running hook keeps a generation from being done; a
// failed one does not, and shows in status, in the events and, with its
// count, in the completion record. Records of another generation or of a
// newer format are ignored; publish resets them and forget drops a host's.
func TestHookRecords(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		g := f.publish(2)
		f.heartbeat("a", "b", "c")
		rec := func(state string) HookRecord {
			return HookRecord{Gen: g.ID, Digest: g.Digest, Task: "default", State: state, Started: time.Now(), Changed: 3}
		}
		if err := f.c.HookStarted(ctx, "a", rec("")); err != nil {
			t.Fatal(err)
		}
		f.finish(g, "a", "b", "c")
		st, err := f.c.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.State != StateRunning || st.Hooks["a"].State != HookRunning || len(st.Hooks) != 1 {
			t.Fatalf("every host finished, a's hook running: state %s, hooks %+v", st.State, st.Hooks)
		}
		failed := rec(HookFailed)
		failed.Exit, failed.Error, failed.Output = 3, "exit status 3", []string{"reloading app", "app: config invalid"}
		if err := f.c.HookDone(ctx, "a", failed); err != nil {
			t.Fatal(err)
		}
		ok := rec(HookOK)
		if err := f.c.HookDone(ctx, "b", ok); err != nil {
			t.Fatal(err)
		}
		st, err = f.c.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		a := st.Hooks["a"]
		if st.State != StateDone || a.State != HookFailed || a.Exit != 3 || !slices.Equal(a.Output, failed.Output) || a.V != HookFormat {
			t.Fatalf("after the hooks: state %s, a %+v", st.State, a)
		}
		if !hasEvent(t, f, "hook_failed", "a") || !hasEvent(t, f, "hook", "b") || hasEvent(t, f, "hook", "a") {
			t.Error("hook events missing or wrong")
		}
		evs, err := f.c.Events(ctx, "0", 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range evs {
			if ev.Type == "hook_failed" && ev.Msg != "exit status 3: app: config invalid" {
				t.Errorf("hook_failed message %q", ev.Msg)
			}
		}
		// Records of another generation or of a newer format are not
		// this generation's.
		k := f.c.Keys()
		old, _ := json.Marshal(HookRecord{V: 1, Gen: g.ID - 1, Digest: g.Digest, State: HookRunning})
		newer, _ := json.Marshal(HookRecord{V: HookFormat + 1, Gen: g.ID, Digest: g.Digest, State: HookRunning})
		f.rdb.HSet(ctx, k.Hooks(), "c", old, "d", newer, "e", "not json")
		if st, _ := f.c.Status(ctx); len(st.Hooks) != 2 || st.State != StateDone {
			t.Errorf("foreign records counted: %+v", st.Hooks)
		}
		comp, done, err := f.c.Complete(ctx, st.Generation, 3)
		if err != nil || !done {
			t.Fatal(done, err)
		}
		if comp.HooksOK != 1 || comp.HooksFailed != 1 || !slices.Equal(comp.HookFailedHosts, []string{"a"}) {
			t.Errorf("completion %+v", comp)
		}
		hist, err := f.c.History(ctx, 1)
		if err != nil || len(hist) != 1 || hist[0].HooksFailed != 1 || hist[0].HookFailedHosts[0] != "a" {
			t.Errorf("history %+v %v", hist, err)
		}
		// A record for a generation that is not current is refused.
		stale := rec(HookOK)
		stale.Digest = strings.Repeat("e", 64)
		if err := f.c.HookDone(ctx, "b", stale); !errors.Is(err, ErrStale) {
			t.Errorf("stale hook record: %v", err)
		}
		if err := f.c.Forget(ctx, "a"); err != nil {
			t.Fatal(err)
		}
		if _, there := f.rdb.HGetAll(ctx, k.Hooks()).Val()["a"]; there {
			t.Error("forget left a's hook record")
		}
		g2 := f.publish(1)
		if n := f.rdb.HLen(ctx, k.Hooks()).Val(); n != 0 {
			t.Errorf("publish left %d hook records", n)
		}
		recs, err := f.c.Hooks(ctx, g2.Ref())
		if err != nil || len(recs) != 0 {
			t.Errorf("hooks of a new generation: %v %v", recs, err)
		}
	})
}

// TestHookCountsBounded: a completion names at most the bound of failed
// hosts, in order.
func TestHookCountsBounded(t *testing.T) {
	recs := map[string]HookRecord{}
	for _, h := range []string{"z", "b", "y", "a", "ok1", "run"} {
		recs[h] = HookRecord{State: HookFailed}
	}
	recs["ok1"] = HookRecord{State: HookOK}
	recs["run"] = HookRecord{State: HookRunning}
	ok, failed, running, hosts := HookCounts(recs, 3)
	if ok != 1 || failed != 4 || running != 1 || !slices.Equal(hosts, []string{"a", "b", "y"}) {
		t.Errorf("HookCounts = %d %d %d %v", ok, failed, running, hosts)
	}
}
