package cli

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/fanout/fanout/internal/coord"
)

// TestRollbackTarget: the default is the newest completed generation with
// another tree than the current one; a generation that was not atomic, is
// the current tree, is not in the history, or is older than the releases
// hosts keep is refused, saying what to do.
func TestRollbackTarget(t *testing.T) {
	hist := []coord.Completion{ // newest first
		{Gen: 9, Digest: "d9", Atomic: 3},
		{Gen: 8, Digest: "d8", Atomic: 3},
		{Gen: 7, Digest: "d7", Atomic: 3},
		{Gen: 6, Digest: "d6", Atomic: 3},
		{Gen: 5, Digest: "d5"},
	}
	cur := coord.Generation{ID: 9, Digest: "d9", Atomic: 3}
	tests := []struct {
		name string
		cur  coord.Generation
		want int64
		got  int64
		err  string
	}{
		{"default: the one before", cur, 0, 8, ""},
		{"named", cur, 7, 7, ""},
		{"default while a new tree runs", coord.Generation{ID: 10, Digest: "d10", Atomic: 3}, 0, 9, ""},
		{"pruned", cur, 6, 0, "older than the 3 releases"},
		{"kept more", coord.Generation{ID: 9, Digest: "d9", Atomic: 5}, 6, 6, ""},
		{"not atomic", coord.Generation{ID: 9, Digest: "d9", Atomic: 9}, 5, 0, "not published with --atomic"},
		{"current tree", cur, 9, 0, "tree of the current generation"},
		{"unknown", cur, 4, 0, "not among the last"},
		{"plain current keeps the default", coord.Generation{ID: 10, Digest: "d10"}, 8, 8, ""},
		{"plain current, pruned", coord.Generation{ID: 10, Digest: "d10"}, 7, 0, "older than the 3 releases"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec, err := rollbackTarget(tt.cur, hist, tt.want)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("got %+v, %v; want an error with %q", rec, err, tt.err)
				}
				return
			}
			if err != nil || rec.Gen != tt.got {
				t.Fatalf("got generation %d, %v; want %d", rec.Gen, err, tt.got)
			}
		})
	}
	// The default stays at the current tree's place: a generation
	// published elsewhere (another path or destination) is skipped.
	mixed := []coord.Completion{{Gen: 3, Path: "/srv/other", Digest: "o", Atomic: 3}, {Gen: 2, Path: "/srv/app", Digest: "a", Atomic: 3}}
	if rec, err := rollbackTarget(coord.Generation{ID: 4, Path: "/srv/app", Digest: "b", Atomic: 3}, mixed, 0); err != nil || rec.Gen != 2 {
		t.Errorf("default among paths: %+v, %v; want generation 2", rec, err)
	}
	if _, err := rollbackTarget(cur, nil, 0); err == nil || !strings.Contains(err.Error(), "nothing to roll back") {
		t.Errorf("empty history: %v", err)
	}
}

// TestRollbackSetsTask: rollback writes the task and the options of the
// generation it returns to, which a master of protocol 6 publishes.
func TestRollbackSetsTask(t *testing.T) {
	mr := miniredis.RunT(t)
	vars := map[string]string{"FANOUT_REDIS": "redis://" + mr.Addr(), "FANOUT_KEY_PREFIX": "{f}:"}
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	ctx := context.Background()
	mr.HSet("{f}:generation", "id", "4", "state", "done", "path", "/srv/app", "dest", "/opt/app", "digest", strings.Repeat("b", 64), "proto", "6", "atomic", "2")
	mr.Lpush("{f}:history", `{"gen":3,"path":"/srv/app","digest":"`+strings.Repeat("a", 64)+`","files":12,"bytes":4096,"atomic":2,"dest":"/opt/app","delete":true}`)
	if code, _, stderr := run(t, masterMain, vars, "rollback"); code != exitFailure || !strings.Contains(stderr, "start the master first") {
		t.Fatalf("rollback with no master: code %d, %q", code, stderr)
	}
	co := coord.New(rdb, coord.Config{Prefix: "{f}:"})
	if err := co.RegisterMaster(ctx, coord.MasterInfo{ID: "master", Addr: "10.0.0.1:7070"}, time.Minute); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := run(t, masterMain, vars, "rollback")
	if code != exitOK || !strings.Contains(out, "rollback to generation 3") {
		t.Fatalf("rollback: code %d, %q, %q", code, out, stderr)
	}
	task, _ := mr.Get("{f}:task")
	opts, err := co.Adopt(ctx)
	if err != nil || task != "/srv/app" || opts.Rollback != 3 || opts.Digest != strings.Repeat("a", 64) || opts.Atomic != 2 ||
		opts.Dest != "/opt/app" || !opts.Delete || opts.Files != 12 || opts.Bytes != 4096 {
		t.Fatalf("task %q, options %+v, %v", task, opts, err)
	}
}

// TestCancelCommand: cancel refuses when nothing runs, and marks the
// running generation failed with its reason.
func TestCancelCommand(t *testing.T) {
	mr := miniredis.RunT(t)
	vars := map[string]string{"FANOUT_REDIS": "redis://" + mr.Addr(), "FANOUT_KEY_PREFIX": "{f}:"}
	if code, _, stderr := run(t, masterMain, vars, "cancel"); code != exitFailure || !strings.Contains(stderr, "nothing to cancel") {
		t.Fatalf("cancel with no generation: code %d, %q", code, stderr)
	}
	mr.HSet("{f}:generation", "id", "5", "state", "running", "path", "/srv/app", "digest", strings.Repeat("c", 64), "proto", "4")
	code, out, stderr := run(t, masterMain, vars, "cancel", "--reason", "bad build")
	if code != exitOK || !strings.Contains(out, "cancelled generation 5") {
		t.Fatalf("cancel: code %d, %q, %q", code, out, stderr)
	}
	if st, msg := mr.HGet("{f}:generation", "state"), mr.HGet("{f}:generation", "error"); st != "failed" || !strings.Contains(msg, "bad build") {
		t.Fatalf("generation state %q, error %q", st, msg)
	}
	if code, _, stderr := run(t, masterMain, vars, "cancel"); code != exitFailure || !strings.Contains(stderr, "is failed") {
		t.Fatalf("cancel twice: code %d, %q", code, stderr)
	}
}
