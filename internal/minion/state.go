package minion

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/manifest"
	"github.com/fanout/fanout/internal/peer"
	"github.com/fanout/fanout/internal/statedir"
)

// held is what a host verifiably holds: one generation of one task. It is
// saved in the state directory after every successful pull, so a restarted
// minion serves its copy again and pulls nothing it already has.
type held struct {
	Gen    int64  `json:"gen"`
	Digest string `json:"digest"`
	Path   string `json:"path"` // where the tree is: the generation's LocalPath (absolute, under --root)
	// Delete records that extras were removed: a copy made without delete
	// does not satisfy a generation published with it.
	Delete bool `json:"delete"`
	// Release names the release the tree is in when the task is released
	// (publish --atomic, see release.go): the tree is then under the
	// releases beside Path, and Path is a symlink to it once switched.
	Release string `json:"release,omitempty"`
}

// satisfies reports whether holding h means holding generation g: an
// atomic generation is held only in a release.
func (h *held) satisfies(g coord.Generation) bool {
	return h != nil && h.Digest == g.Digest && h.Path == g.LocalPath() && (h.Delete || !g.Delete) && (g.Atomic == 0 || h.Release != "")
}

// root is where the held tree is on this host, under base (--root).
func (h *held) root(base string) string {
	r := taskRoot(base, h.Path)
	if h.Release != "" {
		return newLayout(r).path(h.Release)
	}
	return r
}

const (
	heldFile     = "held.json"
	manifestFile = "manifest.json"
	cacheFile    = "hashes.cache"
)

// loadHeld reads the held state and its manifest from dir. A missing state
// is not an error: it returns nil. A manifest that no longer matches its
// digest is reported, and the state is treated as absent by the caller.
func loadHeld(dir string) (*held, []byte, *manifest.Manifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, heldFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil, nil
	}
	if err != nil {
		return nil, nil, nil, fmt.Errorf("read held state: %w", err)
	}
	var h held
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, nil, nil, fmt.Errorf("decode held state %s: %w (delete it to pull again)", filepath.Join(dir, heldFile), err)
	}
	enc, err := os.ReadFile(filepath.Join(dir, manifestFile))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("read held manifest: %w", err)
	}
	if got := manifest.Digest(enc); got != h.Digest {
		return nil, nil, nil, fmt.Errorf("held manifest %s has digest %s, state says %s (delete it to pull again)", filepath.Join(dir, manifestFile), got, h.Digest)
	}
	m, err := manifest.Decode(enc, manifest.DefaultLimits())
	if err != nil {
		return nil, nil, nil, fmt.Errorf("decode held manifest: %w", err)
	}
	return &h, enc, m, nil
}

// saveHeld records h and its encoded manifest in dir, each atomically; the
// manifest is written first so a crash in between leaves a state that fails
// its digest check rather than one that claims the wrong content.
func saveHeld(dir string, h held, enc []byte) error {
	if err := statedir.WriteFile(filepath.Join(dir, manifestFile), enc, manifest.TempPrefix); err != nil {
		return fmt.Errorf("save held manifest: %w", err)
	}
	b, err := json.Marshal(h)
	if err != nil {
		return fmt.Errorf("encode held state: %w", err)
	}
	if err := statedir.WriteFile(filepath.Join(dir, heldFile), b, manifest.TempPrefix); err != nil {
		return fmt.Errorf("save held state: %w", err)
	}
	return nil
}

// clearHeld forgets what this host held, durably: its tree is about to
// change.
func clearHeld(dir string) error {
	if err := statedir.Remove(filepath.Join(dir, heldFile)); err != nil {
		return fmt.Errorf("clear held state: %w", err)
	}
	return nil
}

// snapshot turns a held state into what the peer server serves.
func snapshot(root string, h *held, enc []byte, m *manifest.Manifest) *peer.Snapshot {
	return &peer.Snapshot{Gen: h.Gen, Digest: h.Digest, Encoded: enc, Manifest: m, Root: h.root(root)}
}

// taskRoot maps a published task path to this host's OS path under root.
func taskRoot(root, taskPath string) string {
	return filepath.Join(root, filepath.FromSlash(taskPath))
}

// checkPath refuses a tree path read from Redis (a generation's path or
// destination) that is not what the master publishes: an absolute path,
// clean (no "..", no "." and no doubled or trailing slash), and not the
// root itself. Joined to --root, any other could name a place outside it,
// and anyone able to write the generation key could make the fleet write
// (and, with delete, remove) files there.
func checkPath(p string) error {
	switch {
	case p == "" || p[0] != '/':
		return fmt.Errorf("path %.100q is not absolute", p)
	case strings.ContainsRune(p, 0):
		return fmt.Errorf("path %.100q contains a NUL byte", p)
	case path.Clean(p) != p:
		return fmt.Errorf("path %.100q is not clean (\"..\", \".\", doubled or trailing slashes)", p)
	case p == "/":
		return errors.New("path is the whole root")
	}
	return nil
}
