package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sirupsen/logrus"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/master"
	"github.com/fanout/fanout/internal/metrics"
	"github.com/fanout/fanout/internal/minion"
	"github.com/fanout/fanout/internal/peer"
)

// result is what one simulation of N hosts measured.
type result struct {
	N         int
	Register  time.Duration // the first host's start to every host registered
	Published time.Duration // SET task to the generation published (Redis time)
	// FirstClaim is SET task to the generation's first claim (Redis time,
	// the claim event's): the first byte moves a manifest request later.
	FirstClaim time.Duration
	Completion time.Duration // SET task to done_at (Redis time)
	SB         time.Duration
	CPU        time.Duration    // redis-server's CPU from SET to done
	Executed   map[string]int64 // INFO commandstats from SET to done
	// ExecUsec is the server's time in each command from SET to done, in
	// microseconds (INFO commandstats); a script's commands count in it
	// and in the EVALSHA that ran them.
	ExecUsec map[string]int64
	Requests map[string]int64 // requests the hosts and the master sent, SET to done
	Slow     []slowEntry      // the slow log from SET to done, slowest first
	// ScriptP99 and ScriptP999 are the 99th and 99.9th percentiles of
	// script call times (SLOWLOG over INFO commandstats' count); -1 when
	// below the slow log's threshold.
	ScriptP99, ScriptP999 time.Duration
	Events                map[string]int // events of the generation, by type
	Finished              int            // hosts in finished_queue at done
	Short                 int            // hosts whose model received less than S (none, in a sound run)
	NotDone               bool           // the generation was not done within -timeout: figures so far
	// Lag is how late a 100 ms timer of the simulator fired, at most and
	// on average, from SET to done: a starved simulator (a loaded
	// machine) runs every host late, and its figures with it.
	LagMax, LagMean time.Duration
	Load            string // /proc/loadavg at SET and at done
	IdleWindow      time.Duration
	IdleCPU         time.Duration
	IdleExec        map[string]int64
	IdleReqs        map[string]int64
	Warnings        []string
}

// rescueClaims counts, among a generation's events, the claims of a
// rescue slot (coord.RescueSlot), made alone or with a first claim.
const rescueClaims = "claim of a rescue slot"

// noise is the slowest call in the slow log that is not a script: a
// command of one key that took milliseconds waited for a core, so it
// shows how far the machine's scheduling stretched every figure of the
// slow log.
func (r result) noise() slowEntry {
	for _, e := range r.Slow {
		if !strings.HasSuffix(e.Name, " script") && e.Name != "eval" && e.Name != "evalsha" {
			return e
		}
	}
	return slowEntry{}
}

// Ratio is the completion time as a multiple of S/B.
func (r result) Ratio() float64 { return r.Completion.Seconds() / r.SB.Seconds() }

// slowest is the slowest script in the slow log (zero when none was
// slower than the threshold).
func (r result) slowest() slowEntry {
	for _, e := range r.Slow {
		if len(e.Name) > 7 && e.Name[len(e.Name)-7:] == " script" {
			return e
		}
	}
	return slowEntry{}
}

// taskPath is the task every simulation distributes: one small file in the
// master's root, walked and hashed by the real master. Its size does not
// matter: the model moves S bytes.
const taskPath = "/sim"

