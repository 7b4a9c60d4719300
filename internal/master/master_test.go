package master

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/sirupsen/logrus"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/peer"
)

// announcedAt records, for each generation announced (the origin's slots
// offered, the last step of a publish), whether the hash cache file
// existed then.
type announcedAt struct {
	*coord.Client
	cache   string
	existed []bool
}

func (c *announcedAt) Announce(ctx context.Context, origin string, r coord.Ref, uploads int) error {
	_, err := os.Stat(c.cache)
	c.existed = append(c.existed, err == nil)
	return c.Client.Announce(ctx, origin, r, uploads)
}

// TestHashCacheSavedOncePublished: the master saves its hash cache in its
// state directory when it publishes a task, and only once the generation
// is published, so the save (0.3-0.6 s for 100,000 files) is not between
// SET task and the hosts' first claim.
func TestHashCacheSavedOncePublished(t *testing.T) {
	ctx := context.Background()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { rdb.Close() })
	root, state := t.TempDir(), t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "t"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "t", "f"), []byte("content"), 0o644); err != nil {
		t.Fatal(err)
	}
	log := logrus.New()
	log.SetOutput(os.Stderr)
	log.SetLevel(logrus.WarnLevel)
	co := &announcedAt{Client: coord.New(rdb, coord.Config{}), cache: filepath.Join(state, cacheFile)}
	m, err := New(Config{ID: "master", Advertise: "127.0.0.1:1", Root: root, StateDir: state, Log: log}, co, peer.NewServer(peer.ServerConfig{Log: log}))
	if err != nil {
		t.Fatal(err)
	}
	if err := co.SetTask(ctx, "/t", coord.TaskOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := m.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	g, err := co.Current(ctx)
	if err != nil || g.ID == 0 || g.Path != "/t" {
		t.Fatalf("generation after the tick: %+v, %v; want /t published", g, err)
	}
	if len(co.existed) == 0 || co.existed[0] {
		t.Fatalf("generations announced with the cache file present: %v; want the first announced before the save", co.existed)
	}
	if fi, err := os.Stat(co.cache); err != nil || fi.Size() == 0 {
		t.Fatalf("hash cache after the publish: %v, %v; want it saved", fi, err)
	}
}
