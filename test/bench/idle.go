package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sirupsen/logrus"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/minion"
	"github.com/fanout/fanout/internal/peer"
)

// idleRate is the second half of benchmark 4: b.cfg.Idle minions, each a
// real minion.Minion with the default poll and heartbeat intervals, in this
// process, against the real redis-server, with no task. It measures the
// command rate Redis sees from INFO commandstats over b.cfg.IdleWindow, and
// redis-server's CPU time over the same window.
func (b *bench) idleRate(ctx context.Context, t *Table) error {
	const prefix = "idle:"
	n := b.cfg.Idle
	poll, beat := time.Second, 10*time.Second // minion.Config defaults, as fanout-minion's flags
	// Ten Redis clients shared by the minions: the commands are the same
	// as with one connection per host, without 1,000 sockets.
	clients := make([]*redis.Client, 10)
	for i := range clients {
		opts, err := redis.ParseURL(b.redis.URL)
		if err != nil {
			return fmt.Errorf("redis url: %w", err)
		}
		opts.PoolSize = 20
		clients[i] = redis.NewClient(opts)
		defer clients[i].Close()
	}
	log := logrus.New()
	log.SetLevel(logrus.ErrorLevel)
	secret := []byte("benchmark secret, never on a network")
	base := filepath.Join(b.cfg.Dir, "idle")
	ictx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait(); os.RemoveAll(base) }()
	for i := range n {
		id := fmt.Sprintf("idle-%04d", i)
		root, state := filepath.Join(base, id, "root"), filepath.Join(base, id, "state")
		for _, d := range []string{root, state} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return fmt.Errorf("idle minion dir: %w", err)
			}
		}
		co := coord.New(clients[i%len(clients)], coord.Config{Prefix: prefix})
		m, err := minion.New(minion.Config{
			ID: id, Advertise: "127.0.0.1:1", Root: root, StateDir: state, Source: true,
			Poll: poll, Heartbeat: beat, Log: log, Version: "bench",
		}, co, peer.NewServer(peer.ServerConfig{Secrets: [][]byte{secret}}), peer.NewClient(peer.ClientConfig{Secrets: [][]byte{secret}}))
		if err != nil {
			return fmt.Errorf("idle minion %s: %w", id, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Spread the starts over a poll interval, as hosts booted at
			// different times would be.
			select {
			case <-time.After(rand.N(poll)):
			case <-ictx.Done():
				return
			}
			m.Run(ictx)
		}()
	}
	// Let every minion start, then measure over a whole number of
	// heartbeat intervals.
	select {
	case <-time.After(2 * poll):
	case <-ctx.Done():
		return ctx.Err()
	}
	rdb := clients[0]
	before, err := commandStats(ctx, rdb)
	if err != nil {
		return err
	}
	cpu0, err := cpuTime(b.redis.Pid())
	if err != nil {
		return err
	}
	start := time.Now()
	select {
	case <-time.After(b.cfg.IdleWindow):
	case <-ctx.Done():
		return ctx.Err()
	}
	after, err := commandStats(ctx, rdb)
	if err != nil {
		return err
	}
	cpu1, err := cpuTime(b.redis.Pid())
	if err != nil {
		return err
	}
	window := time.Since(start)
	cmds := diff(after, before, nil)
	rate := float64(total(cmds)) / window.Seconds()
	t.Add(Row{Bench: "4 Redis", Case: fmt.Sprintf("%d idle minions, default --poll 1s, --heartbeat 10s", n),
		Figure:  fmt.Sprintf("%.0f commands/s (%.2f per minion per s)", rate, rate/float64(n)),
		Ratio:   fmt.Sprintf("redis-server CPU %.1f%% of a core", 100*Ratio(cpu1-cpu0, window)),
		Command: fmt.Sprintf("%d minion.Minion in one process (10 shared clients), no task; INFO commandstats over %s", n, seconds(window))})
	t.Note("4 idle: commands over the window: %s.", perCommand(cmds, float64(window.Seconds()), "/s"))
	return nil
}

// perCommand lists counts by command, largest first, each divided by div.
func perCommand(m map[string]int64, div float64, unit string) string {
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Slice(names, func(i, j int) bool {
		if m[names[i]] != m[names[j]] {
			return m[names[i]] > m[names[j]]
		}
		return names[i] < names[j]
	})
	parts := make([]string, len(names))
	for i, k := range names {
		parts[i] = fmt.Sprintf("%s %.1f%s", strings.ToUpper(k), float64(m[k])/div, unit)
	}
	return strings.Join(parts, ", ")
}
