package integration

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/lab"
)

// TestSwarm: in a format 3 generation a puller takes chunks from several
// sources at once (each claimed with its own lease): hosts hold more than
// one claim during the pull, every copy is identical, and the extra claims
// are given back.
func TestSwarm(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l, err := lab.Start(ctx, lab.Config{Dir: t.TempDir(), Minions: 6, Uploads: 2, BWLimit: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Stop()
	src := filepath.Join(l.Master.Root, task)
	mustMkdir(t, src)
	r := rand.New(rand.NewPCG(3, 4))
	data := make([]byte, 24<<20)
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	if err := os.WriteFile(filepath.Join(src, "model.bin"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := l.Set(ctx, task); err != nil {
		t.Fatal(err)
	}
	st, err := l.WaitGeneration(ctx, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range l.Minions {
		if err := lab.Compare(src, filepath.Join(h.Root, task)); err != nil {
			t.Error(err)
		}
	}
	evs, err := l.Coord.Events(ctx, "0", 0)
	if err != nil {
		t.Fatal(err)
	}
	claims := map[string]map[string]bool{} // host → slots claimed
	released := 0
	for _, e := range evs {
		switch e.Type {
		case "claim":
			if claims[e.Host] == nil {
				claims[e.Host] = map[string]bool{}
			}
			claims[e.Host][e.Slot] = true
		case "release":
			released++
		}
	}
	several := 0
	for _, slots := range claims {
		if len(slots) > 1 {
			several++
		}
	}
	t.Logf("%d of %d hosts pulled from several sources; %d extra claims given back; generation %d done", several, len(claims), released, st.Generation.ID)
	if several == 0 {
		t.Errorf("no host pulled from more than one source: %v", claims)
	}
	if released == 0 {
		t.Error("no extra claim was given back")
	}
	if n, _ := l.Redis.HLen(ctx, l.Coord.Keys().Claims()).Result(); n != 0 {
		t.Errorf("%d claims left after the generation", n)
	}
}
