// Package redistest starts Redis servers for tests: an in-process miniredis
// always, and a real redis-server when the binary is on PATH. With
// FANOUT_REQUIRE_REDIS=1 (as in CI) a missing redis-server fails the test
// instead of skipping the real-Redis half (see package testtool).
package redistest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/fanout/fanout/internal/freeport"
	"github.com/fanout/fanout/internal/testtool"
)

// Server is a Redis server for one test.
type Server struct {
	Name string // "miniredis" or "redis-server"
	Addr string
	URL  string
	// Mini is the miniredis itself (nil for a real server), for
	// FlushAll. Its TTLs run on the wall clock (ClockTTL).
	Mini *miniredis.Miniredis
	// Kill (real server only) kills the server with SIGKILL.
	Kill func()
	// Restart (real server only) kills the server and starts a new, empty
	// one on the same port.
	Restart func(t testing.TB)
	// Snapshot (real server only) saves the data set now (SAVE) and
	// returns a restore: it kills the server (SIGKILL: nothing written
	// since is kept) and starts it again on the same port from the
	// snapshot, as a failover to a replica that lagged behind would.
	Snapshot func(t testing.TB) (restore func(t testing.TB))
}

// Servers returns a miniredis and, when available, a real redis-server.
func Servers(t testing.TB) []Server {
	_, mini := Mini(t)
	out := []Server{mini}
	if real, ok := Real(t); ok {
		out = append(out, real)
	}
	return out
}

// Mini starts a miniredis for t.
func Mini(t testing.TB) (*miniredis.Miniredis, Server) {
	mr := miniredis.RunT(t)
	// TTLs run on the wall clock, as Redis's do, coherent with TIME (which
	// the scripts use for lease and back-off deadlines).
	mr.ClockTTL(true)
	return mr, Server{Name: "miniredis", Addr: mr.Addr(), URL: "redis://" + mr.Addr(), Mini: mr}
}

// Real starts a redis-server on a free loopback port for t; false when the
// binary is missing (a test failure instead under FANOUT_REQUIRE_REDIS=1).
func Real(t testing.TB) (Server, bool) {
	t.Helper()
	bin, ok := testtool.Find(t, "redis-server")
	if !ok {
		return Server{}, false
	}
	return start(t, bin), true
}

// NeedReal starts a redis-server for a test that is about a real server:
// without the binary it skips t (fails it under FANOUT_REQUIRE_REDIS=1).
func NeedReal(t testing.TB) Server {
	t.Helper()
	return start(t, testtool.Need(t, "redis-server"))
}

// start starts the redis-server bin on a free loopback port for t.
func start(t testing.TB, bin string) Server {
	t.Helper()
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	dir := t.TempDir()
	dump := filepath.Join(dir, "dump.rdb")
	var cmd *exec.Cmd
	run := func(t testing.TB) {
		t.Helper()
		cmd = exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--dir", dir, "--dbfilename", "dump.rdb")
		if err := cmd.Start(); err != nil {
			t.Fatalf("start redis-server: %v", err)
		}
		if err := waitPing(addr); err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("redis-server on %s: %v", addr, err)
		}
	}
	kill := func() {
		if cmd != nil && cmd.Process != nil {
			cmd.Process.Kill()
			cmd.Wait()
			cmd = nil
		}
	}
	snapshots := 0
	snapshot := func(t testing.TB) func(testing.TB) {
		t.Helper()
		rdb := redis.NewClient(&redis.Options{Addr: addr})
		defer rdb.Close()
		if err := rdb.Save(context.Background()).Err(); err != nil {
			t.Fatalf("SAVE: %v", err)
		}
		snapshots++
		snap := filepath.Join(dir, fmt.Sprintf("snapshot-%d.rdb", snapshots))
		if err := copyFile(dump, snap); err != nil {
			t.Fatal(err)
		}
		return func(t testing.TB) {
			t.Helper()
			kill()
			if err := copyFile(snap, dump); err != nil {
				t.Fatal(err)
			}
			run(t)
		}
	}
	run(t)
	t.Cleanup(kill)
	return Server{
		Name:     "redis-server",
		Addr:     addr,
		URL:      "redis://" + addr,
		Kill:     kill,
		Restart:  func(t testing.TB) { kill(); os.Remove(dump); run(t) },
		Snapshot: snapshot,
	}
}

func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o600)
}

func freePort() (int, error) { return freeport.Port("127.0.0.1") }

func waitPing(addr string) error {
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		err := rdb.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer to PING: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
