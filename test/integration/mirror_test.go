package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
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
	"github.com/fanout/fanout/internal/master"
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
	// The task turns old/ into a file, but minion 1's old/ holds the
	// excluded old/x.log: its pull fails, naming both, and deletes
	// nothing; minion 2 takes the file.
	writeFile(t, filepath.Join(src, "old"), "master old")
	if err := l.Coord.SetTask(ctx, task, coord.TaskOptions{Delete: true, Exclude: patterns}); err != nil {
		t.Fatal(err)
	}
	var failure coord.Failure
	waitFor(ctx, t, "minion 1 to fail on the conflict, and minion 2 to take the file", func() bool {
		now, err := l.Coord.Status(ctx)
		if err != nil || now.Generation.ID <= st.Generation.ID {
			return false
		}
		failure = now.Failures[l.Minions[0].ID]
		return failure.Error != "" && slices.Contains(now.Finished, l.Minions[1].ID)
	})
	if !strings.Contains(failure.Error, `"old" holds excluded "old/x.log"`) {
		t.Errorf("the failure does not name the conflict: %s", failure.Error)
	}
	if b, err := os.ReadFile(filepath.Join(dst, "old/x.log")); err != nil || string(b) != "minion old/x.log" {
		t.Errorf("excluded old/x.log after the conflicting pull: %q, %v", b, err)
	}
	if b, err := os.ReadFile(filepath.Join(l.Minions[1].Root, task, "old")); err != nil || string(b) != "master old" {
		t.Errorf("minion 2's old: %q, %v", b, err)
	}
	if err := os.Remove(filepath.Join(src, "old")); err != nil {
		t.Fatal(err)
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

// startWatch starts a lab whose master runs in watch mode with wc and
// publishes the sample task; it returns the lab and the master's tree
// once every minion holds it.
func startWatch(ctx context.Context, t *testing.T, minions int, wc master.WatchConfig, patterns []string) (*lab.Lab, string) {
	t.Helper()
	l, err := lab.Start(ctx, lab.Config{Dir: t.TempDir(), Minions: minions, Watch: &wc})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Stop)
	src := filepath.Join(l.Master.Root, task)
	mustMkdir(t, src)
	if err := lab.SampleTree(src, 256<<10, 20); err != nil {
		t.Fatal(err)
	}
	if err := l.Coord.SetTask(ctx, task, coord.TaskOptions{Delete: true, Exclude: patterns}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.WaitGeneration(ctx, 0, nil); err != nil {
		t.Fatal(err)
	}
	waitIdentical(ctx, t, l, src, patterns)
	return l, src
}

// TestWatchMirrors: with run --watch, each kind of change on the master
// reaches every minion without a new task: a small write; an editor's
// write-then-rename; a rename; a delete; a directory moved out of the tree
// and back in; a new directory with contents; a write to an excluded path
// (not sent; the minion's own excluded file is kept). Each step asserts
// the copies identical, not how long it took.
func TestWatchMirrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	patterns := []string{"*.swp", "/scratch/"}
	l, src := startWatch(ctx, t, 3, master.WatchConfig{Delay: 200 * time.Millisecond, MaxDelay: 2 * time.Second}, patterns)
	outside := t.TempDir()
	mustMkdir(t, filepath.Join(src, "scratch"))
	writeFile(t, filepath.Join(l.Minions[0].Root, task, "mine.swp"), "the minion's own")
	first, _ := l.Coord.Current(ctx)
	steps := []struct {
		name string
		do   func()
	}{
		{"small write", func() { writeFile(t, filepath.Join(src, "note.txt"), "hello") }},
		{"editor write-then-rename", func() {
			writeFile(t, filepath.Join(src, ".note.txt.swp"), "hello, edited")
			must(t, os.Rename(filepath.Join(src, ".note.txt.swp"), filepath.Join(src, "note.txt")))
		}},
		{"rename", func() { must(t, os.Rename(filepath.Join(src, "note.txt"), filepath.Join(src, "renamed.txt"))) }},
		{"delete", func() { must(t, os.Remove(filepath.Join(src, "renamed.txt"))) }},
		{"new directory with contents", func() {
			mustMkdir(t, filepath.Join(outside, "fresh/deep"))
			writeFile(t, filepath.Join(outside, "fresh/deep/f"), "fresh")
			must(t, os.Rename(filepath.Join(outside, "fresh"), filepath.Join(src, "fresh")))
		}},
		{"directory moved out", func() { must(t, os.Rename(filepath.Join(src, "fresh"), filepath.Join(outside, "away"))) }},
		{"changed outside, moved back in", func() {
			writeFile(t, filepath.Join(outside, "away/deep/g"), "changed while away")
			must(t, os.Rename(filepath.Join(outside, "away"), filepath.Join(src, "back")))
		}},
		{"write inside the moved-in directory", func() { writeFile(t, filepath.Join(src, "back/deep/h"), "inside") }},
		{"excluded writes", func() {
			writeFile(t, filepath.Join(src, "scratch/tmp"), "excluded")
			writeFile(t, filepath.Join(src, "x.swp"), "excluded")
			writeFile(t, filepath.Join(src, "visible"), "not excluded")
		}},
		{"task root swapped for another tree", func() {
			mustMkdir(t, filepath.Join(outside, "next/sub"))
			writeFile(t, filepath.Join(outside, "next/sub/n"), "the next tree")
			must(t, os.Rename(src, filepath.Join(outside, "previous")))
			must(t, os.Rename(filepath.Join(outside, "next"), src))
		}},
		{"write in a directory of the swapped-in tree", func() { writeFile(t, filepath.Join(src, "sub/m"), "watched again") }},
	}
	for _, s := range steps {
		s.do()
		waitIdentical(ctx, t, l, src, patterns)
		t.Logf("%s: identical on every minion", s.name)
		if s.name == "excluded writes" {
			for _, p := range []string{"scratch", "x.swp"} {
				if _, err := os.Lstat(filepath.Join(l.Minions[1].Root, task, p)); err == nil {
					t.Errorf("excluded %s reached a minion", p)
				}
			}
		}
	}
	if b, err := os.ReadFile(filepath.Join(l.Minions[0].Root, task, "mine.swp")); err != nil || string(b) != "the minion's own" {
		t.Errorf("the minion's excluded file: %q, %v", b, err)
	}
	st, err := l.Coord.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w := st.Watch
	if w == nil || w.Events == 0 || w.Generations < int64(len(steps))-1 || w.LastPublish.IsZero() || w.Watched == 0 {
		t.Fatalf("watch state %+v: want events, about one generation a step, a last publish, watched directories", w)
	}
	if st.Generation.ID <= first.ID {
		t.Fatal("no generation published by the watch")
	}
}

