package minion

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fanout/fanout/internal/apply"
	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/manifest"
	"github.com/fanout/fanout/internal/peer"
)

func TestVerdict(t *testing.T) {
	live := context.Background()
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name  string
		ctx   context.Context
		err   error
		mixed bool
		want  coord.Verdict
	}{
		{"hash mismatch", live, fmt.Errorf("fetch f: %w", &apply.HashMismatchError{Path: "f"}), false, coord.SourceBad},
		{"hash mismatch on bytes from two sources", live, fmt.Errorf("fetch f: %w", &apply.HashMismatchError{Path: "f"}), true, coord.SourceOK},
		{"bad manifest", live, fmt.Errorf("%w: digest", errBadManifest), false, coord.SourceBad},
		{"unreachable", live, fmt.Errorf("fetch: %w", peer.ErrUnavailable), false, coord.SourceDead},
		{"stale source", live, fmt.Errorf("fetch: %w", peer.ErrStale), false, coord.SourceDead},
		{"unauthorized: our secret is likely wrong", live, peer.ErrUnauthorized, false, coord.SourceOK},
		{"not found", live, peer.ErrNotFound, false, coord.SourceDead},
		{"disk full", live, fmt.Errorf("write: %w", syscall.ENOSPC), false, coord.SourceOK},
		{"lease lost", live, fmt.Errorf("%w: x", errLeaseLost), false, coord.SourceOK},
		{"shutdown beats a transport error", cancelled, fmt.Errorf("fetch: %w", peer.ErrUnavailable), false, coord.SourceOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := verdict(tt.ctx, tt.err, tt.mixed); got != tt.want {
				t.Errorf("verdict(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

func TestHeldState(t *testing.T) {
	dir := t.TempDir()
	if h, _, _, err := loadHeld(dir); h != nil || err != nil {
		t.Fatalf("empty state dir: %+v %v", h, err)
	}
	m := &manifest.Manifest{Entries: []manifest.Entry{{Path: ".", Type: manifest.Dir, Mode: 0o755}}}
	enc, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	want := held{Gen: 4, Digest: manifest.Digest(enc), Path: "/data/m42", Delete: true}
	if err := saveHeld(dir, want, enc); err != nil {
		t.Fatal(err)
	}
	h, gotEnc, gotM, err := loadHeld(dir)
	if err != nil || *h != want || string(gotEnc) != string(enc) || len(gotM.Entries) != 1 {
		t.Fatalf("loadHeld = %+v, %v", h, err)
	}
	g := coord.Generation{ID: 9, Digest: want.Digest, Path: want.Path, Delete: true}
	if !h.satisfies(g) {
		t.Error("held state does not satisfy a generation of the same content")
	}
	noDelete := *h
	noDelete.Delete = false
	if noDelete.satisfies(g) {
		t.Error("a copy made without delete satisfies a delete generation")
	}
	if h.satisfies(coord.Generation{Digest: "other", Path: want.Path}) {
		t.Error("other content satisfied")
	}
	// A tampered manifest fails its digest check.
	if err := os.WriteFile(filepath.Join(dir, manifestFile), []byte(`{"entries":[]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := loadHeld(dir); err == nil || !strings.Contains(err.Error(), "digest") {
		t.Errorf("tampered manifest: %v", err)
	}
	if err := clearHeld(dir); err != nil {
		t.Fatal(err)
	}
	if h, _, _, err := loadHeld(dir); h != nil || err != nil {
		t.Errorf("after clear: %+v %v", h, err)
	}
	if err := clearHeld(dir); err != nil {
		t.Errorf("clearing twice: %v", err)
	}
}

// A manifest claiming more bytes than the disk holds (1 PiB here) is
// refused before a byte is written, with an error that says so.
func TestCheckSpace(t *testing.T) {
	dir := t.TempDir()
	if err := checkSpace(dir, 1<<20); err != nil {
		t.Fatalf("1 MiB does not fit in %s: %v", dir, err)
	}
	err := checkSpace(dir, 1<<50)
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "not enough space") {
		t.Fatalf("1 PiB: %v", err)
	}
}

// A waiting host claims every poll while up to fleetClaims hosts wait, and
// spaces its claims beyond, so a fleet's waiting hosts claim about
// fleetClaims times a second together, up to 30 polls apart.
func TestWaitingPoll(t *testing.T) {
	for _, tc := range []struct {
		waiting int64
		want    time.Duration
	}{
		{0, 50 * time.Millisecond},
		{20, 50 * time.Millisecond},
		{100, 100 * time.Millisecond},
		{999, 999 * time.Millisecond},
		{1000, time.Second},
		{10000, 10 * time.Second},
		{20000, 20 * time.Second},
		{1000000, 30 * time.Second},
	} {
		if got := waitingPoll(time.Second, tc.waiting); got != tc.want {
			t.Errorf("waitingPoll(1s, %d) = %s, want %s", tc.waiting, got, tc.want)
		}
	}
	if got := waitingPoll(100*time.Millisecond, 5000); got != 500*time.Millisecond {
		t.Errorf("waitingPoll(100ms, 5000) = %s, want 500ms", got)
	}
	if got := waitingPoll(10*time.Millisecond, 0); got != 10*time.Millisecond {
		t.Errorf("waitingPoll(10ms, 0) = %s, want the poll, 10ms", got)
	}
}

// checkPath lets through what the master publishes and nothing that could
// name a place outside --root once joined to it.
func TestCheckPath(t *testing.T) {
	for _, p := range []string{"/data/m42", "/a", "/srv/app/current", "/a b/ü"} {
		if err := checkPath(p); err != nil {
			t.Errorf("checkPath(%q) = %v, want nil", p, err)
		}
	}
	for _, p := range []string{"", "data/m42", "/", "/..", "/../etc", "/data/../../etc", "/data/./x", "//data", "/data/", "/a\x00b"} {
		if err := checkPath(p); err == nil {
			t.Errorf("checkPath(%q) = nil, want an error", p)
		}
	}
}

// A queued host claims again four spaced polls later, at least a poll
// apart and never so late (25 s, 30 s with jitter) that its queue entry
// ages out (35 s after its last claim).
func TestQueuedPoll(t *testing.T) {
	for _, tc := range []struct {
		poll    time.Duration
		waiting int64
		want    time.Duration
	}{
		{time.Second, 10, time.Second},                    // small fleet: a poll
		{time.Second, 1000, 4 * time.Second},              // 4 × a poll × 1000/1000
		{time.Second, 10000, 25 * time.Second},            // capped below the queue's 35 s
		{100 * time.Millisecond, 100000, 3 * time.Second}, // 30 polls
	} {
		if got := queuedPoll(tc.poll, tc.waiting); got != tc.want {
			t.Errorf("queuedPoll(%s, %d) = %s, want %s", tc.poll, tc.waiting, got, tc.want)
		}
		if max := time.Duration(float64(queuedPoll(tc.poll, tc.waiting)) * 1.2); max >= 35*time.Second {
			t.Errorf("queuedPoll(%s, %d) with jitter reaches %s: the queue drops the host", tc.poll, tc.waiting, max)
		}
	}
}

func TestGrowBackoff(t *testing.T) {
	for _, tc := range []struct {
		misses int
		want   time.Duration
	}{{0, 0}, {1, 0}, {3, 0}, {4, 4 * time.Second}, {5, 8 * time.Second}, {6, 16 * time.Second}, {20, 16 * time.Second}, {200, 16 * time.Second}} {
		if got := growBackoff(tc.misses); got != tc.want {
			t.Errorf("growBackoff(%d) = %s, want %s", tc.misses, got, tc.want)
		}
	}
}

// Renewals are half a lease apart when that leaves 7.5 s in hand, and
// closer for shorter leases: never less than two thirds of a lease nor
// 7.5 s (whichever is less) remains when a renewal is due.
func TestRenewInterval(t *testing.T) {
	for _, c := range []struct{ lease, want time.Duration }{
		{15 * time.Second, 7500 * time.Millisecond},
		{60 * time.Second, 30 * time.Second},
		{12 * time.Second, 4500 * time.Millisecond},
		{9 * time.Second, 3 * time.Second},
		{3 * time.Second, time.Second},
	} {
		if got := renewInterval(c.lease); got != c.want {
			t.Errorf("renewInterval(%v) = %v, want %v", c.lease, got, c.want)
		}
	}
	for lease := 300 * time.Millisecond; lease <= 2*time.Minute; lease += 300 * time.Millisecond {
		every := renewInterval(lease)
		if left := lease - every; left < min(renewSlack, lease*2/3) || every > lease/2 {
			t.Fatalf("lease %v renewed every %v: %v left", lease, every, left)
		}
	}
}

// A whole source offers one spare slot beyond --max-uploads when pulls
// take several sources, never past the upload slots: the next number is
// the rescue slot's.
func TestHeldUploads(t *testing.T) {
	for _, c := range []struct {
		source           bool
		uploads, sources int
		want             int
	}{
		{true, 1, 3, 2},
		{true, 1, 1, 1},
		{true, 63, 3, 64},
		{true, coord.MaxUploads, 3, coord.MaxUploads},
		{true, coord.MaxUploads, 1, coord.MaxUploads},
		{true, 0, 3, 0},
		{false, 4, 3, 0},
	} {
		m := &Minion{cfg: Config{Source: c.source, Uploads: c.uploads, Sources: c.sources}}
		if got := m.heldUploads(); got != c.want {
			t.Errorf("source %v, --max-uploads %d, --sources %d: %d slots held, want %d", c.source, c.uploads, c.sources, got, c.want)
		}
	}
}

// An announcement stands for the generation only while it is newer than
// the one the last Step saw: the channel's last message may be old (it
// came during a pull), and a newer generation may have been published
// without one that carries it.
func TestAnnouncement(t *testing.T) {
	co := coord.New(redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}), coord.Config{})
	m := &Minion{coord: co}
	d := strings.Repeat("d", 64)
	msg := func(id int) string {
		return fmt.Sprintf(`gen %d %s {"id":"%d","digest":"%s","state":"running","path":"/data/m42","proto":"7"}`, id, d, id, d)
	}
	m.seen = coord.Ref{ID: 8, Digest: d}
	if g := m.announcement(msg(8)); g != nil {
		t.Fatalf("the announcement of the generation already seen taken: %+v", g)
	}
	if g := m.announcement(msg(7)); g != nil {
		t.Fatalf("an older announcement taken: %+v", g)
	}
	if g := m.announcement(msg(9)); g == nil || g.ID != 9 || g.Path != "/data/m42" {
		t.Fatalf("a newer announcement: %+v, want generation 9", g)
	}
	if g := m.announcement("gen 9 " + d); g != nil {
		t.Fatalf("a message without fields taken: %+v", g)
	}
}