// simulate runs the master and n minions against a new redis-server,
// distributes one generation and measures it, then measures the fleet
// idle. Progress lines go to progress.
func simulate(ctx context.Context, cfg config, n int, progress io.Writer) (res result, err error) {
	res = result{N: n, SB: cfg.SB}
	dir, err := os.MkdirTemp(cfg.Dir, fmt.Sprintf("fanout-sim-%d-", n))
	if err != nil {
		return res, fmt.Errorf("simulation directory: %w", err)
	}
	defer os.RemoveAll(dir)
	srv, err := startServer(ctx, filepath.Join(dir, "redis"), cfg.Clients*cfg.Pool+64, cfg.SlowUS, cfg.RedisCPUs)
	if err != nil {
		return res, err
	}
	defer srv.stop()

	hosts := newCounter()
	clients := make([]*redis.Client, cfg.Clients)
	for i := range clients {
		clients[i] = redis.NewClient(&redis.Options{Addr: srv.addr, PoolSize: cfg.Pool, PoolTimeout: time.Minute})
		clients[i].AddHook(hosts)
		defer clients[i].Close()
	}
	mine := newCounter()
	obs := redis.NewClient(&redis.Options{Addr: srv.addr, PoolSize: 2})
	obs.AddHook(mine)
	defer obs.Close()

	log := logrus.New()
	log.SetOutput(io.Discard)
	log.SetLevel(logrus.WarnLevel)
	warnings := newLogCount()
	log.AddHook(warnings)
	defer func() { res.Warnings = warnings.summary() }()
	met := metrics.New() // one registry for the whole simulated fleet

	rootDir := filepath.Join(dir, "master", "root")
	if err := writeTask(filepath.Join(rootDir, taskPath[1:])); err != nil {
		return res, err
	}
	stateDir := filepath.Join(dir, "master", "state")
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return res, fmt.Errorf("master state directory: %w", err)
	}

	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	ccfg := coord.Config{LeaseTTL: cfg.Lease, HostGrace: cfg.HostGrace}
	nw := newNetwork(cfg.Size, cfg.SB, cfg.Hop, cfg.Stall)
	nw.origin = "origin"
	nw.lag = float64(cfg.Chunk) // see config.Chunk
	wg.Go(func() { nw.run(ctx) })

	mco := coord.New(clients[0], ccfg)
	mserver := peer.NewServer(peer.ServerConfig{Log: log})
	nw.addServer("origin:7070", mserver)
	m, err := master.New(master.Config{
		ID: "origin", Advertise: "origin:7070", Root: rootDir, StateDir: stateDir,
		Uploads: cfg.Uploads, Poll: cfg.Poll, ForgetAfter: 7 * 24 * time.Hour, Log: log, Metrics: met,
	}, mco, mserver)
	if err != nil {
		return res, fmt.Errorf("master: %w", err)
	}
	wg.Go(func() { m.Run(ctx) })

	keys := mco.Keys()
	h := newHub(keys.GenerationsChannel(), keys.WakeChannel)
	sub, err := coord.New(clients[0], ccfg).Subscribe(ctx, keys.GenerationsChannel())
	if err != nil {
		return res, err
	}
	wg.Go(func() { h.run(ctx, sub) })
	wakes := clients[0].PSubscribe(ctx, keys.WakeChannel("*"))
	if _, err := wakes.Receive(ctx); err != nil {
		return res, fmt.Errorf("subscribe to wake channels: %w", err)
	}
	wg.Go(func() { h.runWakes(ctx, wakes) })
	wg.Go(func() { h.keepAlive(ctx, clients[len(clients)-1]) })

	pc := peer.NewClient(peer.ClientConfig{})
	hostsDir := filepath.Join(dir, "hosts") // never created: a modelled pull writes nothing
	minions := make([]*minion.Minion, n)
	for i := range n {
		id := fmt.Sprintf("h%05d", i)
		server := peer.NewServer(peer.ServerConfig{Log: log})
		nw.addServer(id+":7070", server)
		co := simCoord{Client: coord.New(clients[i%len(clients)], ccfg), hub: h}
		mn, err := minion.New(minion.Config{
			ID: id, Advertise: id + ":7070", Root: hostsDir, StateDir: filepath.Join(hostsDir, id),
			Uploads: cfg.Uploads, Source: true, Poll: cfg.Poll, Heartbeat: cfg.Heartbeat,
			Pipeline: cfg.Pipeline, Sources: cfg.Sources, NoWatch: true, Bypass: true,
			// No tree on disk to verify; a verification reads no Redis key.
			VerifyEvery: 1000 * time.Hour,
			Log:         log, Metrics: met, Version: "sim", Model: nw,
		}, co, server, pc)
		if err != nil {
			return res, fmt.Errorf("minion %s: %w", id, err)
		}
		minions[i] = mn
		// Hosts booted at different times: heartbeats spread evenly.
		delay := mrand.N(cfg.Spread + 1)
		wg.Go(func() {
			select {
			case <-ctx.Done():
				return
			case <-time.After(delay):
			}
			mn.Run(ctx)
		})
	}
	started := time.Now()
	if err := waitUntil(ctx, cfg.Spread+2*cfg.Heartbeat+time.Minute, func() (bool, error) {
		c, err := obs.ZCard(ctx, keys.Heartbeats()).Result()
		return c >= int64(n), err
	}); err != nil {
		return res, fmt.Errorf("waiting for %d hosts to register: %w", n, err)
	}
	res.Register = time.Since(started)
	fmt.Fprintf(progress, "sim: N=%d: %d hosts registered in %s\n", n, n, res.Register.Round(time.Millisecond))
	// Every host's first poll is done and the master idles.
	time.Sleep(min(cfg.Poll*2, 5*time.Second))

	if cfg.Task {
		if err := measureTask(ctx, cfg, n, srv, obs, hosts, mine, keys, nw, minions, &res, progress); err != nil {
			return res, err
		}
	}
	if cfg.IdleWindow > 0 {
		if err := measureIdle(ctx, cfg, srv, obs, hosts, mine, &res, progress); err != nil {
			return res, err
		}
	}
	return res, nil
}

