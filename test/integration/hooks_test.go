package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/fleet"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/hook"
	"github.com/fanout/fanout/internal/lab"
	"github.com/fanout/fanout/internal/redistest"
)

// readLines returns the lines of p; none when it does not exist.
func readLines(t *testing.T, p string) []string {
	t.Helper()
	b, err := os.ReadFile(p)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

// readNUL returns the NUL-terminated strings of p.
func readNUL(t *testing.T, p string) []string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) == 0 {
		return nil
	}
	if b[len(b)-1] != 0 {
		t.Fatalf("%s does not end with a NUL byte: %q", p, b)
	}
	return strings.Split(string(bytes.TrimSuffix(b, []byte{0})), "\x00")
}

// processGone reports whether pid has exited (a zombie not yet reaped
// counts as exited).
func processGone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] == 'Z'
}

// TestHookOnlyForVerifiedGenerations: a minion's hook never runs for a
// generation its pull could not bring into place, runs once the
// generation is verified in place, not again after a drift repair, and
// once for each new generation (with no changed path when the host
// already held the content).
func TestHookOnlyForVerifiedGenerations(t *testing.T) {
	for _, srv := range redistest.Servers(t) {
		t.Run(srv.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			l, src := startLab(ctx, t, lab.Config{RedisURL: srv.URL, Prefix: "{fanout}:"})
			runs := filepath.Join(t.TempDir(), "runs")
			hooks, err := hook.NewSet([]string{`default=echo "$FANOUT_GENERATION $FANOUT_CHANGED" >> ` + runs}, "", time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			h := l.NewHost()
			h.Hooks = hooks
			// A file where the task's parent directory must go: every
			// pull fails before it writes a byte.
			blocker := filepath.Join(h.Root, strings.Split(task, "/")[1])
			mustMkdir(t, h.Root)
			writeFile(t, blocker, "in the way")
			must(t, l.StartMinion(ctx, h))
			waitFor(ctx, t, "a failed pull", func() bool {
				st, err := l.Coord.Status(ctx)
				return err == nil && st.Failures[h.ID].Error != ""
			})
			st, err := l.Coord.Status(ctx)
			must(t, err)
			if got := readLines(t, runs); len(got) != 0 || len(st.Hooks) != 0 {
				t.Fatalf("hook ran for a generation that failed to pull: runs %q, records %+v", got, st.Hooks)
			}
			must(t, os.Remove(blocker))
			g1, err := l.WaitGeneration(ctx, 0, nil)
			must(t, err)
			files, _ := treeSize(t, src)
			if got := readLines(t, runs); len(got) != 1 || !strings.HasPrefix(got[0], fmt.Sprintf("%d ", g1.Generation.ID)) || got[0] == fmt.Sprintf("%d 0", g1.Generation.ID) {
				t.Fatalf("runs after the first generation: %q (the tree has %d files)", got, files)
			}
			if r := g1.Hooks[h.ID]; r.State != coord.HookOK || r.Exit != 0 {
				t.Errorf("hook record %+v", r)
			}
			// Drift repaired from a peer: no hook.
			must(t, os.Remove(filepath.Join(h.Root, task, "weights/model.bin")))
			waitFor(ctx, t, "the repair", func() bool {
				st, err := l.Coord.Status(ctx)
				return err == nil && st.Repairs[h.ID] == 1 && len(st.Repairing) == 0
			})
			// The same content published again: a new generation the host
			// holds already (no path changed); then a changed file.
			must(t, l.Set(ctx, task))
			g2, err := l.WaitGeneration(ctx, g1.Generation.ID, nil)
			must(t, err)
			writeFile(t, filepath.Join(src, "weights/model.bin"), "changed")
			must(t, l.Set(ctx, task))
			g3, err := l.WaitGeneration(ctx, g2.Generation.ID, nil)
			must(t, err)
			got := readLines(t, runs)
			if len(got) != 3 || got[1] != fmt.Sprintf("%d 0", g2.Generation.ID) ||
				!strings.HasPrefix(got[2], fmt.Sprintf("%d ", g3.Generation.ID)) || got[2] == fmt.Sprintf("%d 0", g3.Generation.ID) {
				t.Errorf("runs = %q, want the first generation's, then %d with no changed path, then %d with some", got, g2.Generation.ID, g3.Generation.ID)
			}
			if err := lab.Compare(src, filepath.Join(h.Root, task)); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestHookProcesses runs the real binaries: three minions with hooks (one
// that records what it sees, one from --hook-dir that fails, one that
// hangs with a child past --hook-timeout). publish --wait returns once
// every hook ended; status (JSON and text) and history show the failures,
// every host finished; the hanging hook's child is gone. A second
// generation tells the recording hook exactly the changed file; a
// restarted minion does not run its hook again.
func TestHookProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds binaries")
	}
	masterBin, minionBin := buildBinaries(t)
	_, srv := redistest.Mini(t)
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	must(t, os.WriteFile(secret, []byte("a-test-secret-of-enough-length\n"), 0o600))
	env := append(os.Environ(), "FANOUT_REDIS="+srv.URL, "FANOUT_SECRET_FILE="+secret, "FANOUT_POLL=100ms")
	node := func(name string) []string {
		root, state := filepath.Join(dir, name, "root"), filepath.Join(dir, name, "state")
		mustMkdir(t, root)
		addr := freeAddr(t)
		return []string{"--id", name, "--root", root, "--state-dir", state, "--listen", addr, "--advertise", addr}
	}
	margs := node("master")
	src := filepath.Join(dir, "master", "root", task)
	mustMkdir(t, src)
	must(t, lab.SampleTree(src, 1<<20, 10))
	startDaemon(t, filepath.Join(dir, "master.log"), env, masterBin, append([]string{"run"}, margs...)...)

	out := filepath.Join(dir, "hook-out")
	mustMkdir(t, out)
	record := `env > ` + out + `/env.$FANOUT_GENERATION && cat > ` + out + `/stdin.$FANOUT_GENERATION && echo "$FANOUT_GENERATION" >> ` + out + `/runs`
	hookDir := filepath.Join(dir, "hooks")
	mustMkdir(t, hookDir)
	must(t, os.WriteFile(filepath.Join(hookDir, "default"), []byte("#!/bin/sh\necho checking config\necho 'app: config invalid' >&2\nexit 3\n"), 0o755))
	pidFile := filepath.Join(out, "child.pid")
	hang := `sleep 300 & echo $! > ` + pidFile + `; echo waiting for the app; wait`
	m1 := append([]string{"run", "--heartbeat", "200ms", "--on-sync", "default=" + record}, node("m1")...)
	m1cmd := startDaemon(t, filepath.Join(dir, "m1.log"), env, minionBin, m1...)
	startDaemon(t, filepath.Join(dir, "m2.log"), env, minionBin, append([]string{"run", "--heartbeat", "200ms", "--hook-dir", hookDir}, node("m2")...)...)
	startDaemon(t, filepath.Join(dir, "m3.log"), env, minionBin, append([]string{"run", "--heartbeat", "200ms", "--on-sync", "default=" + hang, "--hook-timeout", "1s"}, node("m3")...)...)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	run := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, masterBin, args...)
		cmd.Env = fleet.RaceEnv(env)
		b, err := cmd.CombinedOutput()
		checkRaces(t, "fanout-master "+args[0], string(b))
		return string(b), err
	}
	type hookJSON struct {
		State    string
		Exit     int
		TimedOut bool `json:"timed_out"`
		Error    string
		Output   []string
		Changed  int
	}
	type statusJSON struct {
		Generation         int64
		Digest, State      string
		Expected, Finished int
		Hooks              *struct{ OK, Failed, Running int }
		Hosts              []struct {
			ID, State string
			Hook      *hookJSON
		}
	}
	status := func() statusJSON {
		t.Helper()
		b, err := run("status", "--json")
		if err != nil {
			t.Fatalf("status --json: %v\n%s", err, b)
		}
		var st statusJSON
		if err := json.Unmarshal([]byte(b), &st); err != nil {
			t.Fatalf("status --json: %v\n%s", err, b)
		}
		return st
	}
	waitFor(ctx, t, "three minions", func() bool { return status().Expected == 3 })
	if b, err := run("publish", "--wait", "--timeout", "2m", task); err != nil {
		t.Fatalf("publish --wait: %v\n%s", err, b)
	}
	st := status()
	if st.State != "done" || st.Finished != 3 || st.Hooks == nil || *st.Hooks != (struct{ OK, Failed, Running int }{1, 2, 0}) {
		t.Fatalf("status after publish --wait: %+v hooks %+v", st, st.Hooks)
	}
	hooks := map[string]*hookJSON{}
	for _, h := range st.Hosts {
		if h.State != "finished" {
			t.Errorf("%s: state %s, want finished (a failed hook leaves the host holding the tree)", h.ID, h.State)
		}
		hooks[h.ID] = h.Hook
	}
	if h := hooks["m1"]; h == nil || h.State != "ok" || h.Exit != 0 {
		t.Errorf("m1 hook %+v", h)
	}
	if h := hooks["m2"]; h == nil || h.State != "failed" || h.Exit != 3 || len(h.Output) != 2 || h.Output[1] != "app: config invalid" {
		t.Errorf("m2 hook %+v", h)
	}
	if h := hooks["m3"]; h == nil || h.State != "failed" || !h.TimedOut || h.Exit != -1 || len(h.Output) != 1 || h.Output[0] != "waiting for the app" {
		t.Errorf("m3 hook %+v", h)
	}
	// The operator's view.
	text, err := run("status")
	if err != nil || !strings.Contains(text, "hooks:      1 ok, 2 failed, 0 running") ||
		!strings.Contains(text, "hook failed on m2: exit status 3") || !strings.Contains(text, "    | app: config invalid") ||
		!strings.Contains(text, "hook failed on m3: killed at the 1s timeout") {
		t.Errorf("status: %v\n%s", err, text)
	}
	t.Logf("fanout-master status:\n%s", text)
	hist, err := run("history", "--json")
	var recs []struct {
		Gen             int64
		HooksOK         int      `json:"hooks_ok"`
		HooksFailed     int      `json:"hooks_failed"`
		HookFailedHosts []string `json:"hook_failed_hosts"`
	}
	if err != nil || json.Unmarshal([]byte(hist), &recs) != nil || len(recs) != 1 || recs[0].HooksOK != 1 || recs[0].HooksFailed != 2 ||
		strings.Join(recs[0].HookFailedHosts, ",") != "m2,m3" {
		t.Errorf("history: %v\n%s", err, hist)
	}
	// The hanging hook's child was killed with it.
	b, err := os.ReadFile(pidFile)
	must(t, err)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	must(t, err)
	waitFor(ctx, t, "the hanging hook's child to die", func() bool { return processGone(pid) })

	// What the recording hook saw.
	gen := st.Generation
	vars := map[string]string{}
	for _, l := range readLines(t, filepath.Join(out, fmt.Sprintf("env.%d", gen))) {
		if k, v, ok := strings.Cut(l, "="); ok {
			vars[k] = v
		}
	}
	files, _ := treeSize(t, src)
	paths := readNUL(t, filepath.Join(out, fmt.Sprintf("stdin.%d", gen)))
	for k, v := range map[string]string{
		"FANOUT_TASK": "default", "FANOUT_HOST": "m1", "FANOUT_GENERATION": strconv.FormatInt(gen, 10), "FANOUT_DIGEST": st.Digest,
		"FANOUT_PATH": filepath.Join(dir, "m1", "root", task), "FANOUT_TASK_PATH": task, "FANOUT_CHANGED": strconv.Itoa(len(paths)),
	} {
		if vars[k] != v {
			t.Errorf("hook saw %s=%q, want %q", k, vars[k], v)
		}
	}
	if _, leaked := vars["FANOUT_SECRET_FILE"]; leaked {
		t.Error("the minion's own FANOUT_* configuration reached the hook")
	}
	if len(paths) < files || !slices.Contains(paths, "weights/model.bin") || !slices.IsSorted(paths) {
		t.Errorf("first pull: %d changed paths on stdin for a tree of %d files: %q", len(paths), files, paths)
	}

	// A second generation: one file changed.
	writeFile(t, filepath.Join(src, "weights/model.bin"), "a new model")
	if b, err := run("publish", "--wait", "--timeout", "2m", task); err != nil {
		t.Fatalf("publish --wait: %v\n%s", err, b)
	}
	gen2 := status().Generation
	paths = readNUL(t, filepath.Join(out, fmt.Sprintf("stdin.%d", gen2)))
	for _, p := range paths {
		if fi, err := os.Lstat(filepath.Join(src, p)); err != nil || (fi.Mode().IsRegular() && p != "weights/model.bin") {
			t.Errorf("second pull: %q on stdin, which did not change (%v)", p, err)
		}
	}
	if !slices.Contains(paths, "weights/model.bin") {
		t.Errorf("second pull: stdin %q lacks the changed file", paths)
	}

	// A restarted minion holds the generation and does not run its hook
	// again: after a third generation, m1 ran it once for each.
	must(t, m1cmd.Process.Signal(syscall.SIGTERM))
	if err := m1cmd.Wait(); err != nil {
		t.Fatalf("m1 after SIGTERM: %v", err)
	}
	startDaemon(t, filepath.Join(dir, "m1-restarted.log"), env, minionBin, m1...)
	waitFor(ctx, t, "m1 back", func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, "m1-restarted.log"))
		return strings.Contains(string(b), "holds the generation, verified on disk")
	})
	writeFile(t, filepath.Join(src, "weights/model.bin"), "a third model")
	if b, err := run("publish", "--wait", "--timeout", "2m", task); err != nil {
		t.Fatalf("publish --wait: %v\n%s", err, b)
	}
	gen3 := status().Generation
	want := []string{strconv.FormatInt(gen, 10), strconv.FormatInt(gen2, 10), strconv.FormatInt(gen3, 10)}
	if got := readLines(t, filepath.Join(out, "runs")); !slices.Equal(got, want) {
		t.Errorf("m1 ran its hook for generations %q, want %q", got, want)
	}
}

