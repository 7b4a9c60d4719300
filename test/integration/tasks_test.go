package integration

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/lab"
	"github.com/fanout/fanout/internal/peer"
	"github.com/fanout/fanout/internal/redistest"
)

// TestNamedTasks: three named tasks beside the plain one, one of them for
// a host group, run at once; each completes with its own hosts (the
// grouped one without the others), every copy identical. A host that
// joins later receives all of them. A task set with redis-cli alone is
// found and reaches every host. A task whose path overlaps another's
// is refused, naming it. A retired task stops: its hosts keep its tree,
// the peer servers stop serving it, a new task key for it publishes
// nothing, and status and the task list no longer name it.
func TestNamedTasks(t *testing.T) {
	for _, srv := range redistest.Servers(t) {
		t.Run(srv.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			l, plainSrc := startTree(ctx, t, lab.Config{Minions: 3, RedisURL: srv.URL, Prefix: "{fanout}:"})
			web := l.Minions[0]
			must(t, web.Stop())
			web.Groups = []string{"web"}
			must(t, l.StartMinion(ctx, web))

			trees := map[string]string{"models": "/data/models/big", "config": "/etc/app", "site": "/srv/site"}
			for name, p := range trees {
				src := filepath.Join(l.Master.Root, p)
				mustMkdir(t, src)
				if err := lab.SampleTree(src, 256<<10, 12); err != nil {
					t.Fatal(err)
				}
				writeFile(t, filepath.Join(src, "NAME"), name)
			}
			must(t, l.Set(ctx, task))
			must(t, l.Publish(ctx, "models", trees["models"], coord.TaskOptions{}))
			must(t, l.Publish(ctx, "config", trees["config"], coord.TaskOptions{Delete: true}))
			must(t, l.Publish(ctx, "site", trees["site"], coord.TaskOptions{Groups: []string{"web"}}))

			names, err := l.Coord.TaskNames(ctx)
			must(t, err)
			if !slices.Equal(names, []string{"config", "models", "site"}) {
				t.Fatalf("task list %v", names)
			}
			gens := map[string]int64{}
			for _, name := range []string{coord.DefaultTask, "models", "config", "site"} {
				st, err := l.WaitTask(ctx, name, 0, nil)
				if err != nil {
					t.Fatal(err)
				}
				if st.Name != name {
					t.Fatalf("status of %s names %q", name, st.Name)
				}
				gens[name] = st.Generation.ID
				want := []string{}
				for _, h := range l.Minions {
					if name != "site" || h == web {
						want = append(want, h.ID)
					}
				}
				if !slices.Equal(st.Expected, want) || !slices.Equal(st.Finished, want) {
					t.Fatalf("task %s: expected %v, finished %v; want %v", name, st.Expected, st.Finished, want)
				}
			}
			check := func(h *lab.Host) {
				t.Helper()
				if err := lab.Compare(plainSrc, filepath.Join(h.Root, task)); err != nil {
					t.Fatalf("%s, plain task: %v", h.ID, err)
				}
				for name, p := range trees {
					dst := filepath.Join(h.Root, p)
					if name == "site" && !slices.Contains(h.Groups, "web") {
						if _, err := os.Lstat(dst); err == nil {
							t.Fatalf("%s, not in group web, received task site", h.ID)
						}
						continue
					}
					if err := lab.Compare(filepath.Join(l.Master.Root, p), dst); err != nil {
						t.Fatalf("%s, task %s: %v", h.ID, name, err)
					}
				}
			}
			for _, h := range l.Minions {
				check(h)
			}

			// A host that joins later, in group web, receives all four.
			late := l.NewHost()
			late.Groups = []string{"web"}
			must(t, l.StartMinion(ctx, late))
			for _, name := range []string{coord.DefaultTask, "models", "config", "site"} {
				waitFor(ctx, t, late.ID+" holds task "+name, func() bool {
					st, err := l.Coord.ForTask(name).Status(ctx)
					return err == nil && slices.Contains(st.Finished, late.ID)
				})
			}
			check(late)

			// A task set with redis-cli alone (SADD tasks NAME, SET
			// t:NAME:task PATH: no message on the tasks channel) is found
			// by the master's read of the list, and the minions start it
			// when its first generation is announced.
			docs := filepath.Join(l.Master.Root, "/srv/docs")
			mustMkdir(t, docs)
			if err := lab.SampleTree(docs, 64<<10, 5); err != nil {
				t.Fatal(err)
			}
			must(t, l.Redis.SAdd(ctx, l.Coord.Keys().Tasks(), "docs").Err())
			must(t, l.Redis.Set(ctx, l.Coord.ForTask("docs").Keys().Task(), "/srv/docs", 0).Err())
			all := append([]*lab.Host{late}, l.Minions...)
			waitFor(ctx, t, "every host holds task docs, set with redis-cli", func() bool {
				st, err := l.Coord.ForTask("docs").Status(ctx)
				if err != nil {
					return false
				}
				for _, h := range all {
					if !slices.Contains(st.Finished, h.ID) {
						return false
					}
				}
				return true
			})
			for _, h := range all {
				if err := lab.Compare(docs, filepath.Join(h.Root, "/srv/docs")); err != nil {
					t.Fatalf("%s, task docs: %v", h.ID, err)
				}
			}

			// Overlap: a task writing into another task's tree is refused.
			src := filepath.Join(l.Master.Root, "/data/models/big/sub")
			mustMkdir(t, src)
			writeFile(t, filepath.Join(src, "x"), "x")
			must(t, l.Publish(ctx, "clash", "/data/models/big/sub", coord.TaskOptions{}))
			st, err := l.WaitTask(ctx, "clash", 0, nil)
			if err == nil || !strings.Contains(st.Generation.Error, "overlaps task models") {
				t.Fatalf("overlapping task: err %v, generation error %q", err, st.Generation.Error)
			}

			// Retire models: hosts keep its tree and stop serving it.
			must(t, l.Coord.ForTask("models").Retire(ctx, "test"))
			if err := l.Coord.ForTask("models").Retire(ctx, "again"); !errors.Is(err, coord.ErrNoTask) {
				t.Fatalf("retiring twice: %v", err)
			}
			client := peer.NewClient(peer.ClientConfig{Secrets: [][]byte{l.Secret()}}).ForTask("models")
			waitFor(ctx, t, "no host serves retired task models", func() bool {
				for _, h := range append([]*lab.Host{l.Master, late}, l.Minions...) {
					if _, err := client.Manifest(ctx, h.Addr, gens["models"]); err == nil {
						return false
					}
				}
				return true
			})
			writeFile(t, filepath.Join(l.Master.Root, trees["models"], "NAME"), "changed after retire")
			must(t, l.Redis.Set(ctx, l.Coord.ForTask("models").Keys().Task(), trees["models"], 0).Err())
			time.Sleep(time.Second)
			g, err := l.Coord.ForTask("models").Current(ctx)
			must(t, err)
			if g.ID != gens["models"] || g.State != coord.StateDone {
				t.Fatalf("retired task was published again: generation %+v", g)
			}
			for _, h := range append([]*lab.Host{late}, l.Minions...) {
				b, err := os.ReadFile(filepath.Join(h.Root, trees["models"], "NAME"))
				if err != nil || string(b) != "models" {
					t.Fatalf("%s: retired task's tree: %q, %v", h.ID, b, err)
				}
			}
			if names, _ := l.Coord.TaskNames(ctx); slices.Contains(names, "models") {
				t.Fatalf("task list after retire: %v", names)
			}
			// The others go on: a change of config reaches every host.
			writeFile(t, filepath.Join(l.Master.Root, trees["config"], "NAME"), "config v2")
			must(t, l.Publish(ctx, "config", trees["config"], coord.TaskOptions{Delete: true}))
			if _, err := l.WaitTask(ctx, "config", gens["config"], nil); err != nil {
				t.Fatal(err)
			}
			for _, h := range append([]*lab.Host{late}, l.Minions...) {
				if err := lab.Compare(filepath.Join(l.Master.Root, trees["config"]), filepath.Join(h.Root, trees["config"])); err != nil {
					t.Fatalf("%s, config v2: %v", h.ID, err)
				}
			}
		})
	}
}
