package coord

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// A generation's announcement (once the origin's slots are offered) wakes
// minions, a wake message wakes the host it names (and each tells which
// channel it came on), a finish wakes the master, and on a
// real redis-server (miniredis has no keyspace events) SET task wakes the
// master through a keyspace notification once they are on.
func TestNotifications(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		k := f.c.Keys()
		gens, err := f.c.Subscribe(ctx, k.GenerationsChannel(), k.WakeChannel("a"))
		if err != nil {
			t.Fatal(err)
		}
		defer gens.Close()
		master, err := f.c.Subscribe(ctx, k.MasterChannel(), f.c.TaskKeyspaceChannel())
		if err != nil {
			t.Fatal(err)
		}
		defer master.Close()
		woken := func(n *Notifications, what string) {
			t.Helper()
			select {
			case <-n.C:
			case <-ctx.Done():
				t.Fatalf("not woken by %s", what)
			}
		}
		came := func(n *Notifications, want ...string) {
			t.Helper()
			got, known := n.Came()
			slices.Sort(got)
			slices.Sort(want)
			if !known || !slices.Equal(got, want) {
				t.Fatalf("messages came on %v (known %v), want %v", got, known, want)
			}
		}
		g := f.publish(1)
		if err := f.c.Announce(ctx, "master", g.Ref(), 1); err != nil {
			t.Fatal(err)
		}
		woken(gens, "an announced generation")
		came(gens, k.GenerationsChannel())
		came(gens) // taken
		// The announcement carries the generation as Redis holds it.
		msg, ok := gens.Last(k.GenerationsChannel())
		if !ok {
			t.Fatal("no last message on the generations channel")
		}
		cur, err := f.c.Current(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ag, ok := f.c.Announced(msg); !ok || !reflect.DeepEqual(ag, cur) {
			t.Fatalf("announcement %q carried %+v (%v), want the generation %+v", msg, ag, ok, cur)
		}
		// A wake (a slot handed to a) tells its channel alone.
		if err := f.rdb.Publish(ctx, k.WakeChannel("a"), "slot").Err(); err != nil {
			t.Fatal(err)
		}
		woken(gens, "a wake")
		came(gens, k.WakeChannel("a"))
		cl, err := f.c.Claim(ctx, "a", g.Ref(), ClaimOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := f.c.Finish(ctx, cl, 1); err != nil {
			t.Fatal(err)
		}
		woken(master, "a finish")
		err = f.c.EnableKeyspaceEvents(ctx)
		if f.srv.Mini != nil {
			if !errors.Is(err, ErrNoKeyspaceEvents) {
				t.Fatalf("miniredis keyspace events: %v", err)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := f.c.SetTask(ctx, "/data/next", TaskOptions{}); err != nil {
			t.Fatal(err)
		}
		woken(master, "SET task")
	})
}

// Only an announcement with the generation's fields, naming the same id
// and digest, and whose fields parse, stands for a generation read: any
// other message of the generations channel is read from Redis.
func TestAnnouncedRefuses(t *testing.T) {
	c := New(redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}), Config{})
	d := strings.Repeat("d", 64)
	fields := `{"id":"7","digest":"` + d + `","state":"running","path":"/data/m42","proto":"7"}`
	if g, ok := c.Announced("gen 7 " + d + " " + fields); !ok || g.ID != 7 || g.Path != "/data/m42" || g.Digest != d {
		t.Fatalf("a whole announcement: %+v, %v", g, ok)
	}
	for _, msg := range []string{
		"gen 7 " + d, // a master from before the fields, a cancel, a rollback's wake
		"switch 7 " + d,
		"gen 8 " + d + " " + fields, // names another generation than its fields
		"gen 7 " + d + " " + `{"id":"7","digest":"` + d + `","state":"bogus"}`,
		"gen 7 " + d + " {not json",
		"gen 7 " + d + " " + `{"id":"7","digest":"` + d + `","state":"running","path":"/data/` + "\xff" + `","proto":"7"}`, // not UTF-8: JSON would change the path
		"",
	} {
		if g, ok := c.Announced(msg); ok {
			t.Errorf("Announced(%.60q) = %+v: want it refused", msg, g)
		}
	}
}