// TestWatchBurst: 1,000 file writes over 2 s, with the default --delay 1s
// and --max-delay 10s, become at most 3 generations, and every minion ends
// identical.
func TestWatchBurst(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l, src := startWatch(ctx, t, 3, master.WatchConfig{}, nil)
	before, _ := l.Coord.Current(ctx)
	mustMkdir(t, filepath.Join(src, "burst"))
	start := time.Now()
	for i := range 1000 {
		writeFile(t, filepath.Join(src, "burst", fmt.Sprintf("f%04d", i)), strings.Repeat("x", i))
		if d := time.Until(start.Add(time.Duration(i+1) * 2 * time.Millisecond)); d > 0 {
			time.Sleep(d)
		}
	}
	wrote := time.Since(start)
	st := waitIdentical(ctx, t, l, src, nil)
	t.Logf("1,000 writes in %s; identical on every minion %s after the first write, in %d generations (the last published %s after the first write, done %s after its publish)",
		wrote.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), st.Generation.ID-before.ID,
		st.Generation.Published.Sub(start).Round(time.Millisecond), st.Generation.DoneAt.Sub(st.Generation.Published))
	if n := st.Generation.ID - before.ID; n < 1 || n > 3 {
		t.Fatalf("the burst became %d generations, want 1 to 3", n)
	}
	// One generation after the burst settled: the minions are not
	// fetching again.
	time.Sleep(1500 * time.Millisecond)
	if after, _ := l.Coord.Current(ctx); after.ID != st.Generation.ID {
		t.Fatalf("a generation (%d) published after the burst settled at %d", after.ID, st.Generation.ID)
	}
}

