package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/hook"
	"github.com/fanout/fanout/internal/lab"
)

// releaseFiles is how many versioned files writeRelease writes.
const releaseFiles = 8

// writeRelease writes version v of a tree into dir: releaseFiles small
// files naming v (a reader checks they agree), sub/cfg naming v, and
// same.bin, whose 1 MiB are the same in every version (hard-linked from
// release to release). Version 2 drops f7; version 3 adds new.txt.
func writeRelease(t *testing.T, dir string, v int) {
	t.Helper()
	mustMkdir(t, filepath.Join(dir, "sub"))
	for i := range releaseFiles {
		p := filepath.Join(dir, fmt.Sprintf("f%d", i))
		if v == 2 && i == releaseFiles-1 {
			must(t, os.RemoveAll(p))
			continue
		}
		must(t, os.WriteFile(p, []byte(fmt.Sprintf("version %d file %d\n", v, i)), 0o644))
	}
	must(t, os.WriteFile(filepath.Join(dir, "sub", "cfg"), []byte(fmt.Sprintf("v=%d\n", v)), 0o600))
	must(t, os.WriteFile(filepath.Join(dir, "same.bin"), bytes.Repeat([]byte("unchanged "), 1<<20/10), 0o644))
	if v == 3 {
		must(t, os.WriteFile(filepath.Join(dir, "new.txt"), []byte("new in 3\n"), 0o644))
	}
	// Compare checks mtimes: each version has its own, but for same.bin.
	at := time.Unix(1_700_000_000+int64(v)*1000, 0)
	for _, p := range []string{"f0", "f1", "f2", "f3", "f4", "f5", "f6", "f7", "new.txt", "sub/cfg", "sub", "."} {
		if err := os.Chtimes(filepath.Join(dir, p), at, at); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
	same := time.Unix(1_600_000_000, 0)
	must(t, os.Chtimes(filepath.Join(dir, "same.bin"), same, same))
}

// readRelease opens the task path once (resolving the symlink once, as a
// service that opens its config directory does) and reads every
// versioned file through that handle; it returns the versions seen.
func readRelease(live string) ([]string, error) {
	fd, err := unix.Open(live, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var seen []string
	for i := range releaseFiles - 1 { // f7 is not in version 2
		f, err := unix.Openat(fd, fmt.Sprintf("f%d", i), unix.O_RDONLY, 0)
		if err != nil {
			return nil, err
		}
		buf := make([]byte, 64)
		n, err := unix.Read(f, buf)
		unix.Close(f)
		if err != nil {
			return nil, err
		}
		v, _, _ := strings.Cut(string(buf[:n]), " file")
		seen = append(seen, v)
	}
	return seen, nil
}

// TestAtomicReleases: publish --atomic builds each generation beside the
// live tree and switches the task path to it. A reader that opens the
// tree in a loop during the switches never sees a mix of versions or a
// missing tree; unchanged files are hard links from the release before;
// releases beyond --keep are pruned; a rollback switches every host back
// to a kept release without a byte received, and a host that joins later
// gets the rolled-back tree from the hosts (the master serves none of
// it: its own tree moved on).
func TestAtomicReleases(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cfg := lab.Config{Minions: 3, Dir: t.TempDir()}
	l, err := lab.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Stop)
	src := filepath.Join(l.Master.Root, task)
	writeRelease(t, src, 1)
	want := map[int]string{}
	for v := 1; v <= 3; v++ {
		want[v] = filepath.Join(t.TempDir(), "v")
		writeRelease(t, want[v], v)
	}
	opts := coord.TaskOptions{Delete: true, Atomic: 2}
	publish := func(after int64) coord.Generation {
		t.Helper()
		return setTask(ctx, t, l, after, opts).Generation
	}
	// live checks that every minion's task path is a symlink to the
	// release of g and holds version v.
	live := func(g coord.Generation, v int) {
		t.Helper()
		for _, h := range l.Minions {
			p := filepath.Join(h.Root, task)
			target, err := os.Readlink(p)
			if wantT := ".m42.releases/" + g.Digest[:16]; err != nil || target != wantT {
				t.Fatalf("%s: %s -> %q (%v), want -> %s", h.ID, p, target, err, wantT)
			}
			resolved, err := filepath.EvalSymlinks(p)
			if err != nil {
				t.Fatal(err)
			}
			if err := lab.Compare(want[v], resolved); err != nil {
				t.Fatalf("%s: version %d: %v", h.ID, v, err)
			}
		}
	}
	g1 := publish(0)
	if g1.Atomic != 2 || g1.Proto != coord.ProtoAtomic {
		t.Fatalf("generation %+v: want atomic 2, protocol %d", g1, coord.ProtoAtomic)
	}
	live(g1, 1)

	// A reader loops over the tree of the first minion while versions 2
	// and 3 are switched to.
	var mu sync.Mutex
	var mixed []string
	seen := map[string]bool{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		p := filepath.Join(l.Minions[0].Root, task)
		for {
			select {
			case <-stop:
				return
			default:
			}
			vs, err := readRelease(p)
			mu.Lock()
			switch {
			case err != nil:
				mixed = append(mixed, err.Error())
			case slices.ContainsFunc(vs, func(v string) bool { return v != vs[0] }):
				mixed = append(mixed, strings.Join(vs, ","))
			default:
				seen[vs[0]] = true
			}
			mu.Unlock()
		}
	}()

	writeRelease(t, src, 2)
	g2 := publish(g1.ID)
	live(g2, 2)
	for _, h := range l.Minions {
		rel := filepath.Join(h.Root, "/data/models/.m42.releases")
		a, err1 := os.Stat(filepath.Join(rel, g1.Digest[:16], "same.bin"))
		b, err2 := os.Stat(filepath.Join(rel, g2.Digest[:16], "same.bin"))
		if err1 != nil || err2 != nil || !os.SameFile(a, b) {
			t.Errorf("%s: same.bin is not one file hard-linked into both releases (%v, %v)", h.ID, err1, err2)
		}
	}
	writeRelease(t, src, 3)
	g3 := publish(g2.ID)
	live(g3, 3)
	close(stop)
	wg.Wait()
	if len(mixed) > 0 {
		t.Fatalf("the reader saw %d mixed or missing trees, first %q", len(mixed), mixed[0])
	}
	if !seen["version 1"] || !seen["version 3"] {
		t.Fatalf("the reader saw versions %v: it did not span the switches", seen)
	}
	// --keep 2: the live release and the one before.
	for _, h := range l.Minions {
		ents, err := os.ReadDir(filepath.Join(h.Root, "/data/models/.m42.releases"))
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		if wantN := []string{g2.Digest[:16], g3.Digest[:16]}; !sameSet(names, wantN) {
			t.Errorf("%s: releases %v, want %v (kept 2)", h.ID, names, wantN)
		}
	}

	// Roll back to version 2, as fanout-master rollback does: from its
	// completion record.
	hist, err := l.Coord.History(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(hist, func(c coord.Completion) bool { return c.Gen == g2.ID })
	if i < 0 || hist[i].Atomic != 2 || hist[i].Digest != g2.Digest {
		t.Fatalf("history %+v: no atomic record of generation %d", hist, g2.ID)
	}
	rec := hist[i]
	if err := l.Coord.SetTask(ctx, rec.Path, coord.TaskOptions{Delete: rec.Delete, Dest: rec.Dest, Atomic: rec.Atomic,
		Rollback: rec.Gen, Digest: rec.Digest, Files: rec.Files, Bytes: rec.Bytes}); err != nil {
		t.Fatal(err)
	}
	st, err := l.WaitGeneration(ctx, g3.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	g4 := st.Generation
	if g4.Rollback != g2.ID || g4.Digest != g2.Digest || g4.Proto != coord.ProtoAtomic {
		t.Fatalf("rollback generation %+v: want rollback %d, digest %.12s", g4, g2.ID, g2.Digest)
	}
	live(g4, 2)
	if n := l.Received(g4.ID); n != 0 {
		t.Errorf("the rollback moved %d bytes; the hosts kept the release", n)
	}
	// A host that joins now has no release: it pulls the rolled-back
	// tree from the hosts that switched back.
	late, err := l.AddMinion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "the late host to hold the rollback", func() bool {
		st, err := l.Coord.Status(ctx)
		return err == nil && slices.Contains(st.Finished, late.ID)
	})
	live(g4, 2)
}

// sameSet reports whether a and b hold the same strings.
func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// TestFleetSwitch: with --switch fleet, hosts that hold the new release
// keep the old one live until every expected host holds it; then the
// master orders the switch and every host switches; the generation is
// done once all did. One host is slow (its link at 256 KiB/s), so the
// others are ready seconds before it.
func TestFleetSwitch(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l, err := lab.Start(ctx, lab.Config{Minions: 2, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Stop)
	slow := l.NewHost()
	slow.BWLimit = 256 << 10
	// The hook reads the task path: it must run after the switch.
	seenByHook := filepath.Join(t.TempDir(), "seen")
	releaseOfHook := seenByHook + ".release"
	hooks, err := hook.NewSet([]string{`default=cat "$FANOUT_PATH/f0" >> ` + seenByHook + ` && echo "$FANOUT_RELEASE" >> ` + releaseOfHook}, "", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	slow.Hooks = hooks
	if err := l.StartMinion(ctx, slow); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(l.Master.Root, task)
	writeRelease(t, src, 1)
	g1 := setTask(ctx, t, l, 0, coord.TaskOptions{Atomic: 2, Delete: true}).Generation
	writeRelease(t, src, 2)
	writeRandomModel(t, src, 7, 1<<20)
	if err := l.Coord.SetTask(ctx, task, coord.TaskOptions{Atomic: 2, Delete: true, Switch: coord.SwitchFleet}); err != nil {
		t.Fatal(err)
	}
	// onRelease lists the hosts whose task path points at release name.
	onRelease := func(name string) []string {
		var out []string
		for _, h := range l.Minions {
			if t, err := os.Readlink(filepath.Join(h.Root, task)); err == nil && t == ".m42.releases/"+name {
				out = append(out, h.ID)
			}
		}
		return out
	}
	var g2 coord.Generation
	readyUnswitched := false
	st, err := l.WaitGeneration(ctx, g1.ID, func(st coord.Status) {
		g2 = st.Generation
		if g2.Switch != coord.SwitchFleet {
			t.Fatalf("generation %+v: want switch fleet", g2)
		}
		on := onRelease(g2.Digest[:16])
		if g2.SwitchAt.IsZero() && len(on) > 0 {
			t.Fatalf("hosts %v switched to the new release before the master's order (finished: %v)", on, st.Finished)
		}
		if g2.SwitchAt.IsZero() && len(st.Finished) > 0 && !slices.Contains(st.Finished, slow.ID) {
			// Hosts hold the new release, verified, and still run the old.
			if old := onRelease(g1.Digest[:16]); len(old) == len(l.Minions) {
				readyUnswitched = true
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if !readyUnswitched {
		t.Error("no moment seen where a host held the new release and still ran the old one: the test did not catch the wait")
	}
	g2 = st.Generation
	if g2.SwitchAt.IsZero() || len(st.Switched) != len(l.Minions) {
		t.Fatalf("done without the switch: %+v, switched %v", g2, st.Switched)
	}
	if on := onRelease(g2.Digest[:16]); len(on) != len(l.Minions) {
		t.Fatalf("after done only %v run the new release", on)
	}
	for _, h := range l.Minions {
		resolved, err := filepath.EvalSymlinks(filepath.Join(h.Root, task))
		if err != nil {
			t.Fatal(err)
		}
		if err := lab.Compare(src, resolved); err != nil {
			t.Fatalf("%s: %v", h.ID, err)
		}
	}
	if got := readLines(t, seenByHook); !slices.Equal(got, []string{"version 1 file 0", "version 2 file 0"}) {
		t.Errorf("the hook read %q through the task path, want version 1 then 2: it ran before its switch", got)
	}
	if got := readLines(t, releaseOfHook); len(got) != 2 || !strings.HasSuffix(got[1], "/.m42.releases/"+g2.Digest[:16]) {
		t.Errorf("FANOUT_RELEASE was %q, want the second release last", got)
	}
	t.Logf("ready after %v, all switched and done %v after the order", g2.SwitchAt.Sub(g2.Published), g2.DoneAt.Sub(g2.SwitchAt))
}

// setTask sets the task with opts and waits for the generation after
// after to be done.
func setTask(ctx context.Context, t *testing.T, l *lab.Lab, after int64, opts coord.TaskOptions) coord.Status {
	t.Helper()
	if err := l.Coord.SetTask(ctx, task, opts); err != nil {
		t.Fatal(err)
	}
	st, err := l.WaitGeneration(ctx, after, nil)
	if err != nil {
		t.Fatal(err)
	}
	return st
}
