// Package exclude matches tree paths against exclude patterns with rsync's
// rules, so an operator who knows rsync --exclude can predict what fanout
// leaves out:
//
//   - A pattern that starts with "/" is anchored at the task root: "/tmp"
//     matches "tmp" but not "a/tmp".
//   - Any other pattern is matched against the end of the path, at a
//     component boundary: "tmp" matches "tmp" and "a/b/tmp"; "b/tmp"
//     matches "a/b/tmp" but not "ab/tmp".
//   - A trailing "/" matches directories only: "cache/" excludes a
//     directory named cache, not a file of that name.
//   - "*" matches any run of characters except "/"; "**" matches any run,
//     "/" included; "?" one character except "/"; "[...]" one character of
//     a class ("[a-z]", "[!0-9]" or "[^0-9]" negated), never "/"; a
//     backslash makes the next character literal.
//   - "dir/***" matches the directory dir itself and everything in it.
//   - An excluded directory excludes everything under it: its contents are
//     never looked at (see List.Excluded).
//
// Include rules ("+ pattern") are not supported: a list is exclusions only,
// and "+ " at the start of a pattern is refused rather than taken literally.
// A "- " prefix (rsync's explicit exclude) is accepted and removed.
package exclude

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"
)

// Limits on a list, so a hostile manifest cannot make matching costly.
const (
	MaxPatterns   = 1000
	MaxPatternLen = 1024
)

// pattern is one compiled exclude rule.
type pattern struct {
	raw      string // as given
	glob     string // what is matched, without the anchor or the trailing "/"
	anchored bool   // starts with "/": matched against the whole path
	dirOnly  bool   // ends with "/": directories only
}

// List is a compiled, ordered list of exclude patterns. The zero value and
// nil exclude nothing.
type List struct {
	pats []pattern
	raw  []string
}

// Parse compiles patterns. An empty pattern, a pattern longer than
// MaxPatternLen, one with a NUL or a newline, an unterminated "[" class, an
// include rule ("+ ...") and more than MaxPatterns patterns are errors naming
// the pattern.
func Parse(patterns []string) (*List, error) {
	if len(patterns) > MaxPatterns {
		return nil, fmt.Errorf("%d exclude patterns, more than the limit of %d", len(patterns), MaxPatterns)
	}
	l := &List{}
	for _, raw := range patterns {
		ps, err := compile(raw)
		if err != nil {
			return nil, fmt.Errorf("exclude pattern %.80q: %w", raw, err)
		}
		l.pats = append(l.pats, ps...)
		l.raw = append(l.raw, raw)
	}
	return l, nil
}

func compile(raw string) ([]pattern, error) {
	switch {
	case raw == "":
		return nil, errors.New("empty pattern")
	case len(raw) > MaxPatternLen:
		return nil, fmt.Errorf("longer than %d bytes", MaxPatternLen)
	case strings.ContainsAny(raw, "\x00\n\r"):
		return nil, errors.New("holds a NUL or a line break")
	case strings.HasPrefix(raw, "+ "):
		return nil, errors.New(`include rules ("+ ") are not supported: list only what to exclude`)
	}
	s := strings.TrimPrefix(raw, "- ")
	p := pattern{raw: raw}
	if strings.HasPrefix(s, "/") {
		p.anchored = true
		s = strings.TrimLeft(s, "/")
	}
	var out []pattern
	if base, ok := strings.CutSuffix(s, "/***"); ok {
		// The directory itself, and everything in it.
		s = base + "/**"
		d := p
		d.glob, d.dirOnly = base, true
		if err := checkGlob(d.glob); err != nil {
			return nil, err
		}
		if d.glob != "" {
			out = append(out, d)
		}
	} else if t, ok := strings.CutSuffix(s, "/"); ok {
		p.dirOnly = true
		s = strings.TrimRight(t, "/")
	}
	if s == "" {
		return nil, errors.New("matches nothing (only slashes)")
	}
	if err := checkGlob(s); err != nil {
		return nil, err
	}
	p.glob = s
	return append(out, p), nil
}

// checkGlob refuses a class without its closing "]" and a trailing
// backslash.
func checkGlob(g string) error {
	for i := 0; i < len(g); i++ {
		switch g[i] {
		case '\\':
			if i+1 >= len(g) {
				return errors.New("ends with a lone backslash")
			}
			i++
		case '[':
			if _, _, ok := classEnd(g, i); !ok {
				return errors.New(`a "[" class without its closing "]"`)
			}
		}
	}
	return nil
}

// Patterns returns the patterns as given to Parse.
func (l *List) Patterns() []string {
	if l == nil {
		return nil
	}
	return append([]string(nil), l.raw...)
}

// Empty reports whether l excludes nothing.
func (l *List) Empty() bool { return l == nil || len(l.pats) == 0 }

