// Package faults distributes trees to real fanout processes while injecting
// one fault at a time: kill -9 of a source, of a puller, of the master,
// Redis losing its data, a peer that serves wrong bytes, a stalled peer, a
// full disk, a new task mid-run, a minion cut off from Redis. After each,
// every live host's tree is compared entry by entry with the source and no
// temporary file may be left.
package faults

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/fleet"
	"github.com/fanout/fanout/internal/lab"
	"github.com/fanout/fanout/internal/manifest"
	"github.com/fanout/fanout/internal/redistest"
)

const task = "/data/m42"

// binDir holds the binaries, built once for the whole suite with the race
// detector (see fleet.Build).
var binDir string

// TestMain builds the binaries, runs the suite and removes them. With
// -short every test skips (see newEnv), so nothing is built: a race build
// needs cgo, which go test -short does not. FANOUT_FAULTS_BIN names a
// directory of binaries built already (make build: bin/) to run instead,
// without the race detector: for measuring on big files, where a race
// build is too slow.
func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run())
	}
	if dir := os.Getenv("FANOUT_FAULTS_BIN"); dir != "" {
		binDir = dir
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "fanout-faults-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if _, err := fleet.Build(context.Background(), "../..", dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// env is one test's deployment.
type env struct {
	t   *testing.T
	ctx context.Context
	*fleet.Fleet
	src string // the task tree on the master
}

// common flags: fast polls, short leases and grace, so faults resolve in
// seconds.
var commonArgs = []string{"--poll", "100ms", "--lease", "2s", "--host-grace", "3s", "--log-level", "debug"}

// minionArgs are the flags every minion gets on top of commonArgs.
var minionArgs = []string{"--heartbeat", "300ms"}

func newEnv(t *testing.T, redisURL string) *env {
	t.Helper()
	if testing.Short() {
		t.Skip("runs processes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	f, err := fleet.New(fleet.Config{Dir: t.TempDir(), Bin: binDir, RedisURL: redisURL, Prefix: "{fanout}:", Args: commonArgs, HostGrace: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// A data race in a daemon fails the test: the binaries are built
		// with -race and Close reads the reports from their logs.
		if err := f.Close(); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("process logs:\n%s", f.Logs())
		}
	})
	return &env{t: t, ctx: ctx, Fleet: f}
}

// redisURL starts a Redis for one test: a real redis-server when one is on
// PATH, else miniredis (whose TTLs run on the wall clock too).
func redisURL(t *testing.T) string {
	if srv, ok := redistest.Real(t); ok {
		return srv.URL
	}
	_, srv := redistest.Mini(t)
	return srv.URL
}

// master starts the master with a sample tree of a big file of big bytes.
func (e *env) master(big int64, extra ...string) *fleet.Proc {
	e.t.Helper()
	p, err := e.StartMaster(e.ctx, extra...)
	if err != nil {
		e.t.Fatal(err)
	}
	e.src = filepath.Join(p.Root, task)
	if err := os.MkdirAll(e.src, 0o755); err != nil {
		e.t.Fatal(err)
	}
	if err := lab.SampleTree(e.src, big, 10); err != nil {
		e.t.Fatal(err)
	}
	return p
}

func (e *env) minion(name string, extra ...string) *fleet.Proc {
	e.t.Helper()
	p, err := e.StartMinion(e.ctx, name, append(append([]string{}, minionArgs...), extra...)...)
	if err != nil {
		e.t.Fatal(err)
	}
	return p
}

func (e *env) set(path string) {
	e.t.Helper()
	if err := e.Set(e.ctx, path); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) status() coord.Status {
	e.t.Helper()
	st, err := e.Coord.Status(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	return st
}

// waitFor polls cond until it holds.
func (e *env) waitFor(what string, cond func(coord.Status) bool) coord.Status {
	e.t.Helper()
	var st coord.Status
	err := fleet.Poll(e.ctx, what, func() (bool, error) {
		var err error
		st, err = e.Coord.Status(e.ctx)
		return err == nil && cond(st), nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return st
}

// waitDone waits for a generation after gen to be done.
func (e *env) waitDone(after int64) coord.Status {
	e.t.Helper()
	st, err := e.WaitDone(e.ctx, after)
	if err != nil {
		e.t.Fatal(err)
	}
	return st
}

// check compares each host's copy of the task with the source and looks
// for temporary files anywhere under its root.
func (e *env) check(path string, hosts ...*fleet.Proc) {
	e.t.Helper()
	src := filepath.Join(filepath.Dir(e.src), filepath.Base(path))
	for _, h := range hosts {
		if err := lab.Compare(src, filepath.Join(h.Root, path)); err != nil {
			e.t.Errorf("%s: %v", h.Name, err)
		}
		noTemps(e.t, h)
	}
}

func noTemps(t *testing.T, h *fleet.Proc) {
	t.Helper()
	temps, err := lab.TempFiles(h.Root, manifest.IsTemp)
	if err != nil {
		t.Fatal(err)
	}
	if len(temps) > 0 {
		t.Errorf("%s: temporary files left: %v", h.Name, temps)
	}
}

// received reads a host's fanout_bytes_received_total from its /metrics.
func received(t *testing.T, h *fleet.Proc) int64 {
	t.Helper()
	return counter(t, h, "fanout_bytes_received_total")
}

// counter reads the counter name from a host's /metrics.
func counter(t *testing.T, h *fleet.Proc, name string) int64 {
	t.Helper()
	resp, err := http.Get("http://" + h.Addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return int64(f)
		}
	}
	t.Fatalf("%s: no %s in /metrics", h.Name, name)
	return 0
}

// upstream returns the source of h's own claim (its first slot in status).
func upstream(st coord.Status, h string) string {
	slot, _, _ := strings.Cut(st.Claims[h], ",")
	if i := strings.LastIndexByte(slot, '#'); i > 0 {
		return slot[:i]
	}
	return ""
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// events returns the events of type typ since the start.
func (e *env) events(typ string) []coord.Event {
	e.t.Helper()
	all, err := e.Coord.Events(e.ctx, "0", 0)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []coord.Event
	for _, ev := range all {
		if ev.Type == typ {
			out = append(out, ev)
		}
	}
	return out
}
