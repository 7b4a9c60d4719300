package apply

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/fanout/fanout/internal/manifest"
)

// Sweep removes fanout's temporary files (names for which manifest.IsTemp
// is true) left under root by an interrupted Apply, and returns how many it
// removed. It also sweeps root's parent directory itself (not its other
// subdirectories), where a file task's temporary files live. Sweep never
// follows a symlink and never removes a directory. A missing root is not an
// error.
func Sweep(ctx context.Context, root string) (int, error) {
	root = filepath.Clean(root)
	n, err := sweepDir(filepath.Dir(root))
	if err != nil {
		return n, err
	}
	fi, err := os.Lstat(root)
	if errors.Is(err, fs.ErrNotExist) {
		return n, nil
	}
	if err != nil {
		return n, fmt.Errorf("sweep %s: %w", root, err)
	}
	if !fi.IsDir() {
		return n, nil
	}
	// WalkDir does not follow symlinks, root included.
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if d.IsDir() || !manifest.IsTemp(d.Name()) {
			return nil
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		n++
		return nil
	})
	if err != nil {
		return n, fmt.Errorf("sweep %s: %w", root, err)
	}
	return n, nil
}

// sweepDir removes the temporary files directly in dir.
func sweepDir(dir string) (int, error) {
	des, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("sweep %s: %w", dir, err)
	}
	n := 0
	for _, de := range des {
		if de.IsDir() || !manifest.IsTemp(de.Name()) {
			continue
		}
		if err := os.Remove(filepath.Join(dir, de.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return n, fmt.Errorf("sweep %s: %w", dir, err)
		}
		n++
	}
	return n, nil
}