// TestWatchCatchUp: a minion stopped during a burst of changes (several
// generations published meanwhile) catches up in one step when it comes
// back: it claims only for the newest generation, finishes once, and ends
// identical.
func TestWatchCatchUp(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l, src := startWatch(ctx, t, 3, master.WatchConfig{Delay: 100 * time.Millisecond, MaxDelay: time.Second}, nil)
	late := l.Minions[2]
	must(t, late.Stop())
	before, _ := l.Coord.Current(ctx)
	for i := range 4 {
		writeFile(t, filepath.Join(src, fmt.Sprintf("round-%d", i)), strings.Repeat("r", 100<<10))
		// Let each round become its own generation.
		waitFor(ctx, t, "a generation for the round", func() bool {
			g, _ := l.Coord.Current(ctx)
			return g.ID > before.ID+int64(i)
		})
	}
	newest, _ := l.Coord.Current(ctx)
	if newest.ID-before.ID < 4 {
		t.Fatalf("only %d generations published during the burst", newest.ID-before.ID)
	}
	evs, err := l.Coord.Events(ctx, "0", 0)
	if err != nil {
		t.Fatal(err)
	}
	mark := evs[len(evs)-1].ID
	must(t, l.StartMinion(ctx, late))
	waitIdentical(ctx, t, l, src, nil)
	evs, err = l.Coord.Events(ctx, mark, 0)
	if err != nil {
		t.Fatal(err)
	}
	// A pull may take several sources at once (--sources), each its own
	// claim: every claim, and the one finish, must be for the newest.
	var claims, finishes []string
	for _, ev := range evs {
		switch {
		case ev.Host == late.ID && ev.Type == "claim":
			claims = append(claims, ev.Gen)
		case ev.Host == late.ID && ev.Type == "finish":
			finishes = append(finishes, ev.Gen)
		}
	}
	want := fmt.Sprint(newest.ID)
	if len(claims) == 0 || slices.ContainsFunc(claims, func(g string) bool { return g != want }) ||
		!slices.Equal(finishes, []string{want}) {
		t.Fatalf("the returning minion claimed for generations %q and finished %q; want only the newest (%d), finished once", claims, finishes, newest.ID)
	}
}

// TestWatchLimit: when the directories cannot all be watched (the limit
// injected with --max-watches, which fails as the kernel's ENOSPC does),
// status reports the unwatched part and a change inside it still arrives.
func TestWatchLimit(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l, src := startWatch(ctx, t, 2, master.WatchConfig{Delay: 100 * time.Millisecond, ScanEvery: 500 * time.Millisecond, MaxWatches: 1}, nil)
	var st coord.Status
	waitFor(ctx, t, "status to report unwatched directories", func() bool {
		st, _ = l.Coord.Status(ctx)
		return st.Watch != nil && st.Watch.Unwatched > 0
	})
	if st.Watch.Watched != 1 {
		t.Fatalf("%d directories watched, want the 1 --max-watches allows", st.Watch.Watched)
	}
	// A file in a subdirectory, which is not watched.
	var sub string
	filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() && p != src && sub == "" {
			sub = p
		}
		return nil
	})
	if sub == "" {
		t.Fatal("the sample tree has no subdirectory")
	}
	writeFile(t, filepath.Join(sub, "in-unwatched"), "seen by the scan")
	waitIdentical(ctx, t, l, src, nil)
}

// TestOriginServesWhatItPublished: without watch mode, a file edited in
// place on the master (same size, mtime put back, so no walk would see
// it) while its generation is pulled is never served with the new bytes
// under the old hashes: the origin refuses the changed chunks, is not
// barred as a bad source, and publishes the tree as it is now, which the
// minion then holds.
func TestOriginServesWhatItPublished(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := lab.Start(ctx, lab.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Stop()
	src := filepath.Join(l.Master.Root, task)
	mustMkdir(t, src)
	big := filepath.Join(src, "model.bin")
	data := make([]byte, 4<<20)
	rng := rand.New(rand.NewPCG(5, 6)) // no repeated chunks: every byte comes from the origin
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	must(t, os.WriteFile(big, data, 0o644))
	if err := l.Set(ctx, task); err != nil {
		t.Fatal(err)
	}
	var first coord.Generation
	waitFor(ctx, t, "the first generation", func() bool {
		first, _ = l.Coord.Current(ctx)
		return first.ID > 0
	})
	fi, _ := os.Stat(big)
	f, err := os.OpenFile(big, os.O_WRONLY, 0)
	must(t, err)
	_, err = f.WriteAt([]byte("edited in place"), 3<<20)
	must(t, err)
	must(t, f.Close())
	must(t, os.Chtimes(big, fi.ModTime(), fi.ModTime()))
	// The only source is the origin.
	h, err := l.AddMinion(ctx)
	must(t, err)
	st, err := l.WaitGeneration(ctx, first.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d := treeDiff(src, filepath.Join(h.Root, task), nil); d != "" {
		t.Fatalf("the minion's copy: %s", d)
	}
	bad, err := l.Redis.SMembers(ctx, l.Coord.Keys().BadSources()).Result()
	must(t, err)
	if slices.Contains(bad, l.Master.ID) {
		t.Fatal("the origin was barred as a bad source for a change on its disk")
	}
	t.Logf("generation %d published for the edit; the minion holds the edited tree", st.Generation.ID)
}
