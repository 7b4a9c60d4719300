package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// fleetSpec describes one deployment of benchmark 1: a master and n
// minions, each a separate process with its own flags.
type fleetSpec struct {
	Dir         string
	RedisURL    string
	Prefix      string
	Minions     int
	MasterArgs  []string // extra fanout-master run flags
	MinionArgs  []string // extra fanout-minion run flags
	ReadyWithin time.Duration
}

// deployment is a running fleet of processes.
type deployment interface {
	MasterRoot() string
	Stop() error
}

// deployer starts fleets; internal/fleet provides the processes.
type deployer func(ctx context.Context, spec fleetSpec) (deployment, error)

// modeFlags are the flags that select a mode of benchmark 1 for n minions.
// pipeline reports whether the binary knows --pipeline at all.
func modeFlags(mode string, n int, pipeline bool) (master, minion []string) {
	switch mode {
	case ModeCentral:
		master = []string{"--max-uploads", fmt.Sprint(n)}
		minion = []string{"--max-uploads", "0"}
		if pipeline {
			minion = append(minion, "--pipeline=false")
		}
	case ModeDoubling:
		master = []string{"--max-uploads", "1"}
		minion = []string{"--max-uploads", "1"}
		if pipeline {
			minion = append(minion, "--pipeline=false")
		}
	case ModePipelined:
		master = []string{"--max-uploads", "1"}
		minion = []string{"--max-uploads", "1", "--pipeline=true"}
		if !pipeline {
			minion = minion[:2]
		}
	}
	return master, minion
}

// binaryCaps is what the fanout-minion binary under test accepts.
type binaryCaps struct {
	Pipeline    bool // knows --pipeline
	ZeroUploads bool // accepts --max-uploads 0 (a minion that never serves)
}

// probeBinary asks fanout-minion which of the benchmark's flags it knows:
// --pipeline from its help text, --max-uploads 0 by starting it with that
// flag and a secret file that does not exist (a refused flag is reported
// before the secret is read).
func probeBinary(ctx context.Context, bin string) (binaryCaps, error) {
	minion := filepath.Join(bin, "fanout-minion")
	help, err := exec.CommandContext(ctx, minion, "run", "--help").CombinedOutput()
	if err != nil {
		return binaryCaps{}, fmt.Errorf("%s run --help: %w: %s (run make build)", minion, err, help)
	}
	caps := binaryCaps{Pipeline: strings.Contains(string(help), "--pipeline")}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(cctx, minion, "run", "--max-uploads", "0",
		"--secret-file", filepath.Join(os.TempDir(), "fanout-bench-no-such-secret"), "--redis", "redis://127.0.0.1:1").CombinedOutput()
	caps.ZeroUploads = !strings.Contains(string(out), "--max-uploads")
	return caps, nil
}

// fanout is benchmark 5 (opt-in: -parts fanout): the time from a
// generation's publish to the last minion's finish event, for each mode and
// minion count, as a ratio to S/B, with the tool's own --bwlimit on
// loopback and a 100 ms poll. It compares the modes; it is not what an
// operator sees (benchmark 1 is).
func (b *bench) fanout(ctx context.Context, t *Table) error {
	if b.deploy == nil {
		return errors.New("needs internal/fleet (separate processes), not merged into this branch yet")
	}
	caps, err := probeBinary(ctx, b.cfg.Bin)
	if err != nil {
		return err
	}
	ideal := Ideal(b.cfg.FanSize, b.cfg.Rate)
	var errs []error
	for _, n := range b.cfg.Hosts {
		for _, mode := range b.cfg.Modes {
			row, err := b.fanoutOne(ctx, mode, n, caps, ideal)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s N=%d: %w", mode, n, err))
				row.Figure = "failed: " + err.Error()
			}
			t.Add(row)
			if ctx.Err() != nil {
				return errors.Join(errs...)
			}
		}
	}
	t.Note("5: the tool's own limiter on loopback, not end to end: S = %s, B = --bwlimit %s on every host (master too), S/B = %s; time is the generation's publish (set by the master) "+
		"to the Redis timestamp of the last minion's finish event; every host polls every %s; rounds is the depth of the distribution tree from the claim events; "+
		"req/host is Redis requests per minion for the task (MONITOR). Expected: central N, doubling ⌈log2(N+1)⌉, pipelined the issue's target 1.25.",
		sizeString(b.cfg.FanSize), b.cfg.BWLimit, seconds(ideal), b.cfg.Poll)
	if !caps.Pipeline {
		t.Note("5: this fanout-minion has no --pipeline flag: the pipelined rows ran with the binary's default behaviour.")
	}
	return errors.Join(errs...)
}

func (b *bench) fanoutOne(ctx context.Context, mode string, n int, caps binaryCaps, ideal time.Duration) (Row, error) {
	masterArgs, minionArgs := modeFlags(mode, n, caps.Pipeline)
	common := []string{"--bwlimit", b.cfg.BWLimit, "--poll", b.cfg.Poll.String()}
	masterArgs = append(masterArgs, common...)
	minionArgs = append(minionArgs, common...)
	row := Row{Bench: "5 modes, --bwlimit", Case: fmt.Sprintf("N=%d %s", n, mode),
		Command: fmt.Sprintf("fanout-master run %s; %d × fanout-minion run %s",
			strings.Join(masterArgs, " "), n, strings.Join(minionArgs, " "))}
	switch {
	case mode == ModePipelined && !caps.Pipeline:
		row.Ratio = "n/a (binary lacks --pipeline)"
	case mode == ModeCentral && !caps.ZeroUploads:
		row.Figure, row.Ratio = "n/a", "n/a (binary refuses --max-uploads 0)"
		return row, nil
	}
	dir := filepath.Join(b.cfg.Dir, "fanout", fmt.Sprintf("%s-%d", mode, n))
	defer os.RemoveAll(dir)
	prefix := fmt.Sprintf("fan-%s-%d:", mode, n)
	d, err := b.deploy(ctx, fleetSpec{Dir: dir, RedisURL: b.redis.URL, Prefix: prefix, Minions: n,
		MasterArgs: masterArgs, MinionArgs: minionArgs, ReadyWithin: 30 * time.Second})
	if err != nil {
		return row, err
	}
	defer d.Stop()
	if err := writeBigFile(filepath.Join(d.MasterRoot(), "fan", "data.bin"), b.cfg.FanSize, 1); err != nil {
		return row, err
	}
	obs, err := newObserver(b.redis.URL, prefix)
	if err != nil {
		return row, err
	}
	defer obs.Close()
	tc, err := b.countTask(ctx, obs, "/fan")
	if err != nil {
		return row, err
	}
	if tc.res.Hosts != n {
		return row, fmt.Errorf("%d of %d minions finished", tc.res.Hosts, n)
	}
	r := Ratio(tc.res.Elapsed, ideal)
	row.Figure = fmt.Sprintf("%s, %d rounds, %.0f req/host", seconds(tc.res.Elapsed), tc.res.Rounds, float64(total(tc.sent))/float64(n))
	ratio := fmt.Sprintf("%.2f × S/B (expect %g)", r, Expected(mode, n))
	if row.Ratio != "" {
		ratio = row.Ratio + "; " + ratio
	}
	row.Ratio = ratio
	return row, nil
}
