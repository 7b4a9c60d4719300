package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/exclude"
	"github.com/fanout/fanout/internal/lab"
	"github.com/fanout/fanout/internal/manifest"
	"github.com/fanout/fanout/internal/peer"
)

// treeDiff compares tree got with tree want, leaving out what patterns
// exclude on both sides: paths, types, modes, mtimes, content (by hash)
// and symlink targets. It reads both with manifest.Build, which the
// exclude package's rsync table test vouches for. "" means identical.
func treeDiff(want, got string, patterns []string) string {
	ex, err := exclude.Parse(patterns)
	if err != nil {
		return err.Error()
	}
	ctx := context.Background()
	w, err := manifest.Build(ctx, want, manifest.Options{Hash: true, Exclude: ex})
	if err != nil {
		return err.Error()
	}
	g, err := manifest.Build(ctx, got, manifest.Options{Hash: true, Exclude: ex})
	if err != nil {
		return err.Error()
	}
	gm := map[string]manifest.Entry{}
	for _, e := range g.Entries {
		gm[e.Path] = e
	}
	var diffs []string
	for _, e := range w.Entries {
		o, ok := gm[e.Path]
		delete(gm, e.Path)
		switch {
		case !ok:
			diffs = append(diffs, e.Path+": missing")
		case o.Type != e.Type || o.Hash != e.Hash || o.Target != e.Target:
			diffs = append(diffs, e.Path+": content differs")
		case e.Type != manifest.Symlink && (o.Mode != e.Mode || o.MTime != e.MTime):
			diffs = append(diffs, e.Path+": mode or mtime differs")
		}
	}
	for p := range gm {
		diffs = append(diffs, p+": extra")
	}
	slices.Sort(diffs)
	if len(diffs) > 5 {
		diffs = append(diffs[:5], fmt.Sprintf("... %d more", len(diffs)-5))
	}
	return strings.Join(diffs, "; ")
}

// waitIdentical waits until every minion's copy of the task equals src
// (less what patterns exclude) and the newest generation is done.
func waitIdentical(ctx context.Context, t *testing.T, l *lab.Lab, src string, patterns []string) coord.Status {
	t.Helper()
	var last string
	for {
		st, err := l.Coord.Status(ctx)
		if err == nil && st.State == coord.StateDone {
			last = ""
			for _, h := range l.Minions {
				if d := treeDiff(src, filepath.Join(h.Root, task), patterns); d != "" {
					last = h.ID + ": " + d
					break
				}
			}
			if last == "" {
				// The master may have published meanwhile: identical to
				// the newest generation means done for it too.
				if again, err := l.Coord.Status(ctx); err == nil && again.Generation.Ref() == st.Generation.Ref() && again.State == coord.StateDone {
					return st
				}
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("copies never became identical to the master's tree: %s (status %v)", last, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestExcludes: a task published with --exclude patterns (and the master's
// own --exclude, which add up) leaves excluded paths out of the manifest;
// with --delete, a minion neither receives nor deletes an excluded path,
// while it deletes other extras; a directory holding an excluded file is
// kept, its other extras removed.
func TestExcludes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := lab.Start(ctx, lab.Config{Dir: t.TempDir(), Minions: 2, MasterExclude: []string{"tmp/"}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Stop()
	src := filepath.Join(l.Master.Root, task)
	for _, d := range []string{"cache", "src/tmp", "src/cache", "tmp"} {
		mustMkdir(t, filepath.Join(src, d))
	}
	for _, f := range []string{"app.log", "cache/blob", "src/main.go", "src/cache/kept", "src/tmp/junk", "tmp/junk", "README"} {
		writeFile(t, filepath.Join(src, f), "master "+f)
	}
	// What minion 1 holds before: excluded paths of its own, and extras.
	dst := filepath.Join(l.Minions[0].Root, task)
	for _, d := range []string{"cache", "old"} {
		mustMkdir(t, filepath.Join(dst, d))
	}
	for _, f := range []string{"app.log", "cache/local", "old/x.log", "old/stray", "stray"} {
		writeFile(t, filepath.Join(dst, f), "minion "+f)
	}
	patterns := []string{"*.log", "/cache/"}
	if err := l.Coord.SetTask(ctx, task, coord.TaskOptions{Delete: true, Exclude: patterns}); err != nil {
		t.Fatal(err)
	}
	st, err := l.WaitGeneration(ctx, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	all := append(slices.Clone(patterns), "tmp/")
	for i, h := range l.Minions {
		want := ""
		if i == 0 {
			want = "old: extra" // it holds the excluded old/x.log: kept, as rsync --delete keeps it
		}
		if d := treeDiff(src, filepath.Join(h.Root, task), all); d != want {
			t.Fatalf("%s: %q, want %q", h.ID, d, want)
		}
	}
	// Excluded on the master: never sent.
	for _, p := range []string{"cache/blob", "tmp/junk", "src/tmp/junk"} {
		if _, err := os.Lstat(filepath.Join(l.Minions[1].Root, task, p)); err == nil {
			t.Errorf("excluded %s was sent", p)
		}
	}
	// Not excluded by "/cache/" (anchored): sent.
	if _, err := os.Lstat(filepath.Join(l.Minions[1].Root, task, "src/cache/kept")); err != nil {
		t.Errorf("src/cache/kept, which /cache/ does not match, was not sent: %v", err)
	}
	// Excluded on the minion: neither replaced nor deleted, even with
	// --delete; other extras deleted.
	for p, want := range map[string]string{"app.log": "minion app.log", "cache/local": "minion cache/local", "old/x.log": "minion old/x.log"} {
		b, err := os.ReadFile(filepath.Join(dst, p))
		if err != nil || string(b) != want {
			t.Errorf("excluded %s on the minion: %q, %v; want it untouched", p, b, err)
		}
	}
	for _, p := range []string{"stray", "old/stray"} {
		if _, err := os.Lstat(filepath.Join(dst, p)); err == nil {
			t.Errorf("extra %s survived --delete", p)
		}
	}
	// The published manifest carries the patterns (the task's and the
	// master's), in format 4, under the protocol that reads it.
	c := peer.NewClient(peer.ClientConfig{Secrets: [][]byte{l.Secret()}})
	defer c.CloseIdleConnections()
	enc, err := c.Manifest(ctx, l.Master.Addr, st.Generation.ID)
	if err != nil {
		t.Fatal(err)
	}
	m, err := manifest.Decode(enc, manifest.DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	if m.Format() != manifest.Format4 || !slices.Equal(m.Exclude, all) || st.Generation.Proto < 4 {
		t.Fatalf("manifest format %d, excludes %q, generation proto %d; want 4, %q, 4", m.Format(), m.Exclude, st.Generation.Proto, all)
	}
	// A bad pattern in the task's options fails the generation, naming it.
	if err := l.Coord.SetTask(ctx, task, coord.TaskOptions{Exclude: []string{"a["}}); err != nil {
		t.Fatal(err)
	}
	fst, err := waitFailed(ctx, l, st.Generation.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(fst.Generation.Error, `"a["`) {
		t.Fatalf("failed generation error %q does not name the pattern", fst.Generation.Error)
	}
}
