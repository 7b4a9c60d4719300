package cli

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/lab"
)

// TestPublishDryRun: against a done generation on two hosts, a dry run of
// the tree with one file changed names that file, the bytes to move per
// host and in all, and publishes nothing.
func TestPublishDryRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := lab.Start(ctx, lab.Config{Dir: t.TempDir(), Minions: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Stop()
	const task = "/data/m42"
	src := filepath.Join(l.Master.Root, task)
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := lab.SampleTree(src, 4<<20, 10); err != nil {
		t.Fatal(err)
	}
	if err := l.Set(ctx, task); err != nil {
		t.Fatal(err)
	}
	done, err := l.WaitGeneration(ctx, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, l.Secret(), 0o600); err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{"FANOUT_REDIS": "redis://" + l.Mini.Addr(), "FANOUT_SECRET_FILE": secret, "FANOUT_ROOT": l.Master.Root}
	// One byte of the big file changed, a small file added.
	big := filepath.Join(src, "weights/model.bin")
	b, err := os.ReadFile(big)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 1
	if err := os.WriteFile(big, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "added.txt"), []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := run(t, masterMain, vars, "publish", "--dry-run", "--json", task)
	if code != exitOK {
		t.Fatalf("publish --dry-run: code %d: %s", code, stderr)
	}
	var got dryRunJSON
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	p := got.Preview
	if got.Base != done.Generation.ID || len(got.Holding) != 2 || len(got.Others) != 0 || p.Fetch != 2 || p.FetchBytes != int64(len(b))+3 {
		t.Fatalf("dry run: %+v", got)
	}
	if p.MoveBytes >= int64(len(b)) || p.MoveBytes <= 3 || got.MoveBytes != 2*p.MoveBytes {
		t.Errorf("moves %d bytes per host (%d in all) for one changed byte of %d", p.MoveBytes, got.MoveBytes, len(b))
	}
	fetched := map[string]bool{}
	for _, c := range p.Changes {
		if c.Op == "fetch" {
			fetched[c.Path] = true
		}
	}
	if !fetched["weights/model.bin"] || !fetched["added.txt"] {
		t.Errorf("changes %+v", p.Changes)
	}
	// With --exclude: the changed big file is neither fetched nor, even
	// with --delete, removed; the new small file still moves.
	code, out, stderr = run(t, masterMain, vars, "publish", "--dry-run", "--json", "--delete", "--exclude", "*.bin", task)
	if code != exitOK {
		t.Fatalf("publish --dry-run --exclude: code %d: %s", code, stderr)
	}
	var exc dryRunJSON
	if err := json.Unmarshal([]byte(out), &exc); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if p := exc.Preview; p.Fetch != 1 || p.FetchBytes != 3 || p.Remove != 0 || len(exc.Exclude) != 1 || exc.Exclude[0] != "*.bin" {
		t.Errorf("dry run excluding *.bin: %+v", exc)
	}
	for _, c := range exc.Preview.Changes {
		if strings.HasSuffix(c.Path, ".bin") {
			t.Errorf("excluded %s in the changes: %s", c.Path, c.Op)
		}
	}
	code, text, stderr := run(t, masterMain, vars, "publish", "--dry-run", "--exclude", "*.bin", task)
	if code != exitOK || !strings.Contains(text, "excluding:  *.bin") || !strings.Contains(text, "fetch 1 files") {
		t.Errorf("text with --exclude: code %d %s\n%s", code, stderr, text)
	}
	code, text, stderr = run(t, masterMain, vars, "publish", "--dry-run", task)
	if code != exitOK || !strings.Contains(text, "dry run: nothing was published") ||
		!strings.Contains(text, "held by 2 of 2 expected hosts") || !strings.Contains(text, "fetch 2 files") || !strings.Contains(text, "  fetch  weights/model.bin") {
		t.Errorf("text: code %d %s\n%s", code, stderr, text)
	}
	t.Logf("fanout-master publish --dry-run:\n%s", text)
	// Nothing was published: the task key is still the one the master
	// adopted (a SET clears its TTL), and the generation is the same.
	if v, fresh, err := l.Coord.TaskKey(ctx); err != nil || fresh || v != task {
		t.Errorf("after the dry runs the task key is %q (written since adopted: %v), %v", v, fresh, err)
	}
	if g, err := l.Coord.Current(ctx); err != nil || g.ID != done.Generation.ID || g.State != coord.StateDone {
		t.Errorf("after the dry runs: generation %+v, %v", g, err)
	}
	// A generation held at another place (--dest) is no base: the hosts
	// would pull the whole tree to PATH.
	if err := l.Coord.SetTask(ctx, task, coord.TaskOptions{Dest: "/srv/m42"}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.WaitGeneration(ctx, done.Generation.ID, nil); err != nil {
		t.Fatal(err)
	}
	code, out, stderr = run(t, masterMain, vars, "publish", "--dry-run", "--json", task)
	var elsewhere dryRunJSON
	if err := json.Unmarshal([]byte(out), &elsewhere); code != exitOK || err != nil || elsewhere.Base != 0 || len(elsewhere.Others) != 2 || elsewhere.MoveBytes != 2*elsewhere.Preview.Bytes {
		t.Errorf("dry run against a generation held at --dest: code %d, %v, %+v (%s)", code, err, elsewhere, stderr)
	}
	// Bad input: a path that is not under --root, --wait with it.
	if code, _, stderr := run(t, masterMain, vars, "publish", "--dry-run", "/data/missing"); code != exitFailure || !strings.Contains(stderr, "does not exist under --root") {
		t.Errorf("missing path: %d %s", code, stderr)
	}
	if code, _, stderr := run(t, masterMain, vars, "publish", "--dry-run", "--wait", task); code != exitUsage || !strings.Contains(stderr, "--dry-run") {
		t.Errorf("--dry-run --wait: %d %s", code, stderr)
	}
}
