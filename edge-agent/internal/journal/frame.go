package journal

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

const (
	frameVersion = 1
	crcSize      = 4
	headerSize   = crcSize + 1 // crc + version
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// checksum covers the record's index as well as its bytes, so a record read
// back at another index than it was written at fails the check.
func checksum(index uint64, body []byte) uint32 {
	var ib [8]byte
	binary.LittleEndian.PutUint64(ib[:], index)
	return crc32.Update(crc32.Update(0, castagnoli, ib[:]), castagnoli, body)
}

// appendFrame appends the frame for payload stored at index to dst.
func appendFrame(dst []byte, index uint64, payload []byte) []byte {
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0, frameVersion)
	dst = append(dst, payload...)
	binary.LittleEndian.PutUint32(dst[start:], checksum(index, dst[start+crcSize:]))
	return dst
}

// openFrame checks the frame stored at index and returns its payload, which
// aliases frame.
func openFrame(index uint64, frame []byte) ([]byte, error) {
	if len(frame) < headerSize {
		return nil, fmt.Errorf("frame is %d bytes, shorter than its %d-byte header", len(frame), headerSize)
	}
	if v := frame[crcSize]; v != frameVersion {
		return nil, fmt.Errorf("unknown frame version %d", v)
	}
	stored := binary.LittleEndian.Uint32(frame)
	if got := checksum(index, frame[crcSize:]); got != stored {
		return nil, fmt.Errorf("checksum mismatch: stored %08x, computed %08x", stored, got)
	}
	return frame[headerSize:], nil
}

// entrySize is how many bytes a record with a payload of n bytes takes in a
// segment file.
func entrySize(n int) int64 {
	f := uint64(n + headerSize)
	var buf [binary.MaxVarintLen64]byte
	return int64(binary.PutUvarint(buf[:], f)) + int64(f)
}
