package master

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"unicode/utf8"
)

// MaxTaskLen is the longest task value CleanTask accepts, in bytes: Linux's
// PATH_MAX. A longer value is no path the kernel takes, and would
// otherwise be copied whole into every error and log line about the task.
const MaxTaskLen = 4096

// taskQuoteLen is how much of a refused over-long value its error quotes.
const taskQuoteLen = 100

// CleanTask checks the syntax of a task value as an operator wrote it and
// returns the path that is published: absolute, with trailing and doubled
// slashes removed. Every error names the value and says what to do; a
// value over MaxTaskLen is named by its length and its first bytes only.
func CleanTask(value string) (string, error) {
	switch {
	case len(value) > MaxTaskLen:
		return "", fmt.Errorf("task is %d bytes long, over the limit of %d bytes (PATH_MAX); it begins %q: set it to a shorter absolute path",
			len(value), MaxTaskLen, prefix(value, taskQuoteLen))
	case strings.TrimSpace(value) == "":
		return "", errors.New(`task is empty: set it to an absolute path, e.g. "redis-cli set task /data/models/m42"`)
	case strings.ContainsRune(value, 0):
		return "", fmt.Errorf("task %q contains a NUL byte: set it to a plain absolute path", value)
	case !strings.HasPrefix(value, "/"):
		return "", fmt.Errorf("task %q is a relative path: set it to an absolute path such as /data/models/m42", value)
	}
	for _, c := range strings.Split(value, "/") {
		if c == ".." {
			return "", fmt.Errorf("task %q contains '..': write the path without it", value)
		}
	}
	clean := path.Clean(value)
	if clean == "/" {
		return "", fmt.Errorf("task %q is the whole root: name a directory or file under it", value)
	}
	return clean, nil
}

// prefix returns at most the first n bytes of s, cut before a rune that
// does not fit whole.
func prefix(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for i := 1; i < utf8.UTFMax && n > 0 && !utf8.RuneStart(s[n]); i++ {
		n--
	}
	return s[:n]
}

// ResolveTask checks a task value (see CleanTask) and maps it to the OS path
// under root, which must exist inside root and be a regular file or a
// directory. Nothing on disk is touched.
func ResolveTask(root, value string) (clean, osPath string, err error) {
	clean, err = CleanTask(value)
	if err != nil {
		return "", "", err
	}
	r, err := os.OpenRoot(root)
	if err != nil {
		return "", "", fmt.Errorf("open --root %s: %w", root, err)
	}
	defer r.Close()
	rel := strings.TrimPrefix(clean, "/")
	// Stat through the root: a symlinked ancestor that leads outside --root
	// is refused here, one that stays inside is allowed.
	if _, err := r.Stat(rel); err != nil {
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return "", "", fmt.Errorf("task %q does not exist under --root %s: check the path on the master", value, root)
		case errors.Is(err, fs.ErrPermission):
			return "", "", fmt.Errorf("task %q is not readable by the master: fix its permissions", value)
		default:
			return "", "", fmt.Errorf("task %q resolves outside --root %s or cannot be read: %w", value, root, err)
		}
	}
	fi, err := r.Lstat(rel)
	if err != nil {
		return "", "", fmt.Errorf("task %q: %w", value, err)
	}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		return "", "", fmt.Errorf("task %q is a symlink: publish the path it points to", value)
	case !fi.IsDir() && !fi.Mode().IsRegular():
		return "", "", fmt.Errorf("task %q is a special file (%s): publish a regular file or a directory", value, fi.Mode().Type())
	}
	return clean, filepath.Join(root, filepath.FromSlash(rel)), nil
}
