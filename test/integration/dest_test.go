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
	"github.com/fanout/fanout/internal/lab"
)

// TestDest: a task published with a destination (publish --dest) lands
// at that path under each minion's --root, identical, and nothing at the
// task path; the generation records it and is of protocol 5. A bad
// destination fails the generation, naming it.
func TestDest(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, src := startTree(ctx, t, lab.Config{Minions: 3})
	const dest = "/srv/app/current"
	if err := l.Coord.SetTask(ctx, task, coord.TaskOptions{Dest: dest, Delete: true}); err != nil {
		t.Fatal(err)
	}
	st, err := l.WaitGeneration(ctx, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if g := st.Generation; g.Dest != dest || g.Path != task || g.Proto != coord.ProtoDest || g.LocalPath() != dest {
		t.Fatalf("generation %+v: want path %s, dest %s, protocol %d", g, task, dest, coord.ProtoDest)
	}
	for _, h := range l.Minions {
		if err := lab.Compare(src, filepath.Join(h.Root, dest)); err != nil {
			t.Fatalf("%s: %v", h.ID, err)
		}
		if _, err := os.Lstat(filepath.Join(h.Root, task)); err == nil {
			t.Errorf("%s: something was written at the task path %s", h.ID, task)
		}
	}
	// Without a destination the next generation goes to the task path,
	// published as protocol 4, which minions before --dest pull.
	if err := l.Set(ctx, task); err != nil {
		t.Fatal(err)
	}
	st2, err := l.WaitGeneration(ctx, st.Generation.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	if g := st2.Generation; g.Dest != "" || g.Proto != coord.ProtoDest-1 {
		t.Fatalf("generation without a destination: %+v", g)
	}
	for _, h := range l.Minions {
		if err := lab.Compare(src, filepath.Join(h.Root, task)); err != nil {
			t.Fatalf("%s: %v", h.ID, err)
		}
	}
	// A destination that is not a clean absolute path fails the
	// generation and names the option.
	if err := l.Coord.SetTask(ctx, task, coord.TaskOptions{Dest: "srv/../../etc"}); err != nil {
		t.Fatal(err)
	}
	fst, err := waitFailed(ctx, l, st2.Generation.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(fst.Generation.Error, "dest") {
		t.Fatalf("failed generation error %q does not name the destination", fst.Generation.Error)
	}
}

// TestHostileGenerationPath: a generation key written by hand (anyone who
// can write to Redis) with a path that climbs out of --root is refused by
// every minion, which writes nothing outside its root and says why.
func TestHostileGenerationPath(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, _ := startWithTree(ctx, t, 2)
	st, err := l.WaitGeneration(ctx, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The same content, under a path that climbs out of the minions'
	// roots, written straight into the generation key: a running
	// generation of protocol 5 whose destination is "/../escaped".
	k := l.Coord.Keys()
	if err := l.Redis.HSet(ctx, k.Generation(), "id", st.Generation.ID+1, "state", coord.StateRunning, "dest", "/../escaped", "proto", coord.ProtoDest).Err(); err != nil {
		t.Fatal(err)
	}
	if err := l.Redis.Publish(ctx, k.GenerationsChannel(), st.Generation.ID+1).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "every minion to refuse the generation, naming the path", func() bool {
		now, err := l.Coord.Status(ctx)
		if err != nil {
			return false
		}
		for _, h := range l.Minions {
			if f := now.Failures[h.ID]; !strings.Contains(f.Error, `"/../escaped"`) {
				return false
			}
		}
		return true
	})
	for _, h := range l.Minions {
		if _, err := os.Lstat(filepath.Join(filepath.Dir(h.Root), "escaped")); err == nil {
			t.Errorf("%s wrote outside its root", h.ID)
		}
	}
}

// TestGroups: a task published for a group reaches only the minions of
// that group, and the generation completes without the others, which hold
// nothing of it and are not expected; the next task without a group
// reaches every minion.
func TestGroups(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, src := startTree(ctx, t, lab.Config{Minions: 3})
	web := l.Minions[:2]
	other := l.Minions[2]
	for i, h := range web {
		must(t, h.Stop())
		h.Groups = []string{"web", fmt.Sprintf("rack-%d", i)}
		must(t, l.StartMinion(ctx, h))
	}
	if err := l.Coord.SetTask(ctx, task, coord.TaskOptions{Groups: []string{"web"}}); err != nil {
		t.Fatal(err)
	}
	st, err := l.WaitGeneration(ctx, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if g := st.Generation; !slices.Equal(g.Groups, []string{"web"}) || g.Proto != coord.ProtoDest {
		t.Fatalf("generation %+v: want groups [web], protocol %d", g, coord.ProtoDest)
	}
	if !slices.Equal(st.Expected, []string{web[0].ID, web[1].ID}) || slices.Contains(st.Finished, other.ID) {
		t.Fatalf("expected %v, finished %v: want only the web hosts", st.Expected, st.Finished)
	}
	for _, h := range web {
		if err := lab.Compare(src, filepath.Join(h.Root, task)); err != nil {
			t.Fatalf("%s: %v", h.ID, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(other.Root, task)); err == nil {
		t.Errorf("%s, not in group web, received the task", other.ID)
	}
	// A group by another of its names: one host only.
	if err := l.Coord.SetTask(ctx, task, coord.TaskOptions{Groups: []string{"rack-1"}}); err != nil {
		t.Fatal(err)
	}
	st2, err := l.WaitGeneration(ctx, st.Generation.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(st2.Expected, []string{web[1].ID}) {
		t.Fatalf("rack-1: expected %v, want only %s", st2.Expected, web[1].ID)
	}
	// No group: every host.
	if err := l.Set(ctx, task); err != nil {
		t.Fatal(err)
	}
	st3, err := l.WaitGeneration(ctx, st2.Generation.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(st3.Expected) != 3 {
		t.Fatalf("without a group: expected %v, want all 3", st3.Expected)
	}
	if err := lab.Compare(src, filepath.Join(other.Root, task)); err != nil {
		t.Fatalf("%s: %v", other.ID, err)
	}
}

// TestDriftConflictWithExcluded: a held file replaced by hand with a
// directory that holds an excluded file is drift the minion will not
// repair by deleting the excluded file: the host is listed as repairing
// (its tree is not vouched for), the excluded file stays, and
// once the directory is moved aside the host repairs its tree.
func TestDriftConflictWithExcluded(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := lab.Start(ctx, lab.Config{Dir: t.TempDir(), Minions: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Stop()
	src := filepath.Join(l.Master.Root, task)
	mustMkdir(t, src)
	writeFile(t, filepath.Join(src, "conf"), "master conf")
	writeFile(t, filepath.Join(src, "keep"), "master keep")
	if err := l.Coord.SetTask(ctx, task, coord.TaskOptions{Exclude: []string{"*.log"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.WaitGeneration(ctx, 0, nil); err != nil {
		t.Fatal(err)
	}
	h := l.Minions[0]
	dst := filepath.Join(h.Root, task)
	must(t, os.Remove(filepath.Join(dst, "conf")))
	mustMkdir(t, filepath.Join(dst, "conf"))
	writeFile(t, filepath.Join(dst, "conf", "local.log"), "minion log")
	waitFor(ctx, t, "the host listed as repairing", func() bool {
		st, err := l.Coord.Status(ctx)
		return err == nil && slices.Contains(st.Repairing, h.ID)
	})
	if b, err := os.ReadFile(filepath.Join(dst, "conf", "local.log")); err != nil || string(b) != "minion log" {
		t.Fatalf("the excluded file after the conflict: %q, %v", b, err)
	}
	// Moved aside by the operator: the tree is repaired.
	must(t, os.Rename(filepath.Join(dst, "conf"), filepath.Join(h.Root, "conf.aside")))
	waitFor(ctx, t, "the tree repaired", func() bool {
		st, err := l.Coord.Status(ctx)
		return err == nil && len(st.Repairing) == 0 && slices.Contains(st.Finished, h.ID) && lab.Compare(src, dst) == nil
	})
}