// TestHookInterruptedRunsAgain: a minion stopped while its hook runs kills
// the hook and records it failed (interrupted); started again, it holds
// the generation without a pull and runs the hook again, with the paths
// the first pull changed.
func TestHookInterruptedRunsAgain(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, src := startLab(ctx, t, lab.Config{})
	dir := t.TempDir()
	started, stdin := filepath.Join(dir, "started"), filepath.Join(dir, "stdin")
	slow, err := hook.NewSet([]string{"default=touch " + started + "; sleep 300"}, "", time.Hour)
	must(t, err)
	h := l.NewHost()
	h.Hooks = slow
	must(t, l.StartMinion(ctx, h))
	waitFor(ctx, t, "the slow hook to start", func() bool {
		_, err := os.Stat(started)
		return err == nil
	})
	st, err := l.Coord.Status(ctx)
	must(t, err)
	gen := st.Generation.ID
	if r := st.Hooks[h.ID]; r.State != coord.HookRunning || r.Gen != gen || st.State != coord.StateRunning {
		t.Fatalf("while the hook runs: hook %+v, generation state %s", r, st.State)
	}
	must(t, h.Stop())
	st, err = l.Coord.Status(ctx)
	must(t, err)
	if r := st.Hooks[h.ID]; r.State != coord.HookFailed || !strings.Contains(r.Error, "interrupted") {
		t.Fatalf("after the stop: hook %+v", r)
	}
	fast, err := hook.NewSet([]string{`default=cat > ` + stdin + `; echo "$FANOUT_GENERATION" > ` + stdin + `.gen`}, "", time.Minute)
	must(t, err)
	h.Hooks = fast
	must(t, l.StartMinion(ctx, h))
	// The generation may be done already (the interrupted run counts as
	// failed); the hook's record turns ok when it ran again.
	waitFor(ctx, t, "the hook to run again", func() bool {
		st, err = l.Coord.Status(ctx)
		return err == nil && st.Hooks[h.ID].State == coord.HookOK
	})
	if st.Generation.ID != gen {
		t.Fatalf("after the restart: generation %d, want %d", st.Generation.ID, gen)
	}
	if g := readLines(t, stdin+".gen"); len(g) != 1 || g[0] != strconv.FormatInt(gen, 10) {
		t.Errorf("the hook ran again for %q, want %d", g, gen)
	}
	files, _ := treeSize(t, src)
	if paths := readNUL(t, stdin); len(paths) < files || !slices.Contains(paths, "weights/model.bin") {
		t.Errorf("the hook run again got %d paths, want the %d files the first pull changed and more: %q", len(paths), files, paths)
	}
	if r, _ := l.Minions[0].Minion.Progress(); r != 0 {
		t.Errorf("the restarted minion received %d bytes; it held the tree", r)
	}
}