// measureTask sets the task and follows the generation to done: Redis CPU,
// commands, the slow log and the events, from the SET to done_at.
func measureTask(ctx context.Context, cfg config, n int, srv *server, obs *redis.Client, hosts, mine *counter,
	keys coord.Keys, nw *network, minions []*minion.Minion, res *result, progress io.Writer) error {
	cursor := "0-0"
	if last, err := obs.XRevRangeN(ctx, keys.Events(), "+", "-", 1).Result(); err != nil {
		return fmt.Errorf("read the events stream: %w", err)
	} else if len(last) == 1 {
		cursor = last[0].ID
	}
	slow := newSlowLog()
	if err := slow.drain(ctx, obs); err != nil {
		return err
	}
	slow = newSlowLog()
	if err := obs.ConfigResetStat(ctx).Err(); err != nil {
		return fmt.Errorf("config resetstat: %w", err)
	}
	hosts.take()
	mine.take()
	cpu0, err := srv.cpu()
	if err != nil {
		return err
	}
	var at *redis.TimeCmd
	if _, err := obs.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, keys.Task(), taskPath, 0)
		at = p.Time(ctx)
		return nil
	}); err != nil {
		return fmt.Errorf("set task: %w", err)
	}
	setAt := at.Val()
	loadAtSet := loadavg()
	lag := startLagMeter(ctx)
	events := map[string]map[string]int{} // gen -> type -> count
	firstClaim := map[string]int64{}      // gen -> ms of its first claim event
	var g map[string]string
	deadline := time.Now().Add(cfg.Timeout)
	lastReport := time.Now()
	for i := 0; ; i++ {
		for { // drain the events stream
			s, err := obs.XRead(ctx, &redis.XReadArgs{Streams: []string{keys.Events(), cursor}, Count: 5000, Block: -1}).Result()
			if errors.Is(err, redis.Nil) {
				break
			}
			if err != nil {
				return fmt.Errorf("read events: %w", err)
			}
			if len(s) == 0 || len(s[0].Messages) == 0 {
				break
			}
			for _, msg := range s[0].Messages {
				gen, typ := fmt.Sprint(msg.Values["gen"]), fmt.Sprint(msg.Values["type"])
				if events[gen] == nil {
					events[gen] = map[string]int{}
				}
				events[gen][typ]++
				if ms, _, ok := strings.Cut(msg.ID, "-"); ok && typ == "claim" && firstClaim[gen] == 0 {
					firstClaim[gen], _ = strconv.ParseInt(ms, 10, 64)
				}
				if typ == "claim" && strings.HasSuffix(fmt.Sprint(msg.Values["slot"]), fmt.Sprintf("#%d", coord.RescueSlot)) {
					events[gen][rescueClaims]++
				}
				cursor = msg.ID
			}
		}
		if i%5 == 0 {
			if err := slow.drain(ctx, obs); err != nil {
				return err
			}
		}
		g, err = obs.HGetAll(ctx, keys.Generation()).Result()
		if err != nil {
			return fmt.Errorf("read generation: %w", err)
		}
		if g["state"] == coord.StateDone || g["state"] == coord.StateFailed {
			break
		}
		if time.Now().After(deadline) {
			break // the figures so far, marked not done
		}
		if time.Since(lastReport) >= 5*time.Second {
			fin, _ := obs.SCard(ctx, keys.Finished()).Result()
			fmt.Fprintf(progress, "sim: N=%d: %s after SET: %d finished, %d pulling\n",
				n, time.Since(deadline.Add(-cfg.Timeout)).Round(time.Second), fin, nw.pulling())
			lastReport = time.Now()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	cpu1, err := srv.cpu()
	if err != nil {
		return err
	}
	stats, usec, err := commandStats(ctx, obs)
	if err != nil {
		return err
	}
	if g["state"] == coord.StateFailed {
		return fmt.Errorf("N=%d: generation failed: %s", n, g["error"])
	}
	res.NotDone = g["state"] != coord.StateDone
	res.LagMax, res.LagMean = lag()
	res.Load = loadAtSet + " → " + loadavg()
	res.CPU = cpu1 - cpu0
	res.Requests = minus(hosts.take(), nil)
	res.Executed = minus(stats, mine.take())
	res.ExecUsec = minus(usec, nil)
	if err := slow.drain(ctx, obs); err != nil {
		return err
	}
	res.Slow = slow.slowest()
	calls := res.Executed["evalsha"] + res.Executed["eval"]
	res.ScriptP99, res.ScriptP999 = -1, -1
	if d, ok := slow.scriptQuantile(0.99, calls); ok {
		res.ScriptP99 = d
	}
	if d, ok := slow.scriptQuantile(0.999, calls); ok {
		res.ScriptP999 = d
	}
	res.Events = events[g["id"]]
	published, _ := strconv.ParseInt(g["published"], 10, 64)
	done, _ := strconv.ParseInt(g["done_at"], 10, 64)
	res.Published = time.UnixMilli(published).Sub(setAt)
	if ms := firstClaim[g["id"]]; ms > 0 {
		res.FirstClaim = time.UnixMilli(ms).Sub(setAt)
	}
	res.Completion = time.UnixMilli(done).Sub(setAt)
	if res.NotDone {
		res.Completion = cfg.Timeout
	}
	fin, err := obs.SCard(ctx, keys.Finished()).Result()
	if err != nil {
		return fmt.Errorf("count finished hosts: %w", err)
	}
	res.Finished = int(fin)
	id, _ := strconv.ParseInt(g["id"], 10, 64)
	for _, mn := range minions {
		if got, _ := mn.ProgressOf(id); got < cfg.Size {
			res.Short++
		}
	}
	if res.NotDone {
		return fmt.Errorf("%w: %d of %d hosts finished after -timeout %s", errTimeout, res.Finished, n, cfg.Timeout)
	}
	fmt.Fprintf(progress, "sim: N=%d: done %s after SET (%.2f × S/B), Redis CPU %s\n",
		n, res.Completion.Round(time.Millisecond), res.Ratio(), res.CPU)
	return nil
}

// measureIdle lets the fleet settle after the generation is done, then
// measures Redis over the idle window: every host holds the generation
// and heartbeats.
func measureIdle(ctx context.Context, cfg config, srv *server, obs *redis.Client, hosts, mine *counter, res *result, progress io.Writer) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(cfg.Settle):
	}
	if err := obs.ConfigResetStat(ctx).Err(); err != nil {
		return fmt.Errorf("config resetstat: %w", err)
	}
	hosts.take()
	mine.take()
	cpu0, err := srv.cpu()
	if err != nil {
		return err
	}
	start := time.Now()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(cfg.IdleWindow):
	}
	cpu1, err := srv.cpu()
	if err != nil {
		return err
	}
	res.IdleWindow = time.Since(start)
	stats, _, err := commandStats(ctx, obs)
	if err != nil {
		return err
	}
	res.IdleCPU = cpu1 - cpu0
	res.IdleReqs = minus(hosts.take(), nil)
	res.IdleExec = minus(stats, mine.take())
	fmt.Fprintf(progress, "sim: N=%d: idle: Redis CPU %.1f%% of a core over %s\n",
		res.N, 100*res.IdleCPU.Seconds()/res.IdleWindow.Seconds(), res.IdleWindow.Round(time.Second))
	return nil
}

