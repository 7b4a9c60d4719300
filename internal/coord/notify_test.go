package coord

import (
	"context"
	"errors"
	"testing"
	"time"
)

// A generation's announcement (once the origin's slots are offered) wakes
// minions, a finish wakes the master, and on a
// real redis-server (miniredis has no keyspace events) SET task wakes the
// master through a keyspace notification once they are on.
func TestNotifications(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		k := f.c.Keys()
		gens, err := f.c.Subscribe(ctx, k.GenerationsChannel())
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
		g := f.publish(1)
		if err := f.c.Announce(ctx, "master", g.Ref(), 1); err != nil {
			t.Fatal(err)
		}
		woken(gens, "an announced generation")
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
