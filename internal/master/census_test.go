package master

import (
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/sirupsen/logrus"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/manifest"
)

// censusMaster is a master over miniredis (no peer server) and a function
// that registers host as alive with protocol proto.
func censusMaster(t *testing.T) (*Master, func(host string, proto int)) {
	t.Helper()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { rdb.Close() })
	log := logrus.New()
	log.SetOutput(io.Discard)
	co := coord.New(rdb, coord.Config{HostGrace: time.Minute})
	m, err := New(Config{ID: "master", Advertise: "127.0.0.1:1", Root: t.TempDir(), StateDir: t.TempDir(), Log: log}, co, nil)
	if err != nil {
		t.Fatal(err)
	}
	register := func(host string, proto int) {
		t.Helper()
		ctx := context.Background()
		now, err := rdb.Time(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		k := co.Keys()
		if err := rdb.HSet(ctx, k.Hosts(), host, fmt.Sprintf(`{"addr":"%s:7070","proto":%d}`, host, proto)).Err(); err != nil {
			t.Fatal(err)
		}
		if err := rdb.ZAdd(ctx, k.Heartbeats(), redis.Z{Score: float64(now.UnixMilli()), Member: host}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	return m, register
}

// The manifest format is one every alive host reads; a recent census that
// found every host current is trusted without reading the registry again
// (a host of an older protocol registered since is seen at the next
// census), and one that found an older host is not: the registry is read
// again at every publish until that host is gone or upgraded.
func TestFormatCensus(t *testing.T) {
	ctx := context.Background()
	m, register := censusMaster(t)
	register("a", coord.Proto)
	if f := m.format(ctx); f != manifest.Format3 {
		t.Fatalf("format with a current host: %d, want %d", f, manifest.Format3)
	}
	register("old", 2)
	if f := m.format(ctx); f != manifest.Format3 {
		t.Fatalf("format within a fresh census: %d, want the census's %d", f, manifest.Format3)
	}
	// The census ages past censusFresh: the registry is read again.
	c := *m.census.Load()
	c.at = c.at.Add(-censusFresh)
	m.census.Store(&c)
	if f := m.format(ctx); f != manifest.Format2 {
		t.Fatalf("format with a host of protocol 2 alive: %d, want %d", f, manifest.Format2)
	}
	if c := m.census.Load(); len(c.old) != 1 || c.old[0] != "old" {
		t.Fatalf("census: %+v, want old listed", c)
	}
	// A census that found an older host is never trusted: its upgrade
	// shows at the next publish.
	register("old", coord.Proto)
	if f := m.format(ctx); f != manifest.Format3 {
		t.Fatalf("format once the old host upgraded: %d, want %d", f, manifest.Format3)
	}
	register("older", 1)
	if _, err := m.takeCensus(ctx); err != nil {
		t.Fatal(err)
	}
	if f := m.format(ctx); f != manifest.Format1 {
		t.Fatalf("format with a host of protocol 1 alive: %d, want %d", f, manifest.Format1)
	}
}

// Run keeps a census from its start, and its census goroutine ends with it.
func TestRunKeepsCensus(t *testing.T) {
	m, register := censusMaster(t)
	register("a", 2)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for m.census.Load() == nil {
		if time.Now().After(deadline) {
			cancel()
			t.Fatal("Run took no census in 10 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if c := m.census.Load(); c.format != manifest.Format2 || len(c.old) != 1 {
		t.Errorf("census %+v: want format 2, host a old", c)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}

// The master skips its wait for more notifications when one is the task
// key's: only the task key's channel counts, and notifications that cannot
// tell their channels count as none.
func TestCameOn(t *testing.T) {
	n, notify := coord.RelayedNotifications(func() error { return nil })
	notify("master", "")
	if cameOn(n, "task") {
		t.Fatal("a message on master counted as one on task")
	}
	notify("master", "")
	notify("task", "set")
	if !cameOn(n, "task") {
		t.Fatal("a message on task not seen")
	}
	if cameOn(n, "task") {
		t.Fatal("channels seen twice: Came must forget them")
	}
	shared := coord.SharedNotifications(make(chan struct{}), func() error { return nil })
	if cameOn(shared, "task") {
		t.Fatal("notifications that cannot tell their channels counted as the task's")
	}
}

// A census read earlier never replaces one read later: the background
// census and a publish's may run at once.
func TestCensusKeepsTheLatest(t *testing.T) {
	m, register := censusMaster(t)
	register("a", coord.Proto)
	later := &census{at: time.Now().Add(time.Hour), format: manifest.Format2, old: []string{"x"}}
	m.census.Store(later)
	c, err := m.takeCensus(context.Background())
	if err != nil || c.format != manifest.Format3 {
		t.Fatalf("census read: %+v, %v", c, err)
	}
	if m.census.Load() != later {
		t.Fatalf("census kept: %+v, want the later one", m.census.Load())
	}
}
