package coord

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestTaskKeys: the plain task's keys are the seed's; a named task's are
// the same names under t:NAME:, but for the shared registry, master
// registration and task list; DefaultTask is the plain task.
func TestTaskKeys(t *testing.T) {
	k := Keys{Prefix: "{fanout}:"}
	named := k.ForTask("models")
	for _, c := range []struct{ got, want string }{
		{k.Task(), "{fanout}:task"},
		{k.ForTask(DefaultTask).Sync(), "{fanout}:synchronize_queue"},
		{named.Task(), "{fanout}:t:models:task"},
		{named.Sync(), "{fanout}:t:models:synchronize_queue"},
		{named.Heartbeats(), "{fanout}:t:models:heartbeats"},
		{named.Lease("h1"), "{fanout}:t:models:lease:h1"},
		{named.GenerationsChannel(), "{fanout}:t:models:generations"},
		{named.Hosts(), "{fanout}:hosts"},
		{named.Master(), "{fanout}:master"},
		{named.Tasks(), "{fanout}:tasks"},
		{named.TaskName(), "models"},
		{k.TaskName(), DefaultTask},
	} {
		if c.got != c.want {
			t.Errorf("key %q, want %q", c.got, c.want)
		}
	}
	if tag, ok := named.HashTag(); !ok || tag != "fanout" {
		t.Errorf("a named task's keys lost the hash tag: %q %v", tag, ok)
	}
	for ch, want := range map[string]string{
		"{fanout}:generations":            DefaultTask,
		"{fanout}:t:models:generations":   "models",
		"{fanout}:tasks":                  "",
		"{fanout}:t:../x:generations":     "-",
		"{fanout}:t:models:master":        "-",
		"other:t:models:generations":      "-",
		"{fanout}:t:a:b:generations":      "-",
		"{fanout}:t:9lives:generations":   "-",
		"{fanout}:t:web.v2_x:generations": "web.v2_x",
		"{fanout}:wake:h1":                DefaultTask,
		"{fanout}:t:models:wake:h1":       "models",
		"{fanout}:wake:h2":                "-", // another host's
		"{fanout}:t:models:wake:h2":       "-",
	} {
		got, ok := k.channelTask(ch, "h1")
		if !ok {
			got = "-"
		}
		if got != want {
			t.Errorf("channel %s: task %q, want %q", ch, got, want)
		}
	}
	for _, bad := range []string{"", "9lives", ".hidden", "a/b", "a:b", "{x}", strings.Repeat("a", 65), "a b"} {
		if ValidTaskName("--name", bad) == nil {
			t.Errorf("task name %q accepted", bad)
		}
	}
	if err := ValidTaskName("--name", "web-config.v2"); err != nil {
		t.Error(err)
	}
	if got := globEscape(`a*b?[c]\`); got != `a\*b\?\[c\]\\` {
		t.Errorf("globEscape = %q", got)
	}
}

// TestNamedTaskIsolation: a named task's generation, queues and
// heartbeats are its own: publishing and finishing it leaves the plain
// task's keys alone, and a host counts for a task only once it beats in
// it.
func TestNamedTaskIsolation(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		plain := f.publish(1)
		named := f.c.ForTask("models")
		if err := named.AddTask(ctx); err != nil {
			t.Fatal(err)
		}
		g, err := named.Publish(ctx, Generation{Path: "/data/models", Digest: strings.Repeat("e", 64), Origin: "master", OriginAddr: "10.0.0.1:7070"}, 1)
		if err != nil {
			t.Fatal(err)
		}
		if g.ID != 1 || plain.ID != 1 {
			t.Fatalf("ids %d and %d: each task counts its own", plain.ID, g.ID)
		}
		if _, err := named.Heartbeat(ctx, Host{ID: "a", Addr: "10.0.0.2:7070", Role: "minion"}, Beat{}); err != nil {
			t.Fatal(err)
		}
		n, err := named.Count(ctx, nil)
		if err != nil || n.Alive != 1 {
			t.Fatalf("named task counts %+v, %v", n, err)
		}
		if n, err := f.c.Count(ctx, nil); err != nil || n.Alive != 0 {
			t.Fatalf("the plain task counts a host that beats only in a named task: %+v, %v", n, err)
		}
		cl, err := named.Claim(ctx, "a", g.Ref(), ClaimOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := named.Finish(ctx, cl, 1); err != nil {
			t.Fatal(err)
		}
		if got := f.members(named.Keys().Finished()); !slices.Equal(got, []string{"a"}) {
			t.Fatalf("named finished_queue %v", got)
		}
		if got := f.members(f.c.Keys().Finished()); len(got) != 0 {
			t.Fatalf("plain finished_queue %v after a named task's finish", got)
		}
		if cur, err := f.c.Current(ctx); err != nil || cur.Ref() != plain.Ref() {
			t.Fatalf("plain generation %+v, %v", cur, err)
		}
		st, err := named.Status(ctx)
		if err != nil || st.Name != "models" || !slices.Equal(st.Finished, []string{"a"}) {
			t.Fatalf("named status %+v, %v", st, err)
		}
	})
}

// TestRetireAndTaskList: retire takes a task off the list, deletes its
// task key and free slots, fails its running generation and keeps its
// history; a retired task cannot be published (a master that was
// building it publishes nothing) until it is added again; the list
// refuses a name past MaxTasks; the plain task cannot be retired.
func TestRetireAndTaskList(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		named := f.c.ForTask("site")
		k := named.Keys()
		if err := named.AddTask(ctx); err != nil {
			t.Fatal(err)
		}
		if err := named.SetTask(ctx, "/srv/site", TaskOptions{}); err != nil {
			t.Fatal(err)
		}
		g, err := named.Publish(ctx, Generation{Path: "/srv/site", Digest: strings.Repeat("f", 64), Origin: "master", OriginAddr: "10.0.0.1:7070"}, 1)
		if err != nil {
			t.Fatal(err)
		}
		if names, err := f.c.TaskNames(ctx); err != nil || !slices.Equal(names, []string{"site"}) {
			t.Fatalf("task list %v, %v", names, err)
		}
		if err := named.Retire(ctx, "moved to the CDN"); err != nil {
			t.Fatal(err)
		}
		if names, _ := f.c.TaskNames(ctx); len(names) != 0 {
			t.Fatalf("task list after retire: %v", names)
		}
		if n := f.rdb.Exists(ctx, k.Task(), k.Sync(), k.SyncFull()).Val(); n != 0 {
			t.Fatalf("%d of the task key and free slot sets left after retire", n)
		}
		cur, err := named.Current(ctx)
		if err != nil || cur.ID != g.ID || cur.State != StateFailed || !strings.Contains(cur.Error, "moved to the CDN") {
			t.Fatalf("generation after retire: %+v, %v", cur, err)
		}
		if err := named.Retire(ctx, "again"); !errors.Is(err, ErrNoTask) {
			t.Fatalf("retire of a retired task: %v", err)
		}
		if _, err := named.Publish(ctx, Generation{Path: "/srv/site", Digest: strings.Repeat("f", 64), Origin: "master"}, 1); !errors.Is(err, ErrNoTask) {
			t.Fatalf("publish of a retired task: %v", err)
		}
		if err := named.AddTask(ctx); err != nil {
			t.Fatal(err)
		}
		g2, err := named.Publish(ctx, Generation{Path: "/srv/site", Digest: strings.Repeat("f", 64), Origin: "master"}, 1)
		if err != nil || g2.ID <= g.ID {
			t.Fatalf("publish after adding it again: %+v, %v", g2, err)
		}
		if err := f.c.Retire(ctx, "no"); err == nil {
			t.Fatal("the plain task was retired")
		}
		for i := range MaxTasks - 1 {
			if err := f.c.ForTask(fmt.Sprintf("t%02d", i)).AddTask(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if err := f.c.ForTask("one-too-many").AddTask(ctx); !errors.Is(err, ErrTooManyTasks) {
			t.Fatalf("task %d: %v", MaxTasks+1, err)
		}
		if err := named.AddTask(ctx); err != nil {
			t.Fatalf("adding a listed task again with the list full: %v", err)
		}
	})
}
