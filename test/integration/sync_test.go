package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/fleet"
	"github.com/fanout/fanout/internal/lab"
	"github.com/fanout/fanout/internal/redistest"
)

// TestSyncAndServe runs the one-shot mode as cron would: "fanout-minion
// sync" exits 0 once the host holds the generation. With a "serve" daemon
// answering at --advertise the host becomes a source; without one it
// finishes but offers no slot. A second sync run is a no-op that still
// exits 0.
func TestSyncAndServe(t *testing.T) {
	if testing.Short() {
		t.Skip("builds binaries")
	}
	masterBin, minionBin := buildBinaries(t)
	mr, srv := redistest.Mini(t)
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte("a-test-secret-of-enough-length\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "FANOUT_REDIS="+srv.URL, "FANOUT_SECRET_FILE="+secret, "FANOUT_POLL=100ms")
	daemon := func(name, bin string, args ...string) *exec.Cmd {
		return startDaemon(t, filepath.Join(dir, name+".log"), env, bin, args...)
	}
	flags := func(name string) []string {
		root := filepath.Join(dir, name, "root")
		mustMkdir(t, root)
		addr := freeAddr(t)
		return []string{"--id", name, "--root", root, "--state-dir", filepath.Join(dir, name, "state"), "--listen", addr, "--advertise", addr}
	}
	mflags := flags("master")
	src := filepath.Join(dir, "master/root", task)
	mustMkdir(t, src)
	if err := lab.SampleTree(src, 1<<20, 10); err != nil {
		t.Fatal(err)
	}
	master := daemon("master", masterBin, append([]string{"run"}, mflags...)...)
	served := flags("served")
	daemon("served-serve", minionBin, append([]string{"serve", "--heartbeat", "200ms"}, served...)...)
	plain := flags("plain")
	mr.Set("task", task)
	sync := func(args []string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, minionBin, append([]string{"sync", "--timeout", "60s"}, args...)...)
		cmd.Env = fleet.RaceEnv(env)
		out, err := cmd.CombinedOutput()
		checkRaces(t, "fanout-minion sync "+args[1], string(out))
		return string(out), err
	}
	for _, args := range [][]string{served, plain, served} {
		if out, err := sync(args); err != nil {
			t.Fatalf("sync %s: %v\n%s", args[1], err, out)
		}
	}
	for _, name := range []string{"served", "plain"} {
		if err := lab.Compare(src, filepath.Join(dir, name, "root", task)); err != nil {
			t.Error(err)
		}
	}
	ctx := context.Background()
	cmd := exec.CommandContext(ctx, masterBin, "status", "--json")
	cmd.Env = fleet.RaceEnv(env)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	checkRaces(t, "fanout-master status", stderr.String())
	if err != nil {
		t.Fatalf("status --json: %v\n%s", err, stderr.String())
	}
	var st struct {
		Sources  []string
		Finished int
	}
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(st.Sources, "served#0") || slices.ContainsFunc(st.Sources, func(s string) bool { return strings.HasPrefix(s, "plain#") }) || st.Finished != 2 {
		t.Errorf("sources %v finished %d: want served#0 offered, plain not", st.Sources, st.Finished)
	}
	// Drift: files deleted and changed by hand, a mode changed. A sync
	// repairs all of it before it exits 0.
	for _, name := range []string{"plain", "served"} {
		tree := filepath.Join(dir, name, "root", task)
		must(t, os.Remove(filepath.Join(tree, "weights/model.bin")))
		must(t, lab.Corrupt(filepath.Join(tree, "config/run.sh")))
		must(t, os.Chmod(filepath.Join(tree, "config/secret.yaml"), 0o644))
	}
	for _, args := range [][]string{plain, served} {
		if out, err := sync(args); err != nil {
			t.Fatalf("sync %s after drift: %v\n%s", args[1], err, out)
		}
	}
	for _, name := range []string{"served", "plain"} {
		if err := lab.Compare(src, filepath.Join(dir, name, "root", task)); err != nil {
			t.Errorf("after a sync of a drifted tree: %v", err)
		}
	}
	// One writer per state directory: a second sync on plain's state dir
	// while one holds it is refused, naming the dir and the holder.
	holder := exec.Command(minionBin, append([]string{"run"}, plain...)...)
	holder.Env = env
	holder.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	stateDir := filepath.Join(dir, "plain", "state")
	// Wait until the daemon holds the lock (it names itself in it).
	holding := fmt.Sprintf("%d fanout-minion run", holder.Process.Pid)
	for deadline := time.Now().Add(30 * time.Second); ; {
		b, _ := os.ReadFile(filepath.Join(stateDir, "writer.lock"))
		if strings.HasPrefix(string(b), holding) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the run daemon never took the state directory's lock: %q", b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	refusal, serr := sync(plain)
	for _, want := range []string{stateDir, fmt.Sprintf("pid %d", holder.Process.Pid), "fanout-minion run", "--state-dir"} {
		if serr == nil || !strings.Contains(refusal, want) {
			t.Errorf("second writer on %s: %v, output does not name %q:\n%s", stateDir, serr, want, refusal)
		}
	}
	// A serve daemon may not share it with run either (run serves itself).
	sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer scancel()
	serve := exec.CommandContext(sctx, minionBin, append([]string{"serve"}, plain...)...)
	serve.Env = env
	if b, err := serve.CombinedOutput(); err == nil || !strings.Contains(string(b), "state directory in use") {
		t.Errorf("serve beside run on one state dir: %v\n%s", err, b)
	}
	holder.Process.Kill()
	holder.Wait()

	// No task at all: sync says so and exits 1. The master is stopped
	// first: it would take the missing keys for a Redis data loss and
	// publish its task again.
	master.Process.Kill()
	master.Wait()
	mr.Del("task")
	mr.Del("generation")
	if out, err := sync(plain); err == nil || !strings.Contains(out, "no task") {
		t.Errorf("sync with no task: %v\n%s", err, out)
	}
}
