package journal

import (
	"encoding/binary"
	"fmt"
	"os"
	"strings"
)

// maxListed bounds RecoveryReport.Corrupt, so a segment full of damage does
// not make a huge report.
const maxListed = 100

// RecoveryReport says what Open found wrong at the end of the log and what
// it did about it. The zero value means the log was clean.
type RecoveryReport struct {
	// Segment is the segment file that was cut; empty when nothing was cut.
	Segment string
	// Offset is the size Segment was cut back to: the end of its last valid
	// record.
	Offset int64
	// BytesDropped is how many bytes were cut from the end of Segment.
	BytesDropped int64
	// RecordsDropped counts the complete entries that were cut because their
	// frame or checksum was invalid. A torn entry is not counted here.
	RecordsDropped int
	// Torn is true when Segment ended in an incomplete entry: a write
	// interrupted by a crash or by a full disk.
	Torn bool
	// FirstDropped is the index the first cut entry had. Appends after Open
	// get this index and the ones after it again.
	FirstDropped uint64
	// Corrupt lists (at most 100 of) the indices in the last segment whose
	// checksum fails but which were kept, because valid records follow
	// them; Read returns an error wrapping ErrCorrupt for each.
	// CorruptCount is how many there are in all.
	Corrupt      []uint64
	CorruptCount int
	// StaleFiles are leftovers of a truncation interrupted by a crash that
	// Open removed.
	StaleFiles []string
	// Reason says in one line what was cut and why; empty when nothing was.
	Reason string
}

// Cut reports whether Open removed bytes from the log.
func (r RecoveryReport) Cut() bool { return r.BytesDropped > 0 }

// tailScan is what scanSegment finds in a segment.
type tailScan struct {
	valid        int64  // offset just past the last valid entry
	next         uint64 // index after the last valid entry
	torn         bool   // ends in an incomplete entry
	invalidTail  int    // complete but invalid entries after valid
	corrupt      []uint64
	corruptCount int
}

// scanSegment walks the entries of a segment whose first index is base. The
// trailing run of entries that are torn or fail their check is what a crash
// can leave; invalid entries followed by valid ones are corruption of
// written data and are only counted.
func scanSegment(b []byte, base uint64) tailScan {
	s := tailScan{next: base}
	var off int64
	idx := base
	badRun := 0 // invalid entries since the last valid one
	for off < int64(len(b)) {
		size, n := binary.Uvarint(b[off:])
		if n <= 0 || size > uint64(int64(len(b))-off-int64(n)) {
			s.torn = true
			break
		}
		end := off + int64(n) + int64(size)
		if _, err := openFrame(idx, b[off+int64(n):end]); err != nil {
			badRun++
		} else {
			for i := idx - uint64(badRun); i < idx; i++ {
				if len(s.corrupt) < maxListed {
					s.corrupt = append(s.corrupt, i)
				}
				s.corruptCount++
			}
			badRun = 0
			s.valid = end
			s.next = idx + 1
		}
		off = end
		idx++
	}
	s.invalidTail = badRun
	return s
}

// inspectTail scans the last segment of dir. ok is false when there is none.
func inspectTail(dir string) (seg segment, s tailScan, ok bool, err error) {
	segs, err := listSegments(dir)
	if err != nil || len(segs) == 0 {
		return segment{}, tailScan{}, false, err
	}
	seg = segs[len(segs)-1]
	b, err := os.ReadFile(seg.path)
	if err != nil {
		return segment{}, tailScan{}, false, err
	}
	seg.size = int64(len(b))
	return seg, scanSegment(b, seg.index), true, nil
}

// repairTail cuts the last segment of dir back to the end of its last valid
// record, if anything follows it, and reports what it found.
func repairTail(dir string) (RecoveryReport, error) {
	seg, s, ok, err := inspectTail(dir)
	if err != nil || !ok {
		return RecoveryReport{}, err
	}
	rep := RecoveryReport{Corrupt: s.corrupt, CorruptCount: s.corruptCount}
	if s.valid == seg.size {
		return rep, nil
	}
	f, err := os.OpenFile(seg.path, os.O_WRONLY, 0)
	if err != nil {
		return rep, err
	}
	err = f.Truncate(s.valid)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return rep, fmt.Errorf("cut %s to %d bytes: %w", seg.path, s.valid, err)
	}
	rep.Segment = seg.path
	rep.Offset = s.valid
	rep.BytesDropped = seg.size - s.valid
	rep.RecordsDropped = s.invalidTail
	rep.Torn = s.torn
	rep.FirstDropped = s.next
	var why []string
	if s.invalidTail > 0 {
		why = append(why, fmt.Sprintf("the last %d entries fail their checksum", s.invalidTail))
		if s.invalidTail == 1 {
			why[0] = "the last entry fails its checksum"
		}
	}
	if s.torn {
		why = append(why, "the last entry is incomplete (interrupted write)")
	}
	rep.Reason = fmt.Sprintf("cut %d bytes from %s at offset %d: %s",
		rep.BytesDropped, seg.path, s.valid, strings.Join(why, "; "))
	return rep, nil
}
