package integration

import (
	"context"
	"encoding/json"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/fleet"
	"github.com/fanout/fanout/internal/freeport"
	"github.com/fanout/fanout/internal/lab"
	"github.com/fanout/fanout/internal/redistest"
)

// binaries are fanout-master and fanout-minion, built with the race
// detector once per package run by the first test that needs them.
var binaries struct {
	once sync.Once
	dir  string // removed by TestMain
	err  error
}

// TestMain runs the tests, then removes the binaries they built.
func TestMain(m *testing.M) {
	code := m.Run()
	if binaries.dir != "" {
		os.RemoveAll(binaries.dir)
	}
	os.Exit(code)
}

// buildBinaries returns the paths of the race-built fanout-master and
// fanout-minion (see fleet.Build). Run them with fleet.RaceEnv and pass
// their output to checkRaces.
func buildBinaries(t *testing.T) (master, minion string) {
	t.Helper()
	binaries.once.Do(func() {
		binaries.dir, binaries.err = os.MkdirTemp("", "fanout-integration-bin-")
		if binaries.err == nil {
			_, binaries.err = fleet.Build(context.Background(), "../..", binaries.dir)
		}
	})
	if binaries.err != nil {
		t.Fatal(binaries.err)
	}
	return filepath.Join(binaries.dir, "fanout-master"), filepath.Join(binaries.dir, "fanout-minion")
}

// checkRaces fails t when out, the output of the process name, holds a
// race detector report.
func checkRaces(t *testing.T, name, out string) {
	t.Helper()
	if err := fleet.CheckRaces(name, out); err != nil {
		t.Error(err)
	}
}

// startDaemon starts a race-built daemon with its output in logPath. At
// cleanup it kills the daemon, fails t on a race report in the log, and
// prints the log when t failed.
func startDaemon(t *testing.T, logPath string, env []string, bin string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = fleet.RaceEnv(env)
	log, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	// Dies with the test binary, even when a timeout kills it before its
	// cleanups run.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	name := filepath.Base(logPath)
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		b, _ := os.ReadFile(logPath)
		checkRaces(t, name, string(b))
		if t.Failed() {
			t.Logf("%s:\n%s", name, b)
		}
	})
	return cmd
}

