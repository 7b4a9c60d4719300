// Package peer is the HTTP server every fanout host runs to serve the task
// tree it holds, and the client minions use to pull from it.
//
// A peer serves exactly one generation of one task tree at a time: its
// encoded manifest and the regular files that manifest lists, whole or from
// an offset. Nothing outside the task root, and no directory or symlink, is
// ever served. Every request except the health check is signed with a shared
// secret (see Sign and Verify).
package peer

import (
	"errors"

	"github.com/fanout/fanout/internal/manifest"
)

// Snapshot is one generation of one task tree as this host holds it.
type Snapshot struct {
	Gen int64
	// Digest is the hex BLAKE3-256 of Encoded, as published in Redis.
	Digest string
	// Encoded is the manifest exactly as served.
	Encoded []byte
	// Manifest is the decoded form of Encoded.
	Manifest *manifest.Manifest
	// Root is the absolute OS path of the task root on this host: a
	// directory, or the single file of a file task.
	Root string
	// Incoming, when set, lists the files of the tree this host is still
	// receiving: they are streamed as their bytes land instead of being
	// read from disk (pipelining). Nil means the whole tree is in place.
	Incoming *Incoming
}

// Errors a Client returns, each usable with errors.Is. The client wraps them
// with the request that failed and, for ErrUnavailable, with the cause.
var (
	// ErrStale means the peer does not serve the requested generation, or
	// its copy changed on disk since it published it.
	ErrStale = errors.New("peer does not serve that generation")
	// ErrUnauthorized means the peer refused the request's signature.
	ErrUnauthorized = errors.New("peer refused the request signature")
	// ErrNotFound means the peer's manifest has no such file.
	ErrNotFound = errors.New("peer has no such file")
	// ErrUnavailable means the peer could not be reached or broke off:
	// transport errors, timeouts, stalls, 5xx answers and short bodies.
	ErrUnavailable = errors.New("peer unavailable")
)

// Header names used between peers.
const (
	headerGeneration = "X-Fanout-Generation"
	headerTimestamp  = "X-Fanout-Timestamp"
	headerSignature  = "X-Fanout-Signature"
)
