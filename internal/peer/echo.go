package peer

import (
	"strconv"
)

// maxEcho is how many bytes of text taken from a request (a URI, a query
// parameter, a header) an error message, a response body or a log line
// repeats: enough to recognise it, too little to amplify it.
const maxEcho = 200

// clip returns s, or its first maxEcho bytes followed by a marker giving
// its full length.
func clip(s string) string {
	if len(s) <= maxEcho {
		return s
	}
	return s[:maxEcho] + "...(" + strconv.Itoa(len(s)) + " bytes)"
}

// quote returns s as a Go string literal, as %q writes it, cut to maxEcho
// bytes first with a marker giving its full length.
func quote(s string) string {
	if len(s) <= maxEcho {
		return strconv.Quote(s)
	}
	return strconv.Quote(s[:maxEcho]) + "...(" + strconv.Itoa(len(s)) + " bytes)"
}
