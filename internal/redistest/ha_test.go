package redistest

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fanout/fanout/internal/redisurl"
)

// TestSentinel: the deployment starts whole, a client built from its URL
// writes through the primary, and after the primary is killed the
// sentinels promote the replica, which the same client then writes to.
func TestSentinel(t *testing.T) {
	s := NeedSentinel(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	target, err := redisurl.Parse(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	rdb := target.Client()
	defer rdb.Close()
	if err := rdb.Set(ctx, "k", "before", 0).Err(); err != nil {
		t.Fatal(err)
	}
	old := s.KillPrimary(t)
	now, err := s.WaitFailover(ctx, old)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("primary %s killed, %s promoted", old, now)
	if err := until(ctx, func() error { return rdb.Set(ctx, "k", "after", 0).Err() }); err != nil {
		t.Fatalf("no write through the promoted replica: %v", err)
	}
	if v := redis.NewClient(&redis.Options{Addr: now}).Get(ctx, "k").Val(); v != "after" {
		t.Errorf("the promoted replica holds %q", v)
	}
}

// TestCluster: three primaries with a replica each; a client built from
// the URL reaches keys of every slot, and when the primary of {fanout}'s
// slot is killed its replica takes the slot over.
func TestCluster(t *testing.T) {
	c := NeedCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	target, err := redisurl.Parse(c.URL)
	if err != nil {
		t.Fatal(err)
	}
	rdb := target.Client()
	defer rdb.Close()
	for _, k := range []string{"a", "b", "c", "{fanout}:task"} {
		if err := rdb.Set(ctx, k, "v", 0).Err(); err != nil {
			t.Fatalf("set %s: %v", k, err)
		}
	}
	old := c.KillSlotPrimary(t, "{fanout}")
	now, err := c.WaitFailover(ctx, "{fanout}", old)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("primary %s killed, %s took over", old, now)
	if err := until(ctx, func() error { return rdb.Set(ctx, "{fanout}:task", "after", 0).Err() }); err != nil {
		t.Fatalf("no write after the failover: %v", err)
	}
}

// until retries fn every 100 ms until it succeeds or ctx ends.
func until(ctx context.Context, fn func() error) error {
	for {
		err := fn()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}
