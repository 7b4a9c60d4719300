package faults

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/fleet"
)

// kill -9 of a puller half way through a big file, restarted at once: it
// keeps the chunks it had written and verified (its part file survives the
// kill) and fetches only the rest, so the source sends at most 1.05 times
// the tree in all, and the copy is identical. The master is the only
// source, so its fanout_bytes_served_total is every byte moved to the
// puller, across both of its lives. The same holds for a stop (SIGTERM,
// as systemd restarts a daemon): the interrupted pull keeps its part file.
//
// What a kill loses is the request in flight: at most one run of chunks
// (4 MiB) sent but not landed whole. So the default file is 128 MiB, where
// that is 3 %, under the 5 % the target allows. FANOUT_RESUME_MIB sets
// the big file's size; the source's rate is capped so that one pass takes
// about 8 s whatever the size, which puts the kill near the middle.
func TestKillPullerResumes(t *testing.T) {
	t.Run("kill -9", func(t *testing.T) { testResume(t, (*fleet.Proc).Kill) })
	t.Run("SIGTERM", func(t *testing.T) {
		testResume(t, func(p *fleet.Proc) {
			if !p.Stop() {
				t.Error("m1 did not end on SIGTERM")
			}
		})
	})
}

func testResume(t *testing.T, stop func(*fleet.Proc)) {
	size := int64(128 << 20)
	if s := os.Getenv("FANOUT_RESUME_MIB"); s != "" {
		mib, err := strconv.ParseInt(s, 10, 64)
		if err != nil || mib < 128 {
			t.Fatalf("FANOUT_RESUME_MIB=%q: want a number of MiB, at least 128 (a kill may lose 4 MiB)", s)
		}
		size = mib << 20
	}
	e := newEnv(t, redisURL(t))
	rate := strconv.FormatInt(size/8>>10, 10) // KiB/s: 8 s a pass
	master := e.master(size, "--bwlimit", rate)
	m1 := e.minion("m1")
	if err := e.WaitRegistered(e.ctx, 1); err != nil {
		t.Fatal(err)
	}
	e.set(task)

	// Kill as soon as half the file arrived, watched closely on m1's own
	// counter (the progress in Redis moves once a second).
	var before int64
	for before < size/2 {
		select {
		case <-e.ctx.Done():
			t.Fatalf("m1 never received half the file: %d of %d bytes", before, size)
		case <-time.After(20 * time.Millisecond):
		}
		before = received(t, m1)
	}
	stop(m1)
	if err := m1.Start(e.ctx); err != nil {
		t.Fatal(err)
	}
	done := e.waitDone(0)
	e.check(task, m1)

	tree := done.Generation.Bytes
	served := counter(t, master, "fanout_bytes_served_total")
	resumed := counter(t, m1, "fanout_bytes_resumed_total")
	after := received(t, m1)
	t.Logf("file %d MiB, tree %d bytes: stopped after %d received; restarted, kept %d and received %d; the source served %d in all = %.3f × the tree",
		size>>20, tree, before, resumed, after, served, float64(served)/float64(tree))
	for _, l := range strings.Split(m1.Output(), "\n") {
		if strings.Contains(l, "resuming files") || strings.Contains(l, "claimed source") || strings.Contains(l, "holds generation") {
			t.Log(l)
		}
	}
	if float64(served) > 1.05*float64(tree) {
		t.Errorf("the source served %d bytes for a tree of %d (%.3f ×): want at most 1.05 ×", served, tree, float64(served)/float64(tree))
	}
	// The bound alone could hold if the kill missed the file; the restart
	// must have kept most of what it had.
	if resumed < before*3/4 {
		t.Errorf("restarted m1 kept %d bytes of the %d it had received before the kill", resumed, before)
	}
	if after > tree-resumed+(4<<20) {
		t.Errorf("restarted m1 received %d bytes; the tree is %d and it kept %d", after, tree, resumed)
	}
}
