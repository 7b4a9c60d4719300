package cli

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Length limits for values read from Redis in the text outputs. Anyone who
// can write Redis, or register a host, chooses these values; the JSON
// outputs print them whole.
const (
	// maxCell bounds a table cell or an event field: a host id, an
	// address, a version, a source, an error or event message.
	maxCell = 120
	// maxLine bounds a path, or a value printed on a line of its own:
	// the task, a generation's path and error.
	maxLine = 1024
)

// truncMarker ends a value that printable cut short.
const truncMarker = "..."

// printable returns s made safe to print on a terminal, at most limit
// bytes long. Every rune that is not graphic is written as a visible Go
// escape: the C0 controls including newline, tab and ESC (\n, \t, \x1b),
// DEL (\x7f), the C1 controls U+0080-U+009F (\u009b), the bidirectional
// overrides and isolates U+202A-U+202E and U+2066-U+2069 (\u202e), and
// other format, line-separator, private-use and unassigned code points.
// Each byte of invalid UTF-8 becomes \xNN, and a backslash becomes \\, so
// an escape in the output always stands for what it shows. When the
// escaped text is longer than limit it is cut at a rune or escape boundary
// and ends with "..."; limit is taken to be at least len("...").
func printable(s string, limit int) string {
	limit = max(limit, len(truncMarker))
	var b strings.Builder
	cut := 0 // length of b at the last boundary that leaves room for the marker
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\\':
			b.WriteString(`\\`)
		case unicode.IsGraphic(r):
			b.WriteString(s[i : i+size])
		default:
			b.WriteString(escapeRune(r))
		}
		i += size
		if b.Len() <= limit-len(truncMarker) {
			cut = b.Len()
		} else if b.Len() > limit {
			// Stop here: a value of megabytes costs no more than one of
			// limit bytes.
			return b.String()[:cut] + truncMarker
		}
	}
	return b.String()
}

// escapeRune writes a rune that is not graphic as a Go escape.
func escapeRune(r rune) string {
	switch {
	case r == '\n':
		return `\n`
	case r == '\r':
		return `\r`
	case r == '\t':
		return `\t`
	case r < utf8.RuneSelf:
		return fmt.Sprintf(`\x%02x`, r)
	case r <= 0xffff:
		return fmt.Sprintf(`\u%04x`, r)
	default:
		return fmt.Sprintf(`\U%08x`, r)
	}
}
