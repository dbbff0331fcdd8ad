package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ---- payload ----

// patternLen is deliberately not a power of two: a reordered or duplicated
// 64 KiB frame changes the digest instead of repeating identical bytes.
const patternLen = 1<<20 + 7

var pattern []byte

func initPattern(seed int64) {
	pattern = make([]byte, patternLen*2) // doubled so any window of patternLen is contiguous
	r := rand.New(rand.NewSource(seed))
	r.Read(pattern[:patternLen])
	copy(pattern[patternLen:], pattern[:patternLen])
}

// payloadChunk returns up to max bytes of the pattern starting at stream position pos
// (offset by a per-stream salt so streams carry different bytes).
func payloadChunk(salt, pos int64, max int) []byte {
	off := int((salt*7919 + pos) % patternLen)
	if max > patternLen {
		max = patternLen
	}
	return pattern[off : off+max]
}

// writePayload writes n pattern bytes in writes of at most chunk bytes, hashing them.
func writePayload(w io.Writer, n int64, salt int64, chunk int, h hash.Hash, m *meter) error {
	var pos int64
	for pos < n {
		k := int64(chunk)
		if n-pos < k {
			k = n - pos
		}
		b := payloadChunk(salt, pos, int(k))
		written, err := w.Write(b)
		if written > 0 && h != nil {
			h.Write(b[:written])
		}
		pos += int64(written)
		m.add(int64(written))
		if err != nil {
			return fmt.Errorf("write failed after %d of %d bytes: %w", pos, n, err)
		}
	}
	return nil
}

// bigPayload returns n pattern bytes in one buffer (for single large writes).
func bigPayload(salt, n int64) []byte {
	b := make([]byte, n)
	var pos int64
	for pos < n {
		pos += int64(copy(b[pos:], payloadChunk(salt, pos, int(n-pos))))
	}
	return b
}

func hexsum(h hash.Hash) string { return hex.EncodeToString(h.Sum(nil)) }

// readN reads exactly n bytes into a hash.
func readN(r io.Reader, n int64, h hash.Hash, m *meter) error {
	got, err := io.CopyN(io.MultiWriter(h, m), r, n)
	if err != nil {
		return fmt.Errorf("short read: got %d of %d bytes: %w", got, n, err)
	}
	return nil
}

// readAll reads until EOF; returns count and digest.
func readAll(r io.Reader, m *meter) (int64, string, error) {
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(h, m), r)
	return n, hexsum(h), err
}

const maxLine = 256

// readLine reads one "\n"-terminated line (without the newline).
func readLine(br *bufio.Reader) (string, error) {
	var sb strings.Builder
	for {
		c, err := br.ReadByte()
		if err != nil {
			if sb.Len() > 0 {
				return "", fmt.Errorf("line %q cut short: %w", sb.String(), err)
			}
			return "", fmt.Errorf("reading line: %w", err)
		}
		if c == '\n' {
			return sb.String(), nil
		}
		if sb.Len() >= maxLine {
			return "", fmt.Errorf("line longer than %d bytes: %q...", maxLine, sb.String()[:40])
		}
		sb.WriteByte(c)
	}
}

// expectLine reads a line and checks it equals want.
func expectLine(br *bufio.Reader, want string) error {
	got, err := readLine(br)
	if err != nil {
		return fmt.Errorf("expected line %q: %w", want, err)
	}
	if got != want {
		return fmt.Errorf("expected line %q, got %q", want, got)
	}
	return nil
}

// expectEOF checks the peer half-closed the stream with nothing more to say.
func expectEOF(r io.Reader) error {
	buf := make([]byte, 4096)
	var extra int
	for {
		n, err := r.Read(buf)
		extra += n
		if err == io.EOF {
			if extra > 0 {
				return fmt.Errorf("expected EOF, got %d extra bytes first", extra)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("expected EOF, got error after %d extra bytes: %w", extra, err)
		}
	}
}

// pollReader works around Debian's hashicorp/yamux ending reads after a LOCAL
// Close: in that state Read returns io.EOF whenever its buffer happens to be
// empty, although the peer's data still arrives. Only a caller that knows how
// many bytes to expect can read after its own FIN; it retries on EOF until the
// bytes arrive or nothing came for `idle`.
type pollReader struct {
	r    io.Reader
	idle time.Duration
}

func (p pollReader) Read(b []byte) (int, error) {
	last := time.Now()
	for {
		n, err := p.r.Read(b)
		if n > 0 || (err != nil && err != io.EOF) {
			return n, err
		}
		if time.Since(last) > p.idle {
			return 0, io.EOF
		}
		time.Sleep(time.Millisecond)
	}
}

// ---- meters: progress kept for failure and timeout reports ----

type meter struct {
	name     string
	expected int64
	seen     atomic.Int64
}

func (m *meter) add(n int64) {
	if m != nil {
		m.seen.Add(n)
	}
}

// Write lets a meter count bytes passing through io.MultiWriter.
func (m *meter) Write(b []byte) (int, error) {
	m.add(int64(len(b)))
	return len(b), nil
}

var (
	metersMu sync.Mutex
	meters   []*meter
)

func newMeter(expected int64, format string, args ...any) *meter {
	m := &meter{name: fmt.Sprintf(format, args...), expected: expected}
	metersMu.Lock()
	meters = append(meters, m)
	metersMu.Unlock()
	return m
}

// unfinishedMeters lists meters whose byte count is not what was expected.
func unfinishedMeters(limit int) []string {
	metersMu.Lock()
	defer metersMu.Unlock()
	var out []string
	for _, m := range meters {
		if s := m.seen.Load(); s != m.expected {
			out = append(out, fmt.Sprintf("%s: seen %d of %d bytes", m.name, s, m.expected))
		}
	}
	sort.Strings(out)
	if len(out) > limit {
		more := len(out) - limit
		out = append(out[:limit], fmt.Sprintf("... and %d more", more))
	}
	return out
}

// ---- failures ----

type failures struct {
	mu   sync.Mutex
	list []string
}

func (f *failures) add(format string, args ...any) {
	f.mu.Lock()
	f.list = append(f.list, fmt.Sprintf(format, args...))
	f.mu.Unlock()
}

func (f *failures) addErr(what string, err error) {
	if err != nil {
		f.add("%s: %v", what, err)
	}
}

func (f *failures) all() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.list...)
}

var errNotReset = errors.New("expected a stream reset")
