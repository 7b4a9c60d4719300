package coord

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fanout/fanout/internal/redistest"
)

// BenchmarkChain measures what the scripts of one host's pull cost Redis,
// on a real redis-server with a fleet of 1,000 and of 10,000 registered
// hosts: each host in turn makes the first claim a pipelining minion
// makes (it takes the end of the chain, offers its own slot and its
// rescue slot, and makes its rescue claim in the same call), and then
// each finishes, releasing its rescue claim in the same call, in the
// order of the chain. Redis's own time in the scripts (INFO commandstats:
// EVALSHA's time includes the commands its script ran) and the commands
// the scripts ran are reported per host; one client makes the calls one
// after another, so the figures are the scripts' cost, not a queue's.
// A script call's cost must not grow with the fleet: compare the two
// sizes. The commands are exact; Redis's time moves by a third between
// runs on a shared machine, so compare it only across many runs.
//
//	go test ./internal/coord -run '^$' -bench Chain -benchtime 1x
func BenchmarkChain(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) { benchChain(b, n) })
	}
}

func benchChain(b *testing.B, n int) {
	run := chainRunner(b, n)
	var usec, cmds int64
	b.ResetTimer()
	for range b.N {
		u, c := run()
		usec += u
		cmds += c
	}
	b.ReportMetric(float64(usec)/float64(b.N*n), "redis-µs/host")
	b.ReportMetric(float64(cmds)/float64(b.N*n), "script-cmds/host")
}

// chainRunner starts a real redis-server with n registered hosts and
// returns a function that runs one generation's chain over them (see
// BenchmarkChain) and returns Redis's time in the scripts (µs) and the
// commands they ran.
func chainRunner(b testing.TB, n int) func() (usec, cmds int64) {
	srv := redistest.NeedReal(b)
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	b.Cleanup(func() { rdb.Close() })
	c := New(rdb, Config{Prefix: "{fanout}:", LeaseTTL: time.Minute, HostGrace: time.Hour})
	hosts := make([]string, n)
	for i := range hosts {
		hosts[i] = fmt.Sprintf("h%05d", i)
		if _, err := c.Heartbeat(ctx, Host{ID: hosts[i], Addr: hosts[i] + ":7070", Version: "bench", Role: "minion", Uploads: 1}, Beat{Register: true, Uploads: 1}); err != nil {
			b.Fatal(err)
		}
	}
	// Loaded first, so no call falls back to EVAL (which the figures
	// leave out).
	for _, s := range []*script{claimScript, finishScript} {
		if err := s.lua.Load(ctx, rdb).Err(); err != nil {
			b.Fatal(err)
		}
	}
	return func() (usec, cmds int64) {
		g, err := c.Publish(ctx, Generation{Path: "/data/m42", Digest: strings.Repeat("d", 64), Origin: "master", OriginAddr: "10.0.0.1:7070", Files: 3, Bytes: 300}, 1)
		if err != nil {
			b.Fatal(err)
		}
		if err := c.OfferOrigin(ctx, "master", g.Ref(), 1); err != nil {
			b.Fatal(err)
		}
		u0, c0 := scriptStats(ctx, b, rdb)
		claims := make([]Claim, n)
		for i, h := range hosts {
			cl, err := c.Claim(ctx, h, g.Ref(), ClaimOptions{Serves: true, Slots: 1, Queue: true, Lookup: true, RescueIndex: 1, Offer: 1, OfferRescue: true})
			if err != nil {
				b.Fatalf("claim of %s: %v", h, err)
			}
			want := "master#0"
			if i > 0 {
				want = hosts[i-1] + "#0"
			}
			if cl.Slot != want {
				b.Fatalf("%s claimed %s, not the end of the chain (%s)", h, cl.Slot, want)
			}
			claims[i] = cl
		}
		for i, cl := range claims {
			var others []Claim
			if cl.Rescue != nil {
				others = append(others, *cl.Rescue)
			}
			if err := c.Finish(ctx, cl, 1, others...); err != nil {
				b.Fatalf("finish of %s: %v", hosts[i], err)
			}
		}
		u1, c1 := scriptStats(ctx, b, rdb)
		return u1 - u0, c1 - c0
	}
}

// scriptStats reads, from INFO commandstats, Redis's time in EVALSHA (in
// µs, the commands its scripts ran included) and how many commands the
// scripts ran (every command's calls but EVALSHA's and INFO's: nothing
// else runs during the benchmark).
func scriptStats(ctx context.Context, b testing.TB, rdb *redis.Client) (usec, cmds int64) {
	info, err := rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		var calls, us int64
		for _, f := range strings.Split(rest, ",") {
			k, v, _ := strings.Cut(f, "=")
			switch k {
			case "calls":
				calls, _ = strconv.ParseInt(v, 10, 64)
			case "usec":
				us, _ = strconv.ParseInt(v, 10, 64)
			}
		}
		switch name {
		case "cmdstat_evalsha":
			usec = us
		case "cmdstat_info", "cmdstat_script", "cmdstat_eval":
		default:
			cmds += calls
		}
	}
	return usec, cmds
}