// freeAddr returns a loopback address for a process the test starts.
func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// TestProcesses runs the real binaries: a master and two minions as
// separate processes configured through flags and FANOUT_* variables,
// `publish --wait` until done, then `status --json`, then SIGTERM.
func TestProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds binaries")
	}
	masterBin, minionBin := buildBinaries(t)
	_, srv := redistest.Mini(t)
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte("a-test-secret-of-enough-length\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "FANOUT_REDIS="+srv.URL, "FANOUT_SECRET_FILE="+secret, "FANOUT_POLL=100ms", "FANOUT_KEY_PREFIX={fanout}:")
	start := func(name, bin string, args ...string) *exec.Cmd {
		return startDaemon(t, filepath.Join(dir, name+".log"), env, bin, args...)
	}
	addrs := map[string]string{}
	node := func(name string) (root, state string, args []string) {
		root, state = filepath.Join(dir, name, "root"), filepath.Join(dir, name, "state")
		mustMkdir(t, root)
		addr := freeAddr(t)
		addrs[name] = addr
		return root, state, []string{"--id", name, "--root", root, "--state-dir", state, "--listen", addr, "--advertise", addr}
	}
	mroot, _, margs := node("master")
	src := filepath.Join(mroot, task)
	mustMkdir(t, src)
	if err := lab.SampleTree(src, 2<<20, 30); err != nil {
		t.Fatal(err)
	}
	start("master", masterBin, append([]string{"run"}, margs...)...)
	var minions []*exec.Cmd
	var roots []string
	for _, name := range []string{"m1", "m2"} {
		root, _, args := node(name)
		roots = append(roots, root)
		minions = append(minions, start(name, minionBin, append([]string{"run", "--heartbeat", "200ms"}, args...)...))
	}
	// Wait until both minions registered, so "done" means both.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	run := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, masterBin, args...)
		cmd.Env = fleet.RaceEnv(env)
		out, err := cmd.CombinedOutput()
		checkRaces(t, "fanout-master "+args[0], string(out))
		return string(out), err
	}
	for {
		out, err := run("status", "--json")
		var st struct{ Expected int }
		if err == nil && json.Unmarshal([]byte(out), &st) == nil && st.Expected == 2 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("minions never registered: %s %v", out, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	out, err := run("publish", "--wait", "--timeout", "90s", task)
	if err != nil {
		t.Fatalf("publish --wait: %v\n%s", err, out)
	}
	if !strings.Contains(out, "done, 2/2 hosts finished") {
		t.Errorf("publish --wait output lacks the final line:\n%s", out)
	}
	out, err = run("status", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Task       string
		Generation int64
		State      string
		Expected   int
		Finished   int
		Hosts      []struct {
			ID, State string
			Done      int64 `json:"bytes_done"`
			Total     int64 `json:"bytes_total"`
		}
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	if st.State != "done" || st.Finished != 2 || st.Generation < 1 || st.Task != task || len(st.Hosts) != 2 {
		t.Fatalf("status after publish --wait: %s", out)
	}
	for _, h := range st.Hosts {
		if h.State != "finished" || h.Done == 0 || h.Done != h.Total {
			t.Errorf("host %s: state %s, %d of %d bytes", h.ID, h.State, h.Done, h.Total)
		}
	}
	for _, root := range roots {
		if err := lab.Compare(src, filepath.Join(root, task)); err != nil {
			t.Error(err)
		}
	}
	// Metrics after the transfer: the master served bytes, each minion
	// received the whole tree.
	_, total := treeSize(t, src)
	for name, metric := range map[string]string{"master": "fanout_bytes_served_total", "m1": "fanout_bytes_received_total", "m2": "fanout_bytes_received_total"} {
		v := scrape(t, addrs[name], metric)
		if name != "master" && v != float64(total) || name == "master" && v < float64(total) {
			t.Errorf("%s %s = %v, tree has %d bytes", name, metric, v, total)
		}
	}
	out, err = run("history", "--json")
	var hist []struct{ Gen, Hosts, Rounds int }
	if err != nil || json.Unmarshal([]byte(out), &hist) != nil || len(hist) != 1 || hist[0].Hosts != 2 || hist[0].Rounds < 1 {
		t.Errorf("history after completion: %v\n%s", err, out)
	}
	// Deploy as releases, change a file, deploy again, roll back: the
	// commands as an operator types them.
	releaseOf := func() []string {
		var out []string
		for _, root := range roots {
			target, err := os.Readlink(filepath.Join(root, task))
			if err != nil {
				t.Fatalf("%s is not a release symlink: %v", filepath.Join(root, task), err)
			}
			resolved, err := filepath.EvalSymlinks(filepath.Join(root, task))
			if err != nil {
				t.Fatal(err)
			}
			if err := lab.Compare(src, resolved); err != nil {
				t.Error(err)
			}
			out = append(out, target)
		}
		return out
	}
	if out, err := run("publish", "--atomic", "--keep", "2", "--wait", "--timeout", "90s", task); err != nil || !strings.Contains(out, "atomic, keep 2") {
		t.Fatalf("publish --atomic: %v\n%s", err, out)
	}
	first := releaseOf()
	runSh := filepath.Join(src, "config/run.sh")
	before, err := os.ReadFile(runSh)
	if err != nil {
		t.Fatal(err)
	}
	stamp, _ := os.Lstat(runSh)
	if err := os.WriteFile(runSh, []byte("#!/bin/sh\necho build 2\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := run("publish", "--atomic", "--keep", "2", "--wait", "--timeout", "90s", task); err != nil {
		t.Fatalf("second publish --atomic: %v\n%s", err, out)
	}
	if second := releaseOf(); slices.Equal(second, first) {
		t.Fatalf("the second release did not switch: %v", second)
	}
	if err := os.WriteFile(runSh, before, 0o755); err != nil { // the source as it was, to compare
		t.Fatal(err)
	}
	if err := os.Chtimes(runSh, stamp.ModTime(), stamp.ModTime()); err != nil {
		t.Fatal(err)
	}
	if out, err := run("rollback", "--wait", "--timeout", "90s"); err != nil || !strings.Contains(out, "rollback to generation") {
		t.Fatalf("rollback: %v\n%s", err, out)
	}
	if back := releaseOf(); !slices.Equal(back, first) {
		t.Fatalf("after rollback the hosts point at %v, want %v", back, first)
	}
	if text, err := run("history"); err != nil || !strings.Contains(text, "rollback to") {
		t.Errorf("history after rollback: %v\n%s", err, text)
	}
	if out, err := run("cancel"); err == nil || !strings.Contains(out, "nothing to cancel") {
		t.Errorf("cancel with nothing running: %v\n%s", err, out)
	}
	// A named task beside the plain one, through the daemons' task
	// runners and the peer servers' /v1/t/NAME/ routes.
	cfgSrc := filepath.Join(mroot, "/etc/app")
	mustMkdir(t, cfgSrc)
	if err := lab.SampleTree(cfgSrc, 64<<10, 8); err != nil {
		t.Fatal(err)
	}
	if out, err := run("publish", "--name", "appcfg", "--wait", "--timeout", "90s", "/etc/app"); err != nil || !strings.Contains(out, "task appcfg set to /etc/app") {
		t.Fatalf("publish --name: %v\n%s", err, out)
	}
	for _, root := range roots {
		if err := lab.Compare(cfgSrc, filepath.Join(root, "/etc/app")); err != nil {
			t.Fatalf("named task on %s: %v", root, err)
		}
	}
	if text, err := run("status"); err != nil || !strings.Contains(text, "== task default ==") || !strings.Contains(text, "== task appcfg ==") {
		t.Errorf("status with a named task: %v\n%s", err, text)
	}
	out, err = run("status", "--json", "appcfg")
	var named struct {
		Name     string `json:"name"`
		State    string `json:"state"`
		Finished int    `json:"finished"`
	}
	if err != nil || json.Unmarshal([]byte(out), &named) != nil || named.Name != "appcfg" || named.State != "done" || named.Finished != 2 {
		t.Errorf("status --json appcfg: %v\n%s", err, out)
	}
	if out, err := run("cancel", "appcfg"); err == nil || !strings.Contains(out, "nothing to cancel") || !strings.Contains(out, "task appcfg") {
		t.Errorf("cancel of a named task with nothing running: %v\n%s", err, out)
	}
	if out, err := run("rollback", "appcfg"); err == nil || !strings.Contains(out, "nothing to roll back") {
		t.Errorf("rollback of a named task with one generation (the plain task has releases to go back to): %v\n%s", err, out)
	}
	if out, err := run("retire", "appcfg"); err != nil || !strings.Contains(out, "retired task appcfg") {
		t.Fatalf("retire: %v\n%s", err, out)
	}
	if text, err := run("status"); err != nil || strings.Contains(text, "appcfg") {
		t.Errorf("status after retire still names the task: %v\n%s", err, text)
	}
	// SIGTERM stops a minion cleanly (exit 0).
	minions[0].Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- minions[0].Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("minion exit after SIGTERM: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Error("minion did not stop within 20s of SIGTERM")
	}
	text, err := run("status")
	if err != nil || !strings.Contains(text, "HOST") || !strings.Contains(text, "m2") {
		t.Errorf("status table: %v\n%s", err, text)
	}
	if out, err := run("forget", "m1"); err != nil || !strings.Contains(out, "forgot m1") {
		t.Fatalf("forget: %v %s", err, out)
	}
	out, err = run("hosts", "--json")
	var hosts []struct{ ID string }
	if err != nil || json.Unmarshal([]byte(out), &hosts) != nil || len(hosts) != 1 || hosts[0].ID != "m2" {
		t.Errorf("hosts after forget m1: %v\n%s", err, out)
	}
}

// scrape reads one metric from a host's /metrics.
func scrape(t *testing.T, addr, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == name {
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	t.Fatalf("%s has no metric %s", addr, name)
	return 0
}

// treeSize counts the regular files under root and their bytes.
func treeSize(t *testing.T, root string) (files int, bytes int64) {
	t.Helper()
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			files++
			bytes += fi.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files, bytes
}
