package master

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/fanout/fanout/internal/exclude"
	"github.com/fanout/fanout/internal/manifest"
)

// TestTreeWatcherLimitAndBursts: the kernel refusing a watch with ENOSPC
// (injected) is reported once, naming the sysctl, and the unwatched
// directories are handed over at every scan; events of a burst come out
// as one batch of changed paths once the tree is quiet for Delay; content
// writes to excluded paths are not reported.
func TestTreeWatcherLimitAndBursts(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"a", "b", "c", "skip"} {
		os.Mkdir(filepath.Join(root, d), 0o755)
	}
	os.WriteFile(filepath.Join(root, "skip", "log"), nil, 0o644)
	var logs bytes.Buffer
	log := logrus.New()
	log.SetOutput(&logs)
	tw, err := newTreeWatcher(WatchConfig{Delay: 200 * time.Millisecond, MaxDelay: time.Second, ScanEvery: 300 * time.Millisecond}, log)
	if err != nil {
		t.Fatal(err)
	}
	real := tw.add
	tw.add = func(d string) error {
		if len(tw.watched) >= 2 {
			return syscall.ENOSPC // what the kernel says past fs.inotify.max_user_watches
		}
		return real(d)
	}
	ex, _ := exclude.Parse([]string{"/skip/log"})
	man, err := manifest.Build(context.Background(), root, manifest.Options{Exclude: ex})
	if err != nil {
		t.Fatal(err)
	}
	tw.arm(root, man, ex)
	if _, w, u := tw.counts(); w != 2 || u != 3 {
		t.Fatalf("watched %d, unwatched %d; want 2 and 3 (5 directories, 2 watches allowed)", w, u)
	}
	if n := strings.Count(logs.String(), "fs.inotify.max_user_watches"); n != 1 {
		t.Fatalf("the watch limit was reported %d times, want once naming the sysctl:\n%s", n, logs.String())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); tw.run(ctx) }()
	defer func() { cancel(); <-done }()
	<-tw.ready // the full walk arming asks for
	if _, full := tw.take(); !full {
		t.Fatal("arming did not ask for a full walk")
	}
	// The scan hands over the unwatched directories, with no event.
	<-tw.ready
	changed, _ := tw.take()
	if len(changed) < 3 {
		t.Fatalf("scan handed over %q, want the 3 unwatched directories", changed)
	}
	// A burst in the watched root: one batch after it settles.
	tw.take()
	os.WriteFile(filepath.Join(root, "skip", "log"), []byte("excluded"), 0o644)
	start := time.Now()
	for i := range 20 {
		os.WriteFile(filepath.Join(root, "f"+string(rune('a'+i))), []byte("x"), 0o644)
		time.Sleep(10 * time.Millisecond)
	}
	for {
		<-tw.ready
		changed, _ = tw.take()
		if slices.Contains(changed, "fa") {
			break
		}
	}
	if time.Since(start) < 200*time.Millisecond {
		t.Fatal("the batch came before the tree was quiet for --delay")
	}
	if !slices.Contains(changed, "ft") || slices.Contains(changed, "skip/log") {
		t.Fatalf("batch %q: want every file of the burst, and not the excluded write", changed)
	}
}
