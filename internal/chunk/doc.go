// Package chunk cuts byte streams into content-defined chunks and verifies
// streams against lists of chunk hashes.
//
// Cut points are chosen by the content around them (FastCDC: a gear rolling
// hash with normalized chunking), not by offset, so an insertion or a
// deletion changes only the chunks near it and every later chunk keeps its
// bytes and its hash. The same bytes give the same chunks on every run and
// platform: the gear table is a committed constant (see gengear.go) and the
// arithmetic is on uint64.
package chunk