// startLagMeter measures how late a 100 ms ticker fires until the
// returned function is called, which reports the largest and the mean
// lateness.
func startLagMeter(ctx context.Context) func() (maxLag, mean time.Duration) {
	const every = 100 * time.Millisecond
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	var worst, sum time.Duration
	var n int
	go func() {
		defer close(done)
		last := time.Now()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-t.C:
				late := max(now.Sub(last)-every, 0)
				worst, sum, n = max(worst, late), sum+late, n+1
				last = now
			}
		}
	}()
	return func() (time.Duration, time.Duration) {
		cancel()
		<-done
		if n == 0 {
			return worst, 0
		}
		return worst, sum / time.Duration(n)
	}
}

// loadavg is the machine's 1-minute load average ("?" if unknown).
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	if f := strings.Fields(string(b)); len(f) > 0 {
		return f[0]
	}
	return "?"
}

// writeTask writes the task tree: one 4 KiB file of random bytes.
func writeTask(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("task directory: %w", err)
	}
	b := make([]byte, 4096)
	rand.Read(b)
	if err := os.WriteFile(filepath.Join(dir, "model.bin"), b, 0o644); err != nil {
		return fmt.Errorf("task file: %w", err)
	}
	return nil
}

// waitUntil polls ok every 100 ms until it holds, fails, or limit passes.
func waitUntil(ctx context.Context, limit time.Duration, ok func() (bool, error)) error {
	deadline := time.Now().Add(limit)
	for {
		done, err := ok()
		if err == nil && done {
			return nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = errors.New("timed out")
			}
			return fmt.Errorf("after %s: %w", limit, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
