// Package bwlimit caps a host's transfer rate with a token bucket, and
// parses rsync-style rates such as "16M".
package bwlimit

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"

	"golang.org/x/time/rate"
)

// Parse reads a rate in bytes per second: a number with an optional
// binary suffix K, M, G (rsync style: 16M is 16 MiB/s, a plain number is
// KiB/s as with rsync's --bwlimit), optionally followed by "B" or "/s".
// "0" or "" mean no limit.
func Parse(s string) (int64, error) {
	t := strings.TrimSpace(strings.ToUpper(s))
	t = strings.TrimSuffix(t, "/S")
	t = strings.TrimSuffix(t, "B")
	if t == "" || t == "0" {
		return 0, nil
	}
	mult := int64(1 << 10) // rsync: a bare number is KiB/s
	switch t[len(t)-1] {
	case 'K':
		mult, t = 1<<10, t[:len(t)-1]
	case 'M':
		mult, t = 1<<20, t[:len(t)-1]
	case 'G':
		mult, t = 1<<30, t[:len(t)-1]
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("bandwidth %q: want a number with an optional K, M or G suffix, e.g. 16M", s)
	}
	return int64(v * float64(mult)), nil
}

// Limiter is a host-wide token bucket shared by every transfer in one
// direction. A nil Limiter does not limit.
type Limiter struct{ l *rate.Limiter }

// New returns a limiter for bytesPerSec; nil when it is 0 (no limit).
func New(bytesPerSec int64) *Limiter {
	if bytesPerSec <= 0 {
		return nil
	}
	// A burst of 1/8 s of traffic, at least 64 KiB, keeps writes smooth.
	burst := max(int(bytesPerSec/8), 64<<10)
	return &Limiter{l: rate.NewLimiter(rate.Limit(bytesPerSec), burst)}
}

// chunk is the most a single write takes from the bucket at once.
func (l *Limiter) chunk() int { return l.l.Burst() }

// Writer wraps w so writes wait for tokens; ctx cancels a wait.
func (l *Limiter) Writer(ctx context.Context, w io.Writer) io.Writer {
	if l == nil {
		return w
	}
	return &writer{ctx: ctx, w: w, l: l}
}

type writer struct {
	ctx context.Context
	w   io.Writer
	l   *Limiter
}

func (w *writer) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		n := min(len(p)-done, w.l.chunk())
		if err := w.l.l.WaitN(w.ctx, n); err != nil {
			return done, err
		}
		m, err := w.w.Write(p[done : done+n])
		done += m
		if err != nil {
			return done, err
		}
	}
	return done, nil
}
