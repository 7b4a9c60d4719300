package manifest

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"github.com/zeebo/blake3"

	"github.com/fanout/fanout/internal/chunk"
	"github.com/fanout/fanout/internal/exclude"
)

// Manifest formats. All are the same JSON object; they differ in whether
// entries carry owners and chunk lists.
//
// Format 1 carries none: it is what masters before owners were carried
// publish, and all that minions of that time decode, since they refuse
// unknown fields. A format 1 manifest still decodes: its entries are applied
// as the local user, without setuid or setgid bits (see OwnerPolicy).
//
// Format 2 adds "user", "group", "uid" and "gid" to entries (all four, or
// the names left out when the building host had none). A master publishes
// format 1, with EncodeFormat(Format1), while minions older than format 2
// remain in the fleet, and format 2 once all are upgraded.
//
// Format 3 adds "chunking" to the manifest (the chunk.Params files were cut
// with) and "chunks" to each file of two or more content-defined chunks,
// whose Hash is then the hash of its chunk list (see Entry.Hash and
// ChunkListHash); a file of one chunk is described as in format 2. Minions
// that predate it refuse it (unknown fields), and a file's Hash differs
// between formats 2 and 3 as soon as it has two chunks, so a master
// publishes format 3 only once every host speaks a protocol that reads it;
// until then it publishes format 2 or 1 of the same build: Build with
// Options.WholeHash computes both hashes in one read (see WithoutChunks).
// Which format to publish is the caller's decision.
//
// Format 4 is format 3 with "exclude": the exclude patterns the tree was
// built with. A host must not delete (nor compare) what they match, so a
// manifest with excludes exists in format 4 only: minions that predate it
// refuse it (unknown field, and the generation's newer protocol) rather
// than delete excluded files.
const (
	Format1 = 1
	Format2 = 2
	Format3 = 3
	Format4 = 4
)

// Encode returns the canonical encoding of m as it is: the bytes that are
// served and whose digest is published. A manifest from Build carries
// owners, so it encodes in format 2, or in format 3 when it was built with
// Options.Chunking; see EncodeFormat for the older formats.
func (m *Manifest) Encode() ([]byte, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode manifest: %w", err)
	}
	return b, nil
}

// EncodeFormat returns the canonical encoding of m in the given format:
// Format3 is Encode of a manifest with chunks (an error without);
// Format2 is Encode of WithoutChunks; Format1 is Encode of WithoutChunks
// and WithoutOwners, which minions that predate owners can decode. A
// format 3 manifest gives formats 2 and 1 only if Build computed whole-file
// hashes (Options.WholeHash).
func (m *Manifest) EncodeFormat(format int) ([]byte, error) {
	if len(m.Exclude) > 0 && format != Format4 {
		return nil, fmt.Errorf("encode manifest in format %d: it has exclude patterns, which only format 4 carries (hosts of an older format would delete excluded files)", format)
	}
	switch format {
	case Format1, Format2:
		w, err := m.WithoutChunks()
		if err != nil {
			return nil, fmt.Errorf("encode manifest in format %d: %w", format, err)
		}
		if format == Format1 {
			w = w.WithoutOwners()
		}
		return w.Encode()
	case Format3, Format4:
		if m.Chunking == nil {
			return nil, fmt.Errorf("encode manifest in format %d: it has no chunk lists (build it with Options.Chunking)", format)
		}
		if format == Format4 && len(m.Exclude) == 0 {
			return nil, errors.New("encode manifest in format 4: it has no exclude patterns (format 3 describes it)")
		}
		return m.Encode()
	}
	return nil, fmt.Errorf("encode manifest: unknown format %d (want %d to %d)", format, Format1, Format4)
}

// WithoutOwners returns a copy of m whose entries carry no owner: the
// manifest as format 1 describes it, if m has no chunks.
func (m *Manifest) WithoutOwners() *Manifest {
	es := make([]Entry, len(m.Entries))
	for i, e := range m.Entries {
		e.User, e.Group, e.UID, e.GID = "", "", OwnerID{}, OwnerID{}
		es[i] = e
	}
	return &Manifest{Chunking: m.Chunking, Exclude: m.Exclude, Entries: es}
}

// WithoutChunks returns a copy of m as format 2 describes it: no chunking,
// and every file hashed by the BLAKE3 of its content. A file of two or more
// chunks needs the whole-file hash Build computes with Options.WholeHash
// (a decoded manifest has none): without it WithoutChunks returns an error
// naming the file. A manifest without chunking is copied as it is.
func (m *Manifest) WithoutChunks() (*Manifest, error) {
	es := make([]Entry, len(m.Entries))
	for i, e := range m.Entries {
		if len(e.Chunks) > 0 {
			if e.whole == "" {
				return nil, fmt.Errorf("%s has %d chunks and no whole-file hash (build with Options.WholeHash to publish format 2 or 1)", e.Path, len(e.Chunks))
			}
			e.Hash, e.Chunks = e.whole, nil
		}
		e.whole = ""
		es[i] = e
	}
	return &Manifest{Exclude: m.Exclude, Entries: es}, nil
}

