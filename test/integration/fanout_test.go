// Package integration runs whole fan-outs: a master and eight minions with
// real sockets, against miniredis and against a real redis-server.
package integration

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/lab"
	"github.com/fanout/fanout/internal/manifest"
	"github.com/fanout/fanout/internal/redistest"
)

const task = "/data/models/m42"

// TestFanOut distributes a tree to eight minions that start from different
// states, then distributes a changed tree as a new generation and checks
// only the changed file moved, then a --delete publish removes extras.
func TestFanOut(t *testing.T) {
	for _, srv := range redistest.Servers(t) {
		t.Run(srv.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			l, err := lab.Start(ctx, lab.Config{Dir: t.TempDir(), Minions: 8, RedisURL: srv.URL, Prefix: "{fanout}:"})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Stop()
			src := filepath.Join(l.Master.Root, task)
			mustMkdir(t, src)
			if err := lab.SampleTree(src, 3<<20, 60); err != nil {
				t.Fatal(err)
			}
			big := filepath.Join(src, "weights/model.bin")

			// Minion states: 01 empty; 02 a stale full copy; 03 an old
			// version of the big file; 04 extra files; 05 a file where the
			// tree has a dir and a dir where it has a file.
			at := func(i int, p string) string { return filepath.Join(l.Minions[i].Root, task, p) }
			stale := at(1, "")
			mustMkdir(t, stale)
			if err := lab.SampleTree(stale, 3<<20, 60); err != nil {
				t.Fatal(err)
			}
			writeFile(t, filepath.Join(stale, "config/run.sh"), "old script\n")
			mustMkdir(t, at(2, "weights"))
			old, err := os.ReadFile(big)
			if err != nil {
				t.Fatal(err)
			}
			old[len(old)/2] ^= 0xff
			writeFile(t, at(2, "weights/model.bin"), string(old))
			mustMkdir(t, at(3, "extra/dir"))
			writeFile(t, at(3, "extra/dir/keep-me.txt"), "local file\n")
			writeFile(t, at(3, "stray.txt"), "local file\n")
			mustMkdir(t, at(4, ""))
			writeFile(t, at(4, "empty"), "a file where the tree has a dir\n")
			mustMkdir(t, at(4, "current/sub"))

			if st, err := l.Coord.Status(ctx); err != nil || st.State != coord.StateIdle {
				t.Fatalf("status before any task: %q, %v", st.State, err)
			}
			if err := l.Set(ctx, task); err != nil {
				t.Fatal(err)
			}
			var seen []string
			st, err := l.WaitGeneration(ctx, 0, func(st coord.Status) {
				if len(seen) == 0 || seen[len(seen)-1] != st.State {
					seen = append(seen, st.State)
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(seen) < 2 || seen[0] != coord.StateRunning || seen[len(seen)-1] != coord.StateDone {
				t.Errorf("status states through the task: %v, want running ... done", seen)
			}
			if got := len(st.Finished); got != 8 {
				t.Fatalf("finished = %d hosts, want 8", got)
			}
			// Without --delete, extras stay; everything else is exact.
			for _, p := range []string{"extra/dir/keep-me.txt", "stray.txt"} {
				if _, err := os.Stat(at(3, p)); err != nil {
					t.Fatalf("extra file %s removed without --delete: %v", p, err)
				}
			}
			checkCopies(t, l, src, 3)
			// The stale full copy differs only in config/run.sh: the tree
			// diff must move exactly that file and nothing else.
			if got, _ := l.Minions[1].Minion.Progress(); got != int64(len("#!/bin/sh\necho serving m42\n")) {
				t.Errorf("stale minion received %d bytes, want only config/run.sh", got)
			}
			// The old big file (one byte flipped) is rebuilt from its own
			// chunks: only the chunk holding the byte crosses the network
			// (with the small files that minion lacked), not the file.
			if got, _ := l.Minions[2].Minion.Progress(); got >= 3<<20 || got < 1 {
				t.Errorf("minion with an old big file received %d bytes, want one chunk of it plus the small files (< 3 MiB)", got)
			}

			// Generation 2: one file changes; only its bytes move.
			writeFile(t, filepath.Join(src, "config/run.sh"), "#!/bin/sh\necho build 2\n")
			if err := l.Set(ctx, task); err != nil {
				t.Fatal(err)
			}
			st2, err := l.WaitGeneration(ctx, st.Generation.ID, nil)
			if err != nil {
				t.Fatal(err)
			}
			if st2.Generation.ID <= st.Generation.ID {
				t.Fatalf("second SET task did not make a new generation: %d then %d", st.Generation.ID, st2.Generation.ID)
			}
			checkCopies(t, l, src, 3)
			for _, h := range l.Minions {
				got, planned := h.Minion.Progress()
				if want := int64(len("#!/bin/sh\necho build 2\n")); got != want || planned != want {
					t.Errorf("%s moved %d bytes (planned %d) for a one-file change, want %d", h.ID, got, planned, want)
				}
				// Status shows each pull's final figures (they came
				// with its finish), and each host counted once in
				// lookup (its first claim counted it).
				if p := st2.Progress[h.ID]; p.Gen != st2.Generation.ID || p.Done != got || p.Total != planned || p.Source == "" {
					t.Errorf("%s: status progress %+v, want generation %d, %d of %d bytes", h.ID, p, st2.Generation.ID, got, planned)
				}
			}
			if st2.Lookup != int64(len(l.Minions)) {
				t.Errorf("lookup = %d, want %d (each host once)", st2.Lookup, len(l.Minions))
			}

			// Generation 3 with delete: the extras go.
			if err := l.Coord.SetTask(ctx, task, coord.TaskOptions{Delete: true}); err != nil {
				t.Fatal(err)
			}
			if _, err := l.WaitGeneration(ctx, st2.Generation.ID, nil); err != nil {
				t.Fatal(err)
			}
			checkCopies(t, l, src, -1)
		})
	}
}

// checkCopies compares every minion's copy with src; the minion at index
// withExtras has extra local files, removed from a scratch copy of the
// comparison by ignoring them.
func checkCopies(t *testing.T, l *lab.Lab, src string, withExtras int) {
	t.Helper()
	for i, h := range l.Minions {
		dst := filepath.Join(h.Root, task)
		err := lab.Compare(src, dst)
		if i == withExtras {
			err = ignoreExtras(err)
		}
		if err != nil {
			t.Errorf("%s: %v", h.ID, err)
		}
		temps, err := lab.TempFiles(dst, manifest.IsTemp)
		if err != nil || len(temps) > 0 {
			t.Errorf("%s: temporary files left: %v %v", h.ID, temps, err)
		}
	}
}

// ignoreExtras accepts a Compare error made only of the known extra files.
func ignoreExtras(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	lines := bytes.Split([]byte(msg), []byte("\n"))
	for _, ln := range lines[1:] {
		s := string(bytes.TrimSpace(ln))
		switch s {
		case "extra: extra", "extra/dir: extra", "extra/dir/keep-me.txt: extra", "stray.txt: extra":
		default:
			return err
		}
	}
	return nil
}

func mustMkdir(t *testing.T, p string) {
	t.Helper()
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}
