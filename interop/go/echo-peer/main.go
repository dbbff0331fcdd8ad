// echo-peer is the cheapest registering side a relay benchmark can put behind a
// relay: it registers (the seed protocol, or v2 under -name with -sessions K on
// one public port), prints "HOST:PORT" once, and answers every stream the relay
// opens with the stream's own bytes, then FIN.
//
// It speaks just enough yamux itself (not hashicorp/yamux, whose per-frame
// channels and locks cost more CPU per byte than the relay under test): one
// goroutine per session reads frames and queues the answers (a payload is read
// straight into the answer), which go out in one write per batch of frames read. A stream's bytes
// are echoed as far as the relay's window for it allows; the rest wait, and the
// relay's window for us is granted back only as bytes are echoed, so what waits
// is at most one window per stream. Pings are answered; a Go Away, an RST or the
// end of the connection ends what it concerns.
package main

import (
	"bufio"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	registration "relayinterop/register"
)

const (
	typeData   = 0
	typeWindow = 1
	typePing   = 2
	typeGoAway = 3

	flagSYN = 1
	flagACK = 2
	flagFIN = 4
	flagRST = 8

	initialWindow = 256 * 1024
	headerSize    = 12
	flushAt       = 1 << 20
	readBuffer    = 64 << 10 // a payload longer than this is read straight into the answer
)

var (
	relayAddr = flag.String("relay", "", "relay control address HOST:PORT")
	name      = flag.String("name", "", "register v2 under this name (a relay without auth)")
	sessions  = flag.Int("sessions", 1, "sessions of -name on one public port (1-16)")
	window    = flag.Int("window", initialWindow, "receive window granted per stream (>= 262144)")
	timeout   = flag.Duration("timeout", 10*time.Second, "dial and port-line timeout")
)

type stream struct {
	sendWindow int64  // bytes the relay lets us send on it
	pending    []byte // received, not echoed yet (waiting for window)
	finIn      bool   // the relay sent FIN
	finOut     bool   // we sent FIN
}

type session struct {
	conn    net.Conn
	in      *bufio.Reader
	out     []byte
	streams map[uint32]*stream
}

func main() {
	flag.Parse()
	log.SetOutput(os.Stderr)
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	if *relayAddr == "" || flag.NArg() > 0 || *window < initialWindow {
		fmt.Fprintln(os.Stderr, "usage: echo-peer -relay HOST:PORT [-name NAME [-sessions K]] [-window BYTES]")
		flag.PrintDefaults()
		os.Exit(2)
	}
	relayHost, _, err := net.SplitHostPort(*relayAddr)
	if err != nil {
		log.Fatalf("bad -relay %q: %v", *relayAddr, err)
	}
	options := registration.Options{Relay: *relayAddr, Name: *name, Sessions: *sessions, Timeout: *timeout}
	var wg sync.WaitGroup
	var port int
	for i := 1; i <= *sessions; i++ {
		c, got, err := registration.Dial(options)
		if err != nil {
			log.Fatalf("relay %s, session %d: %v", *relayAddr, i, err)
		}
		if i == 1 {
			port = got
			fmt.Printf("%s\n", net.JoinHostPort(relayHost, strconv.Itoa(port)))
		} else if got != port {
			log.Fatalf("session %d got port %d, not %d", i, got, port)
		}
		log.Printf("session %d: echoing %s:%d", i, relayHost, port)
		wg.Add(1)
		go func(c net.Conn) {
			defer wg.Done()
			s := &session{conn: c, in: bufio.NewReaderSize(c, readBuffer), streams: map[uint32]*stream{}}
			log.Printf("session ended: %v", s.run())
		}(c)
	}
	wg.Wait()
}

