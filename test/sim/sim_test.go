package main

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/minion"
	"github.com/fanout/fanout/internal/testtool"
)

// The simulator itself, small enough for make test: 200 minions and a
// master run the real protocol against a real redis-server; the
// generation must be done with every host finished, each host's model
// must have delivered S bytes, nothing may be lost or logged, and the
// table must report it. Skipped without redis-server (failed under
// FANOUT_REQUIRE_REDIS=1) and under -short.
func TestSimulateSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("simulates 200 hosts for about half a minute; make test runs it")
	}
	testtool.Need(t, "redis-server")
	cfg, err := parseFlags([]string{"-hosts", "200", "-sb", "2s", "-heartbeat", "2s",
		"-idle-window", "4s", "-settle", "1s", "-timeout", "3m", "-dir", t.TempDir()}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var progress strings.Builder
	r, err := simulate(ctx, cfg, 200, &progress)
	if err != nil {
		t.Fatalf("simulate: %v\nprogress:\n%s\nlogged: %v", err, progress.String(), r.Warnings)
	}
	if r.Finished != 200 || r.Short != 0 || r.NotDone {
		t.Fatalf("%d hosts finished, %d short of S, not done %v", r.Finished, r.Short, r.NotDone)
	}
	// Nobody receives S faster than S/B.
	if r.Completion < cfg.SB || r.Published <= 0 || r.Published > r.FirstClaim || r.FirstClaim > r.Completion {
		t.Fatalf("SET → published %s, → first claim %s, → done %s: want 0 < published ≤ first claim ≤ done and done ≥ S/B %s", r.Published, r.FirstClaim, r.Completion, cfg.SB)
	}
	if r.Events["finish"] != 200 || r.Events["claim"] < 200 || r.Events["lease_expired"] != 0 {
		t.Fatalf("events %v: want 200 finishes, a claim a host at least, no lease expired", r.Events)
	}
	for _, script := range []string{"evalsha claim", "evalsha finish", "evalsha offer"} {
		if r.Requests[script] == 0 {
			t.Fatalf("no %s among the requests of the task: %v", script, r.Requests)
		}
	}
	// Between registrations hosts beat light: a pipeline, no script.
	if r.Requests["pipeline hexists+zadd+hmget"] == 0 {
		t.Fatalf("no light heartbeat among the requests of the task: %v", r.Requests)
	}
	if r.Requests["evalsha finish"] < 200 || r.Executed["evalsha"] < r.Requests["evalsha finish"] {
		t.Fatalf("%d finish scripts sent, %d EVALSHA executed: want 200 or more of each", r.Requests["evalsha finish"], r.Executed["evalsha"])
	}
	// What scripts a host calls anyway carry costs no request of its
	// own: the lookup count (the first claim), the swarm's first outlook
	// (the claim's reply), the final progress and the generation read
	// after a pull (the finish); and a slot handed to a waiting host
	// (its wake channel) says nothing new of the generation; nor does
	// the announcement of one, which carries it (a host read it as it
	// learned of it: about 1 a host, 3 before the finish answered with
	// it). A host writes its progress once when its pull starts (2; with its
	// heartbeat, in one round trip), and asks for an
	// outlook only after its first second of pulling (1).
	perHost := func(req string) float64 { return float64(r.Requests[req]) / 200 }
	if n := r.Requests["incr"]; n != 0 {
		t.Errorf("%d INCR sent: the claim counts the lookup", n)
	}
	if g, p, o := perHost("hgetall"), perHost("hset")+perHost("pipeline hset+zadd"), perHost("pipeline scard+zcount"); g > 0.5 || p > 1.5 || o > 0.5 {
		t.Errorf("per host: %.2f generation reads (want at most 0.5), %.2f progress writes (1.5), %.2f outlooks (0.5)", g, p, o)
	}
	// A pull's rescue claim rides on its first claim: rescue slots are
	// claimed, but few rescue claims go alone (a retry at a rebalance).
	made, alone := r.Events[rescueClaims], r.Requests["evalsha claim rescue"]
	t.Logf("rescue slots claimed %d, rescue claims sent alone %d", made, alone)
	if made < 50 || float64(alone) > 0.5*float64(made) {
		t.Errorf("%d rescue slots claimed (want 50 or more), %d rescue claims sent alone (want at most half as many)", made, alone)
	}
	if r.CPU <= 0 {
		t.Fatalf("redis-server used no CPU for the task: %s", r.CPU)
	}
	if len(r.Warnings) > 0 {
		t.Fatalf("the simulated daemons logged: %v", r.Warnings)
	}
	beats := r.IdleReqs["evalsha heartbeat"]
	for name, n := range r.IdleReqs {
		if strings.HasPrefix(name, "pipeline hexists+zadd+hmget") { // +sismember: a host that holds the generation
			beats += n
		}
	}
	if r.IdleWindow < cfg.IdleWindow || beats == 0 {
		t.Fatalf("idle window %s, requests %v: want the hosts' heartbeats", r.IdleWindow, r.IdleReqs)
	}
	text := table(cfg, []result{r}, time.Minute)
	if !strings.Contains(text, "\n| 200 | ") || !strings.Contains(text, "leases expired") {
		t.Fatalf("table has no row for N=200:\n%s", text)
	}
}

