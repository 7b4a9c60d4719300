package faults

import (
	"bytes"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/certtest"
	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/fleet"
	"github.com/fanout/fanout/internal/lab"
	"github.com/fanout/fanout/internal/redistest"
	"github.com/fanout/fanout/internal/testtool"
)

// Redis restarted with its data gone mid-task: the master republishes, the
// minions re-register and pull, and every copy ends verified.
func TestRedisLosesData(t *testing.T) {
	srv := redistest.NeedReal(t)
	e := newEnv(t, srv.URL)
	slow := []string{"--bwlimit", "4M"}
	e.master(8<<20, slow...)
	m1, m2 := e.minion("m1", slow...), e.minion("m2", slow...)
	if err := e.WaitRegistered(e.ctx, 2); err != nil {
		t.Fatal(err)
	}
	e.set(task)
	e.waitFor("a minion mid-tree", func(st coord.Status) bool {
		return st.Progress["m1"].Done > 1<<20 || st.Progress["m2"].Done > 1<<20
	})
	srv.Restart(t)
	lost := time.Now()
	// Nobody sets the task again: the master republishes what it served.
	st := e.waitFor("a generation published after the loss to be done", func(st coord.Status) bool {
		return st.State == coord.StateDone && st.Generation.Published.After(lost.Add(-time.Second))
	})
	if !contains(st.Finished, "m1") || !contains(st.Finished, "m2") {
		t.Errorf("finished %v, want m1 and m2", st.Finished)
	}
	e.check(task, m1, m2)
}

// A peer that serves wrong bytes: its copy rots on disk after it finished
// (same size and mtime). Pullers detect the bad hash, discard the data, bar
// the source for the generation and get the file elsewhere.
func TestCorruptPeer(t *testing.T) {
	e := newEnv(t, redisURL(t))
	e.master(2 << 20)
	// Bit rot changes no metadata, so verification cannot see it in time;
	// the test's edit does change the ctime, so the rotten host verifies
	// only hourly (no watcher): its copy stays rotten and is served.
	rotten := e.minion("rotten", "--watch=false", "--verify-every", "1h")
	if err := e.WaitRegistered(e.ctx, 1); err != nil {
		t.Fatal(err)
	}
	e.set(task)
	st := e.waitDone(0)
	if err := lab.Corrupt(filepath.Join(rotten.Root, task, "weights/model.bin")); err != nil {
		t.Fatal(err)
	}
	// Only the rotten host offers a slot (the origin's is held): the new
	// hosts must try it.
	k := e.Coord.Keys()
	release, err := lab.HoldSlot(e.ctx, e.Redis, k.Prefix, st.Generation.Ref(), "master#0")
	if err != nil {
		t.Fatal(err)
	}
	m1, m2 := e.minion("m1"), e.minion("m2")
	e.waitFor("the rotten source to be barred", func(coord.Status) bool {
		bad, _ := e.Redis.SMembers(e.ctx, k.BadSources()).Result()
		return contains(bad, "rotten")
	})
	if err := release(); err != nil {
		t.Fatal(err)
	}
	e.waitFor("m1 and m2 to finish", func(st coord.Status) bool {
		return contains(st.Finished, "m1") && contains(st.Finished, "m2")
	})
	e.check(task, m1, m2)
	for _, s := range e.status().Sources {
		if strings.HasPrefix(s, "rotten#") {
			t.Errorf("barred source still offered: %s", s)
		}
	}
}

