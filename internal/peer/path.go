package peer

import "strings"

// validPath reports whether p is a manifest path a peer may be asked for:
// "." alone (the root of a file task), or a slash-separated relative path
// whose components are neither empty, ".", nor "..", without NUL bytes.
func validPath(p string) bool {
	if p == "." {
		return true
	}
	if p == "" || strings.IndexByte(p, 0) >= 0 {
		return false
	}
	for c := range strings.SplitSeq(p, "/") {
		if c == "" || c == "." || c == ".." {
			return false
		}
	}
	return true
}
