// Package chunk cuts byte streams into content-defined chunks and verifies
// streams against lists of chunk hashes.
//
// Cut points are chosen by the content around them, not by offset, so an
// insertion or a deletion changes only the chunks near it and every later
// chunk keeps its bytes and its hash: a host that holds the old version of
// a file lacks only those few chunks of the new one. The same bytes give
// the same chunks on every run and platform.
//
// # Algorithm
//
// It is FastCDC (Xia et al., 2016 and 2020): a gear rolling hash,
// h = h<<1 + gear[b], whose bits depend on the last 64 bytes only, tested
// against a mask after each byte. No cut is made before Params.Min bytes
// (hashing starts 64 bytes before, to fill the window) nor after
// Params.Max. Normalized chunking (level 2) tests a mask of log2(Avg)+2
// bits before Avg bytes and of log2(Avg)-2 bits after, which gathers chunk
// sizes around Avg. Masks take contiguous high bits of the hash, leaving
// the top three out so that the hash can advance four bytes a step with
// the shifts off its chain of additions, about twice the speed of one byte
// a step. The gear table is a committed constant: the BLAKE3 XOF output of
// "fanout chunk gear table v1" (see gengear.go); TestGolden pins cut points
// and TestMatchesReference compares them with a slow, obvious
// implementation.
//
// Chunker cuts an io.Reader through a buffer it reuses (no allocation per
// chunk); Cutter cuts buffers its caller manages. Verifier checks a stream
// against its chunk list as it is written, hashing on a goroutine of its
// own, and names the first bad chunk.
//
// # Sizes
//
// DefaultParams is 128 KiB / 512 KiB / 2 MiB, chosen by measurement
// (TestMeasureChunking in internal/manifest; the table is in
// docs/PERFORMANCE.md). On a 1 GiB random file with 1 MiB inserted at 301
// places, a host holding the old file lacked 2.4 MiB on average, 5.4 MiB at
// the 99th percentile and 7.1 MiB at worst, within the swarm's target of
// 8 MiB; with a 1 MiB average (256 KiB / 1 MiB / 4 MiB) it lacked 3.5 MiB
// on average but more than 8 MiB at 1% of the places (up to 12 MiB), and
// with a maximum of only twice the average, forced cuts delayed
// resynchronisation further (p99 13 MiB). One byte changed costs 640 KiB
// on average. The chunk list of a 50 GB file takes 8.4 MiB of manifest
// (184 KiB a GiB, 0.02% of the data) and 2.8 MiB of hash cache; a 256 KiB
// average would cut the bytes moved by a third but double both. Cutting
// runs at 0.9 to 1.6 GB/s a core on the build machine whatever the sizes;
// BLAKE3 of the chunks costs more than cutting them.
package chunk