// A stalled peer accepts connections and never answers: the puller gives
// up on it, drops its slot, and completes from the origin.
func TestStalledPeer(t *testing.T) {
	e := newEnv(t, redisURL(t))
	stall, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop); stall.Close() })
	go http.Serve(stall, http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-stop }))

	e.master(1 << 20)
	e.set(task)
	st := e.waitFor("the generation", func(st coord.Status) bool { return st.Generation.State == coord.StateRunning })
	if _, err := e.Coord.Heartbeat(e.ctx, coord.Host{ID: "staller", Addr: stall.Addr().String()}, coord.Beat{Register: true}); err != nil {
		t.Fatal(err)
	}
	k := e.Coord.Keys()
	release, err := lab.HoldSlot(e.ctx, e.Redis, k.Prefix, st.Generation.Ref(), "master#0")
	if err != nil {
		t.Fatal(err)
	}
	e.Redis.SAdd(e.ctx, k.Sync(), "staller#0")
	m1 := e.minion("m1")
	e.waitFor("m1 to give up on the staller", func(st coord.Status) bool {
		f, ok := st.Failures["m1"]
		return ok && f.Source == "staller"
	})
	if err := release(); err != nil {
		t.Fatal(err)
	}
	e.waitFor("m1 to finish from the origin", func(st coord.Status) bool { return contains(st.Finished, "m1") })
	e.check(task, m1)
	// Judged dead, the staller's slot backs off rather than being dropped
	// for good.
	if n, _ := e.Redis.HGet(e.ctx, k.Strikes(), "staller").Int(); n < 1 {
		t.Errorf("no strike recorded against the staller")
	}
}

// Disk full on a minion (a file size limit on its process): the pull fails
// with a clear error in status, the old version of the file stays intact,
// and no temporary file is left.
func TestDiskFull(t *testing.T) {
	prlimit := testtool.Need(t, "prlimit")
	e := newEnv(t, redisURL(t))
	e.master(1 << 20)
	// 2 MiB per file: generation 1 fits, generation 2's 4 MiB file does not.
	m1, err := e.StartMinionWrapped(e.ctx, "m1", []string{prlimit, "--fsize=2097152", "--"}, minionArgs...)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.WaitRegistered(e.ctx, 1); err != nil {
		t.Fatal(err)
	}
	e.set(task)
	first := e.waitDone(0)
	model := filepath.Join(m1.Root, task, "weights/model.bin")
	old, err := os.ReadFile(model)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.src, "weights/model.bin"), bytes.Repeat([]byte("new!"), 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	e.set(task)
	st := e.waitFor("m1 to report the full disk", func(st coord.Status) bool {
		f, ok := st.Failures["m1"]
		return ok && st.Generation.ID > first.Generation.ID && f.Gen == st.Generation.ID
	})
	msg := st.Failures["m1"].Error
	if !strings.Contains(msg, "file too large") && !strings.Contains(msg, "no space") {
		t.Errorf("failure %q does not say the disk (or quota) is full", msg)
	}
	if !strings.Contains(msg, "model.bin") {
		t.Errorf("failure %q does not name the file", msg)
	}
	now, err := os.ReadFile(model)
	if err != nil || !bytes.Equal(now, old) {
		t.Errorf("the old model.bin changed (%d bytes, %v)", len(now), err)
	}
	noTemps(t, m1)
	m2 := e.minion("m2")
	e.waitFor("m2 to finish from the origin", func(st coord.Status) bool { return contains(st.Finished, "m2") })
	e.check(task, m2)
}