// Bad flags are refused with a message naming the flag.
func TestParseFlags(t *testing.T) {
	for _, tc := range []struct{ args, want string }{
		{"-hosts 10,x", "-hosts"},
		{"-hosts 0", "-hosts"},
		{"-sb 0s", "-sb"},
		{"-size -1", "-size"},
		{"-chunk 0", "-chunk"},
		{"-clients 0", "-clients"},
		{"-max-uploads 0", "-max-uploads"},
		{"extra", "unexpected arguments"},
	} {
		_, err := parseFlags(strings.Fields(tc.args), io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseFlags(%q) = %v, want an error naming %s", tc.args, err, tc.want)
		}
	}
	cfg, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Hosts) != 3 || cfg.Hosts[1] != 10000 || cfg.Spread != cfg.Heartbeat || cfg.Settle != 2*cfg.Heartbeat || cfg.Chunk != minion.RelayHoldBack {
		t.Fatalf("defaults: %+v", cfg)
	}
}

// With -task=false a row shows the fleet idle and no task figure.
func TestTableIdleOnly(t *testing.T) {
	cfg, err := parseFlags([]string{"-hosts", "10", "-task=false"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	r := result{N: 10, SB: cfg.SB, IdleWindow: 10 * time.Second, IdleCPU: time.Second,
		IdleReqs: map[string]int64{"evalsha heartbeat": 10}}
	text := table(cfg, []result{r}, time.Minute)
	if !strings.Contains(text, "| 10 | no task | – | – | – | – | – | – | – | 10.0% of a core | 0.100 |") {
		t.Fatalf("idle-only row:\n%s", text)
	}
}

// The quantiles of script times come from the slow log's entries over the
// count of all calls: known when enough calls were logged, below the
// threshold otherwise.
func TestScriptQuantile(t *testing.T) {
	l := newSlowLog()
	for i := 1; i <= 20; i++ { // 20 calls logged, 100 µs to 2 ms
		l.scripts = append(l.scripts, time.Duration(i)*100*time.Microsecond)
	}
	if d, ok := l.scriptQuantile(0.99, 1000); !ok || d != 1100*time.Microsecond {
		t.Errorf("p99 of 1,000 calls = %v, %v; want the 10th slowest, 1.1 ms", d, ok)
	}
	if d, ok := l.scriptQuantile(0.999, 1000); !ok || d != 2*time.Millisecond {
		t.Errorf("p99.9 of 1,000 calls = %v, %v; want the slowest, 2 ms", d, ok)
	}
	if _, ok := l.scriptQuantile(0.99, 10000); ok {
		t.Error("p99 of 10,000 calls known from 20 logged ones; want below the threshold")
	}
}
