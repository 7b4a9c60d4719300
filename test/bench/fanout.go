package main

import (
	"context"
	"errors"
	"time"
)

// fanout is benchmark 1. It needs internal/fleet (separate processes).
func (b *bench) fanout(ctx context.Context, t *Table) error {
	return errors.New("not written yet")
}

// redisCost is benchmark 4.
func (b *bench) redisCost(ctx context.Context, t *Table) error {
	_ = time.Second
	return b.idleRate(ctx, t)
}
