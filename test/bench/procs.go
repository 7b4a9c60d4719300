package main

import (
	"context"
	"fmt"

	"github.com/fanout/fanout/internal/fleet"
)

// processFleet adapts a fleet of real processes to the benchmark.
type processFleet struct {
	f    *fleet.Fleet
	root string
}

func (p *processFleet) MasterRoot() string { return p.root }

func (p *processFleet) Stop() error { return p.f.Close() }

// processDeployer starts fleets of separate fanout processes (see
// internal/fleet) from the binaries in bin. It returns once every minion
// has heartbeated.
func processDeployer(bin string) deployer {
	return func(ctx context.Context, spec fleetSpec) (deployment, error) {
		f, err := fleet.New(fleet.Config{Dir: spec.Dir, Bin: bin, RedisURL: spec.RedisURL, Prefix: spec.Prefix,
			Args: []string{"--log-level", "warn"}})
		if err != nil {
			return nil, err
		}
		p := &processFleet{f: f}
		m, err := f.StartMaster(ctx, spec.MasterArgs...)
		if err != nil {
			f.Close()
			return nil, err
		}
		p.root = m.Root
		for i := range spec.Minions {
			if _, err := f.StartMinion(ctx, fmt.Sprintf("minion-%02d", i+1), spec.MinionArgs...); err != nil {
				f.Close()
				return nil, err
			}
		}
		rctx, cancel := context.WithTimeout(ctx, spec.ReadyWithin)
		defer cancel()
		if err := f.WaitRegistered(rctx, spec.Minions); err != nil {
			f.Close()
			return nil, fmt.Errorf("%w (logs under %s)", err, spec.Dir)
		}
		return p, nil
	}
}
