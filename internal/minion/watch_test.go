package minion

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/fanout/fanout/internal/manifest"
	"github.com/fanout/fanout/internal/metrics"
)

// When the kernel's watch limit is reached part way through a tree, the
// watcher says so once, naming the sysctl to raise, and the tree is then
// verified every ScanEvery instead of every VerifyEvery: drift in the
// unwatched part is still found within seconds, never missed.
func TestWatchLimitFallsBackToScanning(t *testing.T) {
	log, hook := logtest.NewNullLogger()
	tw := newTreeWatch(log, true, nil)
	t.Cleanup(func() {
		if tw.w != nil {
			tw.w.Close()
		}
	})
	added := 0
	tw.add = func(string) error {
		if added == 3 {
			return fmt.Errorf("inotify_add_watch: %w", syscall.ENOSPC)
		}
		added++
		return nil
	}
	man := &manifest.Manifest{Entries: []manifest.Entry{{Path: ".", Type: manifest.Dir}}}
	for i := range 10 {
		man.Entries = append(man.Entries, manifest.Entry{Path: fmt.Sprintf("d%d", i), Type: manifest.Dir})
	}
	if tw.arm("/tree", man) || tw.complete() {
		t.Fatal("a tree past the watch limit reported as fully watched")
	}
	var warned []string
	for _, e := range hook.AllEntries() {
		if e.Level == logrus.WarnLevel {
			warned = append(warned, e.Message)
		}
	}
	if len(warned) != 1 || !strings.Contains(warned[0], "fs.inotify.max_user_watches") {
		t.Fatalf("warnings %q, want one naming the sysctl", warned)
	}
	tw.arm("/tree", man) // again: no second warning
	if n := len(hook.AllEntries()); n != 1 {
		t.Errorf("%d log lines after re-arming, want the one warning", n)
	}

	m := &Minion{cfg: Config{VerifyEvery: time.Hour, ScanEvery: 50 * time.Millisecond, Log: log, Metrics: metrics.New()}, watch: tw}
	m.verified, m.checked = true, time.Now()
	if m.verifyDue() {
		t.Fatal("verification due at once")
	}
	time.Sleep(60 * time.Millisecond)
	if !m.verifyDue() {
		t.Fatal("a partly watched tree not verified after ScanEvery")
	}
	// Fully watched, the long period applies, and an event makes it due.
	tw.add = func(string) error { return nil }
	if !tw.arm("/tree", man) {
		t.Fatal("not fully watched once the limit allows")
	}
	m.checked = time.Now().Add(-time.Second)
	if m.verifyDue() {
		t.Fatal("a fully watched tree verified after ScanEvery")
	}
	tw.mark()
	if !m.verifyDue() {
		t.Fatal("a change seen by the watcher did not make verification due")
	}
}