// Match reports whether the entry at path (slash-separated, relative to the
// task root, without a leading "/"), a directory when dir is set, matches a
// pattern itself. The root "." never matches. A walk that skips what
// matches (and does not descend into a matching directory) leaves out
// exactly what rsync does; to judge a path alone, use Excluded.
func (l *List) Match(path string, dir bool) bool {
	if l.Empty() || path == "." || path == "" {
		return false
	}
	for _, p := range l.pats {
		if p.dirOnly && !dir {
			continue
		}
		if p.anchored {
			if glob(p.glob, path) {
				return true
			}
			continue
		}
		for i := 0; i < len(path); i++ {
			if (i == 0 || path[i-1] == '/') && glob(p.glob, path[i:]) {
				return true
			}
		}
	}
	return false
}

// Excluded reports whether path is left out: it matches, or one of its
// parent directories does.
func (l *List) Excluded(path string, dir bool) bool {
	if l.Empty() {
		return false
	}
	for i := 0; i < len(path); i++ {
		if path[i] == '/' && l.Match(path[:i], true) {
			return true
		}
	}
	return l.Match(path, dir)
}

// glob matches the whole of s against pattern g.
func glob(g, s string) bool {
	for len(g) > 0 {
		switch c := g[0]; c {
		case '*':
			if strings.HasPrefix(g, "**") {
				rest := strings.TrimLeft(g, "*")
				for i := 0; i <= len(s); i++ {
					if glob(rest, s[i:]) {
						return true
					}
				}
				return false
			}
			rest := g[1:]
			for i := 0; i <= len(s); i++ {
				if glob(rest, s[i:]) {
					return true
				}
				if i < len(s) && s[i] == '/' {
					return false
				}
			}
			return false
		case '?':
			if len(s) == 0 || s[0] == '/' {
				return false
			}
			g, s = g[1:], s[1:]
		case '[':
			end, neg, _ := classEnd(g, 0)
			if len(s) == 0 || s[0] == '/' {
				return false
			}
			if inClass(g[1:end], s[0]) == neg {
				return false
			}
			g, s = g[end+1:], s[1:]
		case '\\':
			if len(s) == 0 || s[0] != g[1] {
				return false
			}
			g, s = g[2:], s[1:]
		default:
			if len(s) == 0 || s[0] != c {
				return false
			}
			g, s = g[1:], s[1:]
		}
	}
	return len(s) == 0
}

// classEnd finds the "]" closing the class that starts at g[i]; neg is set
// for "[!" and "[^". A "]" right after the opening (or the negation) is a
// member, as in rsync.
func classEnd(g string, i int) (end int, neg, ok bool) {
	j := i + 1
	if j < len(g) && (g[j] == '!' || g[j] == '^') {
		neg = true
		j++
	}
	if j < len(g) && g[j] == ']' {
		j++
	}
	for ; j < len(g); j++ {
		if g[j] == '\\' {
			j++
			continue
		}
		if g[j] == ']' {
			return j, neg, true
		}
	}
	return 0, false, false
}

// inClass reports whether c is a member of class body (between "[" and "]",
// the negation included).
func inClass(body string, c byte) bool {
	if len(body) > 0 && (body[0] == '!' || body[0] == '^') {
		body = body[1:]
	}
	for i := 0; i < len(body); i++ {
		lo := body[i]
		if lo == '\\' && i+1 < len(body) {
			i++
			lo = body[i]
		}
		if i+2 < len(body) && body[i+1] == '-' {
			hi := body[i+2]
			if hi == '\\' && i+3 < len(body) {
				hi = body[i+3]
				i++
			}
			if lo <= c && c <= hi {
				return true
			}
			i += 2
			continue
		}
		if c == lo {
			return true
		}
	}
	return false
}

// ReadFile reads exclude patterns from the file at path, one a line, as
// rsync --exclude-from does: blank lines and lines starting with "#" or ";"
// are skipped, a trailing "\r" is dropped. Each pattern is checked as Parse
// does; an error names the file and the line.
func ReadFile(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read exclude file: %w", err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 4096), MaxPatternLen+2)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSuffix(sc.Text(), "\r")
		if strings.TrimSpace(line) == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if _, err := compile(line); err != nil {
			return nil, fmt.Errorf("%s line %d: exclude pattern %.80q: %w", path, n, line, err)
		}
		out = append(out, line)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read exclude file %s: %w (a line longer than %d bytes?)", path, err, MaxPatternLen)
	}
	return out, nil
}

// Merge returns the patterns of every list, in order, without repeating
// one: a task's own excludes and those of the master's --exclude add up.
func Merge(lists ...[]string) []string {
	seen := map[string]bool{}
	var out []string
	for _, l := range lists {
		for _, p := range l {
			if !seen[p] {
				seen[p] = true
				out = append(out, p)
			}
		}
	}
	return out
}
