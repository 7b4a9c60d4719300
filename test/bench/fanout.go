package main

import (
	"context"
	"errors"
)

// fanout is benchmark 1. It needs internal/fleet (separate processes).
func (b *bench) fanout(ctx context.Context, t *Table) error {
	return errors.New("not written yet")
}
