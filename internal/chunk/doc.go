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
// DefaultParams is 32 KiB / 128 KiB / 512 KiB, chosen by measurement
// (TestMeasureChunking in internal/manifest; the table is in
// docs/PERFORMANCE.md). Two things pull the sizes apart. A relay serves a
// chunk only once all of it is verified, so in a pipelined chain every
// relay adds one chunk's transfer time: at 4 MiB/s a mean chunk of
// 584 KiB (128 KiB / 512 KiB / 2 MiB, the first default) costs 143 ms a
// relay, 4.4 s over 31 relays, more than the transfer itself; a mean of
// 147 KiB costs 36 ms. Smaller chunks also move fewer bytes for an edit
// (1 MiB inserted into a random file: 1.3 MiB lacked on average, 2.3 MiB
// at worst over 60 places; one byte changed: 155 KiB). Against that, the
// chunk list of a 50 GB file takes 33 MiB of manifest (728 KiB a GiB,
// 0.07% of the data) and 12 MiB of hash cache, four times the first
// default; 16 KiB / 64 KiB / 256 KiB would double that again for a
// relay delay that no longer dominates. Cutting runs at 0.9 to 1.6 GB/s a
// core whatever the sizes; BLAKE3 of the chunks costs more than cutting
// them.
package chunk