func (s *session) run() error {
	defer s.conn.Close()
	var header [headerSize]byte
	for {
		if _, err := io.ReadFull(s.in, header[:]); err != nil {
			return err
		}
		if header[0] != 0 {
			return fmt.Errorf("yamux version %d", header[0])
		}
		kind, flags := header[1], binary.BigEndian.Uint16(header[2:4])
		id, length := binary.BigEndian.Uint32(header[4:8]), binary.BigEndian.Uint32(header[8:12])
		switch kind {
		case typeData, typeWindow:
			if err := s.frame(kind, flags, id, length); err != nil {
				return err
			}
		case typePing:
			if flags&flagSYN != 0 {
				s.header(typePing, flagACK, 0, length)
			}
		case typeGoAway:
			return fmt.Errorf("go away (code %d)", length)
		default:
			return fmt.Errorf("frame type %d", kind)
		}
		// Everything read so far is answered: write the answers in one go when the
		// next read would wait (or when they pile up).
		if s.in.Buffered() < headerSize || len(s.out) >= flushAt {
			if err := s.flush(); err != nil {
				return err
			}
		}
	}
}

func (s *session) frame(kind uint8, flags uint16, id, length uint32) error {
	st := s.streams[id]
	if flags&flagSYN != 0 {
		st = &stream{sendWindow: initialWindow}
		s.streams[id] = st
		s.header(typeWindow, flagACK, id, uint32(*window-initialWindow))
	}
	if flags&flagRST != 0 {
		delete(s.streams, id)
	}
	if st == nil || flags&flagRST != 0 { // a stream we do not know (any more): skip its bytes
		if kind == typeData {
			_, err := s.in.Discard(int(length))
			return err
		}
		return nil
	}
	if kind == typeWindow {
		st.sendWindow += int64(length)
	} else if length > 0 {
		if err := s.data(id, st, int64(length)); err != nil {
			return err
		}
	}
	if flags&flagFIN != 0 {
		st.finIn = true
	}
	s.echo(id, st)
	return nil
}

// data takes a data frame's payload: what the window allows goes straight into
// the answer (no copy of its own, no allocation), the rest waits in pending.
func (s *session) data(id uint32, st *stream, length int64) error {
	direct := int64(0)
	if len(st.pending) == 0 {
		direct = length
		if direct > st.sendWindow {
			direct = st.sendWindow
		}
	}
	if direct > 0 {
		s.header(typeData, 0, id, uint32(direct))
		start := len(s.out)
		s.out = grow(s.out, int(direct))
		if _, err := io.ReadFull(s.in, s.out[start:]); err != nil {
			return err
		}
		st.sendWindow -= direct
		s.header(typeWindow, 0, id, uint32(direct))
	}
	if rest := length - direct; rest > 0 {
		start := len(st.pending)
		st.pending = grow(st.pending, int(rest))
		if _, err := io.ReadFull(s.in, st.pending[start:]); err != nil {
			return err
		}
	}
	return nil
}

// grow extends b by n bytes, reusing its capacity (no allocation, nor zeroing, in the
// steady state: the bytes are overwritten at once).
func grow(b []byte, n int) []byte {
	if len(b)+n > cap(b) {
		bigger := make([]byte, len(b), 2*cap(b)+n)
		copy(bigger, b)
		b = bigger
	}
	return b[:len(b)+n]
}

// echo sends what the window allows of the stream's pending bytes, grants the
// relay that much window back, and sends FIN once everything is echoed.
func (s *session) echo(id uint32, st *stream) {
	n := int64(len(st.pending))
	if n > st.sendWindow {
		n = st.sendWindow
	}
	if n > 0 {
		s.header(typeData, 0, id, uint32(n))
		s.out = append(s.out, st.pending[:n]...)
		st.pending = st.pending[:copy(st.pending, st.pending[n:])]
		st.sendWindow -= n
		s.header(typeWindow, 0, id, uint32(n))
	}
	if len(st.pending) == 0 {
		if st.finIn && !st.finOut {
			st.finOut = true
			s.header(typeData, flagFIN, id, 0)
			delete(s.streams, id)
		}
	}
}

func (s *session) header(kind uint8, flags uint16, id, length uint32) {
	var h [headerSize]byte
	h[1] = kind
	binary.BigEndian.PutUint16(h[2:4], flags)
	binary.BigEndian.PutUint32(h[4:8], id)
	binary.BigEndian.PutUint32(h[8:12], length)
	s.out = append(s.out, h[:]...)
}

func (s *session) flush() error {
	if len(s.out) == 0 {
		return nil
	}
	_, err := s.conn.Write(s.out)
	s.out = s.out[:0]
	return err
}
