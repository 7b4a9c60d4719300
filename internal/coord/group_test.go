package coord

import (
	"context"
	"testing"
	"time"
)

func TestValidGroupsAndInGroups(t *testing.T) {
	for _, gs := range [][]string{nil, {"web"}, {"web", "eu-batch", "rack.7"}} {
		if err := ValidGroups("--group", gs); err != nil {
			t.Errorf("ValidGroups(%q) = %v", gs, err)
		}
	}
	for _, gs := range [][]string{{""}, {"a,b"}, {"-web"}, {"web", "web"}, make([]string, MaxGroups+1)} {
		if err := ValidGroups("--group", gs); err == nil {
			t.Errorf("ValidGroups(%q) = nil, want an error", gs)
		}
	}
	for _, tt := range []struct {
		hosts, want []string
		in          bool
	}{
		{nil, nil, true}, {[]string{"web"}, nil, true}, {nil, []string{"web"}, false},
		{[]string{"db", "web"}, []string{"web"}, true}, {[]string{"db"}, []string{"web", "cache"}, false},
	} {
		if got := InGroups(tt.hosts, tt.want); got != tt.in {
			t.Errorf("InGroups(%q, %q) = %v, want %v", tt.hosts, tt.want, got, tt.in)
		}
	}
}

// A heartbeat scores its host in its groups' indexes too; Count of a
// generation's groups counts their alive hosts (the largest group), and
// Forget takes the host out of them.
func TestGroupHeartbeats(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		beat := func(id string, groups ...string) {
			t.Helper()
			if _, err := f.c.Heartbeat(ctx, Host{ID: id, Addr: "10.0.0.9:7070", Role: "minion", Groups: groups}, Beat{Register: true}); err != nil {
				t.Fatal(err)
			}
		}
		beat("a", "web")
		beat("b", "web", "db")
		beat("c")
		for _, tt := range []struct {
			groups []string
			alive  int64
		}{{nil, 3}, {[]string{"web"}, 2}, {[]string{"db"}, 1}, {[]string{"db", "web"}, 2}, {[]string{"none"}, 0}} {
			n, err := f.c.Count(ctx, tt.groups)
			if err != nil || n.Alive != tt.alive {
				t.Errorf("Count(%q): alive %d, %v; want %d", tt.groups, n.Alive, err, tt.alive)
			}
		}
		if err := f.c.Forget(ctx, "b"); err != nil {
			t.Fatal(err)
		}
		if n, err := f.rdb.ZCard(ctx, f.c.Keys().GroupHeartbeats("db")).Result(); err != nil || n != 0 {
			t.Errorf("after forgetting b, its group db still scores %d hosts, %v", n, err)
		}
	})
}