// A new task published while the old one is half done: hosts move to it,
// nothing of the old generation is left half-written, and the new tree
// arrives whole.
func TestNewTaskMidRun(t *testing.T) {
	e := newEnv(t, redisURL(t))
	slow := []string{"--bwlimit", "4M"}
	master := e.master(12<<20, slow...)
	second := filepath.Join(master.Root, "/data/m43")
	if err := os.MkdirAll(second, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := lab.SampleTree(second, 1<<20, 20); err != nil {
		t.Fatal(err)
	}
	m1, m2 := e.minion("m1", slow...), e.minion("m2", slow...)
	if err := e.WaitRegistered(e.ctx, 2); err != nil {
		t.Fatal(err)
	}
	e.set(task)
	st := e.waitFor("both minions mid-tree", func(st coord.Status) bool {
		return st.Progress["m1"].Done > 1<<20 && st.Progress["m2"].Done > 1<<20
	})
	e.set("/data/m43")
	done := e.waitDone(st.Generation.ID)
	if done.Generation.Path != "/data/m43" {
		t.Fatalf("done generation is for %s", done.Generation.Path)
	}
	e.check("/data/m43", m1, m2)
}

// A minion cut off from Redis (its connections refused): it stops
// claiming, the others finish without it once its heartbeat is too old,
// and it catches up when the partition heals.
func TestPartitionFromRedis(t *testing.T) {
	url := redisURL(t)
	e := newEnv(t, url)
	proxy, err := fleet.NewProxy(strings.TrimPrefix(url, "redis://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Close)
	e.master(4 << 20)
	m1, m2 := e.minion("m1"), e.minion("m2")
	cut := e.minion("cut", "--redis", "redis://"+proxy.Addr)
	if err := e.WaitRegistered(e.ctx, 3); err != nil {
		t.Fatal(err)
	}
	proxy.Cut()
	e.set(task)
	st := e.waitDone(0)
	if contains(st.Finished, "cut") || contains(st.Expected, "cut") {
		t.Errorf("the cut-off minion: finished %v, expected %v", st.Finished, st.Expected)
	}
	if _, err := os.Stat(filepath.Join(cut.Root, task)); err == nil {
		t.Error("the cut-off minion pulled without Redis")
	}
	proxy.Heal()
	e.waitFor("the healed minion to catch up", func(st coord.Status) bool { return contains(st.Finished, "cut") })
	e.check(task, m1, m2, cut)
}

// A minion with the wrong secret: its requests are refused (401), its
// failure in status says so, nothing lands on its disk, and it does not
// take the origin away from a correctly configured host.
func TestWrongSecret(t *testing.T) {
	e := newEnv(t, redisURL(t))
	e.master(1 << 20)
	wrong := filepath.Join(t.TempDir(), "wrong-secret")
	if err := os.WriteFile(wrong, []byte("not-the-fleet-secret-at-all\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	m1 := e.minion("m1", "--secret-file", wrong)
	if err := e.WaitRegistered(e.ctx, 1); err != nil {
		t.Fatal(err)
	}
	e.set(task)
	st := e.waitFor("m1's failure", func(st coord.Status) bool { _, ok := st.Failures["m1"]; return ok })
	if msg := st.Failures["m1"].Error; !strings.Contains(msg, "signature") {
		t.Errorf("failure %q does not say the signature was refused", msg)
	}
	if _, err := os.Stat(filepath.Join(m1.Root, task, "weights/model.bin")); err == nil {
		t.Error("a file landed on the host with the wrong secret")
	}
	noTemps(t, m1)
	m2 := e.minion("m2")
	e.waitFor("m2 to finish from the origin", func(st coord.Status) bool { return contains(st.Finished, "m2") })
	e.check(task, m2)
}

// Peers over mutual TLS (--tls-cert, --tls-key, --tls-ca on every host): the
// task completes; a minion without TLS settings cannot pull from them.
func TestTLSPeers(t *testing.T) {
	e := newEnv(t, redisURL(t))
	c, err := certtest.Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tlsArgs := []string{"--tls-cert", c.Cert, "--tls-key", c.Key, "--tls-ca", c.CA}
	e.master(2<<20, tlsArgs...)
	m1, m2 := e.minion("m1", tlsArgs...), e.minion("m2", tlsArgs...)
	plain := e.minion("plain")
	if err := e.WaitRegistered(e.ctx, 3); err != nil {
		t.Fatal(err)
	}
	e.set(task)
	e.waitFor("m1 and m2 to finish over TLS, plain to fail", func(st coord.Status) bool {
		_, failed := st.Failures["plain"]
		return contains(st.Finished, "m1") && contains(st.Finished, "m2") && failed
	})
	e.check(task, m1, m2)
	if _, err := os.Stat(filepath.Join(plain.Root, task, "weights/model.bin")); err == nil {
		t.Error("a minion without TLS got the file")
	}
}
