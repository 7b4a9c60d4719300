package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/lab"
	"github.com/fanout/fanout/internal/manifest"
	"github.com/fanout/fanout/internal/peer"
	"github.com/redis/go-redis/v9"
)

// TestMixedFleetManifestFormat: while a minion of protocol 1 (which
// decodes manifests strictly and would refuse owner fields) is registered
// and alive, the master publishes format 1; once none is left, format 3,
// with owners and chunks.
func TestMixedFleetManifestFormat(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// An old minion registers as protocol 1 did (no "proto" field), and
	// before the master starts: the master reads the registry's protocols
	// as it starts and trusts that census for a while (a host of an older
	// protocol registered since is caught at a later census, see
	// master.format), so registered after, the old host raced the
	// master's first census and lost it once in CI.
	mr := miniredis.RunT(t)
	mr.ClockTTL(true)
	k := coord.Keys{}
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	if err := rdb.HSet(ctx, k.Hosts(), "old", `{"addr":"127.0.0.1:1","version":"v1","role":"minion"}`).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.ZAdd(ctx, k.Heartbeats(), redisZ(time.Now())).Err(); err != nil {
		t.Fatal(err)
	}
	l, err := lab.Start(ctx, lab.Config{Dir: t.TempDir(), Minions: 1, RedisURL: "redis://" + mr.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Stop()
	src := filepath.Join(l.Master.Root, task)
	mustMkdir(t, src)
	if err := lab.SampleTree(src, 1<<10, 3); err != nil {
		t.Fatal(err)
	}
	oldAlive := true
	beat := func() {
		if oldAlive {
			l.Redis.ZAdd(ctx, k.Heartbeats(), redisZ(time.Now()))
		}
	}
	beat()
	served := func(after int64) (int64, []byte) {
		t.Helper()
		var gen int64
		waitFor(ctx, t, "a generation", func() bool {
			beat()
			g, _ := l.Coord.Current(ctx)
			gen = g.ID
			return g.ID > after
		})
		// The generation key is written before the master serves it (its
		// slots, which minions claim, are offered after): ask until it does.
		c := peer.NewClient(peer.ClientConfig{Secrets: [][]byte{l.Secret()}})
		defer c.CloseIdleConnections()
		var enc []byte
		waitFor(ctx, t, "the master serving the generation", func() bool {
			var err error
			enc, err = c.Manifest(ctx, l.Master.Addr, gen)
			if err != nil && !errors.Is(err, peer.ErrStale) {
				t.Fatal(err)
			}
			return err == nil
		})
		return gen, enc
	}
	if err := l.Set(ctx, task); err != nil {
		t.Fatal(err)
	}
	gen, enc := served(0)
	if bytes.Contains(enc, []byte(`"uid"`)) {
		t.Fatal("format 2 (owners) published with a protocol-1 minion alive")
	}
	// An old minion's decoder: strict, without owner fields.
	var old struct {
		Entries []struct {
			Path   string      `json:"path"`
			Type   string      `json:"type"`
			Mode   json.Number `json:"mode"`
			Size   int64       `json:"size"`
			MTime  int64       `json:"mtime"`
			Hash   string      `json:"hash"`
			Target string      `json:"target"`
		} `json:"entries"`
	}
	dec := json.NewDecoder(bytes.NewReader(enc))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&old); err != nil {
		t.Fatalf("an old minion cannot decode the manifest: %v", err)
	}
	if _, err := l.WaitGeneration(ctx, gen-1, nil); err != nil {
		t.Fatal(err)
	}
	// The old minion is upgraded (gone from the registry): the next
	// generation carries owners.
	oldAlive = false
	l.Redis.HDel(ctx, k.Hosts(), "old")
	l.Redis.ZRem(ctx, k.Heartbeats(), "old")
	if err := l.Set(ctx, task); err != nil {
		t.Fatal(err)
	}
	_, enc = served(gen)
	m, err := manifest.Decode(enc, manifest.DefaultLimits())
	if err != nil || m.Format() != manifest.Format3 {
		t.Fatalf("with every host on protocol 3: format %v, %v", m.Format(), err)
	}
}

func redisZ(at time.Time) redis.Z { return redis.Z{Score: float64(at.UnixMilli()), Member: "old"} }