// Format returns Format4 when m has exclude patterns, else Format3 when m
// has chunking, else Format2 when any entry carries an owner, else Format1.
func (m *Manifest) Format() int {
	if len(m.Exclude) > 0 {
		return Format4
	}
	if m.Chunking != nil {
		return Format3
	}
	for _, e := range m.Entries {
		if e.HasOwner() {
			return Format2
		}
	}
	return Format1
}

// Digest returns the hex BLAKE3-256 of an encoded manifest.
func Digest(b []byte) string {
	sum := blake3.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// ValidDigest reports whether s has the form of a Digest: 64 lowercase
// hex digits.
func ValidDigest(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range []byte(s) {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Limits bound what a decoded manifest may claim, so a malicious or broken
// peer cannot exhaust memory or disk.
type Limits struct {
	MaxEntries  int
	MaxBytes    int64 // encoded size
	MaxFileSize int64
	// MaxChunks bounds the chunks listed by all entries together (format
	// 3); zero allows none.
	MaxChunks int
}

// DefaultLimits returns the limits fanout uses: 5 million entries, 2 GiB of
// encoded manifest, 16 TiB per file, 20 million chunks (about the 2 GiB
// they take encoded, and 10 TiB of files at the default chunk sizes).
func DefaultLimits() Limits {
	return Limits{MaxEntries: 5_000_000, MaxBytes: 2 << 30, MaxFileSize: 16 << 40, MaxChunks: 20_000_000}
}

// Decode parses and validates an encoded manifest, in any format. Unknown
// fields are refused.
func Decode(b []byte, lim Limits) (*Manifest, error) {
	if int64(len(b)) > lim.MaxBytes {
		return nil, fmt.Errorf("manifest is %d bytes, more than the limit of %d", len(b), lim.MaxBytes)
	}
	// Count entries cheaply before allocating them all. `"path":` only
	// occurs as a key: inside a string a quote is escaped, and a "path"
	// value is followed by ',' or '}'. Whitespace before the colon evades
	// the count, but not Validate's exact one, and MaxBytes bounds memory.
	entries := bytes.Count(b, []byte(`"path":`))
	if entries > lim.MaxEntries {
		return nil, fmt.Errorf("manifest has about %d entries, more than the limit of %d", entries, lim.MaxEntries)
	}
	// The same for chunks, whose only key that is also nowhere else a key
	// is "off".
	if n := bytes.Count(b, []byte(`"off":`)); n > lim.MaxChunks {
		return nil, fmt.Errorf("manifest has about %d chunks, more than the limit of %d", n, lim.MaxChunks)
	}
	m, ok := decodeCanonical(b, entries)
	if !ok {
		m = &Manifest{}
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(m); err != nil {
			return nil, fmt.Errorf("decode manifest: %w", err)
		}
		if rest := bytes.Trim(b[dec.InputOffset():], " \t\r\n"); len(rest) > 0 {
			return nil, fmt.Errorf("decode manifest: %d bytes of trailing data after the manifest", len(rest))
		}
	}
	if len(m.Entries) == 0 {
		return nil, errors.New("manifest has no entries (a task always has a root)")
	}
	if err := m.Validate(lim); err != nil {
		return nil, err
	}
	return m, nil
}

const modeBits = fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky

// Validate checks that m is a well-formed tree: a root "." first (a file
// root is the only entry), valid paths in strictly increasing tree order,
// every parent present as a directory (so nothing can be placed under a
// symlink), and sane types, modes, sizes, hashes, targets and owners (ids in
// 0..2^31-1, names of 1..64 bytes without NUL, '/' or newline). In format 3
// it checks the chunking parameters and every chunk list (see
// validateChunks); in format 4 the exclude patterns, and that no entry
// matches them.
func (m *Manifest) Validate(lim Limits) error {
	if len(m.Entries) > lim.MaxEntries {
		return fmt.Errorf("manifest has %d entries, more than the limit of %d", len(m.Entries), lim.MaxEntries)
	}
	if m.Chunking != nil {
		if err := m.Chunking.Validate(); err != nil {
			return fmt.Errorf("manifest chunking: %w", err)
		}
	}
	var ex *exclude.List
	if len(m.Exclude) > 0 {
		if m.Chunking == nil {
			return errors.New("manifest has exclude patterns without chunking (format 4 is format 3 with excludes)")
		}
		var err error
		if ex, err = exclude.Parse(m.Exclude); err != nil {
			return fmt.Errorf("manifest: %w", err)
		}
	}
	chunks := 0
	if len(m.Entries) == 0 {
		return nil
	}
	root := m.Entries[0]
	if root.Path != "." {
		return fmt.Errorf("manifest entry 0 is %q, want the root \".\"", root.Path)
	}
	if root.Type != Dir && root.Type != File {
		return fmt.Errorf("manifest root is a %s, want a dir or a file", root.Type)
	}
	if root.Type == File && len(m.Entries) > 1 {
		return errors.New("manifest root is a file but has other entries")
	}
	dirs := map[string]bool{".": root.Type == Dir}
	for i, e := range m.Entries {
		bad := func(format string, a ...any) error {
			return fmt.Errorf("manifest entry %d (%q): %s", i, e.Path, fmt.Sprintf(format, a...))
		}
		if err := ValidPath(e.Path); err != nil {
			return bad("%v", err)
		}
		if i > 0 {
			if e.Path == "." {
				return bad("a second root")
			}
			if !Less(m.Entries[i-1].Path, e.Path) {
				return bad("out of tree order or duplicated after %q", m.Entries[i-1].Path)
			}
			if !dirs[parent(e.Path)] {
				return bad("parent %q is not a directory of the manifest", parent(e.Path))
			}
		}
		if err := validateOwner(e); err != nil {
			return bad("%v", err)
		}
		if ex.Match(e.Path, e.Type == Dir) {
			return bad("matched by the manifest's own exclude patterns")
		}
		if e.Mode&^modeBits != 0 {
			return bad("mode %#o has bits outside 07777 (permissions, setuid, setgid, sticky as fs.FileMode bits)", uint32(e.Mode))
		}
		if e.Type != File && len(e.Chunks) > 0 {
			return bad("a %s with chunks", e.Type)
		}
		switch e.Type {
		case Dir:
			dirs[e.Path] = true
			if e.Size != 0 || e.Hash != "" || e.Target != "" {
				return bad("a directory with a size, hash or target")
			}
		case File:
			if e.Size < 0 || e.Size > lim.MaxFileSize {
				return bad("size %d outside 0..%d", e.Size, lim.MaxFileSize)
			}
			if len(e.Hash) != 64 || strings.ToLower(e.Hash) != e.Hash {
				return bad("hash %q is not 64 lowercase hex digits", e.Hash)
			}
			if _, err := hex.DecodeString(e.Hash); err != nil {
				return bad("hash %q is not hex", e.Hash)
			}
			if e.Target != "" {
				return bad("a file with a symlink target")
			}
			if chunks += len(e.Chunks); chunks > lim.MaxChunks {
				return bad("more than the limit of %d chunks in the manifest", lim.MaxChunks)
			}
			if err := validateChunks(e, m.Chunking); err != nil {
				return bad("%v", err)
			}
		case Symlink:
			if e.Target == "" || len(e.Target) > maxPath || strings.IndexByte(e.Target, 0) >= 0 {
				return bad("symlink target must be 1..%d bytes without NUL", maxPath)
			}
			if e.Size != 0 || e.Hash != "" {
				return bad("a symlink with a size or hash")
			}
		default:
			return bad("unknown type %q", e.Type)
		}
	}
	return nil
}

// validateChunks checks the chunk list of file e in a manifest cut with p
// (nil: not format 3). A file of one chunk lists none, and is then at most
// p.Max bytes long. A list has two chunks or more, contiguous from offset 0
// to e.Size, each of 1..p.Max bytes and all but the last of p.Min at least,
// with 64 lowercase hex digit hashes; e.Hash must be their ChunkListHash, so
// that a file whose chunks verify is verified.
func validateChunks(e Entry, p *chunk.Params) error {
	if len(e.Chunks) == 0 {
		if p != nil && e.Size > int64(p.Max) {
			return fmt.Errorf("%d bytes in one chunk, more than the chunk maximum of %d", e.Size, p.Max)
		}
		return nil
	}
	if p == nil {
		return errors.New("lists chunks in a manifest without chunking")
	}
	if len(e.Chunks) == 1 {
		return errors.New("lists one chunk (a file of one chunk lists none)")
	}
	var off int64
	for i, c := range e.Chunks {
		switch {
		case c.Off != off:
			return fmt.Errorf("chunk %d at offset %d, want %d (chunks are contiguous from 0)", i, c.Off, off)
		case c.Len < 1 || c.Len > int64(p.Max):
			return fmt.Errorf("chunk %d of %d bytes, outside 1..%d", i, c.Len, p.Max)
		case c.Len < int64(p.Min) && i < len(e.Chunks)-1:
			return fmt.Errorf("chunk %d of %d bytes, less than the chunk minimum of %d and not the last", i, c.Len, p.Min)
		case len(c.Hash) != 64 || strings.ToLower(c.Hash) != c.Hash:
			return fmt.Errorf("chunk %d hash %.70q is not 64 lowercase hex digits", i, c.Hash)
		}
		off += c.Len
		if off > e.Size {
			return fmt.Errorf("chunks end at %d or later, past the size of %d", off, e.Size)
		}
	}
	if off != e.Size {
		return fmt.Errorf("chunks end at %d, not at the size of %d", off, e.Size)
	}
	h, err := ChunkListHash(e.Chunks)
	if err != nil {
		return err
	}
	if h != e.Hash {
		return fmt.Errorf("hash %.16s... is not the hash of its chunk list (%.16s...)", e.Hash, h)
	}
	return nil
}
