package main

// tapConn sits between hashicorp/yamux and the TCP connection. It exists because
// Debian's hashicorp/yamux snapshot (2019) exposes too little to test a peer:
//
//   - it watches the frames in both directions, so the peer can check wire-level
//     facts (who sent RST, how large a Data frame went out, pings seen, SYNs after a
//     go-away) instead of guessing from API results;
//   - it can inject a RST frame at a frame boundary, because that snapshot has no
//     Stream.Reset (it only ever sends RST to refuse a stream);
//   - its Close is a lingering close (shutdown write, drain until the peer closes or
//     a deadline passes), so ending a session never makes the kernel answer unread
//     bytes with a TCP RST that could destroy data the other side has not read yet.
//     With abrupt=true Close is a plain close (used by the closebusy scenario).

import (
	"encoding/binary"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

const (
	frameData         = 0
	frameWindowUpdate = 1
	framePing         = 2
	frameGoAway       = 3

	flagSYN = 1
	flagACK = 2
	flagFIN = 4
	flagRST = 8

	headerLen     = 12
	initialWindow = 256 * 1024
)

// wireStats counts what went by in one direction.
type wireStats struct {
	Frames     [4]int64 // per frame type
	Invalid    int64    // headers with a bad version or type
	SYN        int64    // SYN on Data/WindowUpdate (stream opens)
	ACK        int64
	FIN        int64
	RST        int64
	DataBytes  int64
	MaxData    uint32 // largest Data frame payload
	PingReq    int64
	PingResp   int64
	GoAway     int64
	GoAwayCode uint32 // code of the last Go Away
	MaxGrant   uint32 // largest window delta carried by a SYN or ACK frame
}

func (w wireStats) String() string {
	return fmt.Sprintf("frames=%d/%d/%d/%d syn=%d ack=%d fin=%d rst=%d data=%d maxframe=%d "+
		"pingreq=%d pingresp=%d goaway=%d maxgrant=%d invalid=%d",
		w.Frames[0], w.Frames[1], w.Frames[2], w.Frames[3], w.SYN, w.ACK, w.FIN, w.RST,
		w.DataBytes, w.MaxData, w.PingReq, w.PingResp, w.GoAway, w.MaxGrant, w.Invalid)
}

// frameParser follows frame boundaries in a byte stream.
type frameParser struct {
	hdr      [headerLen]byte
	have     int
	bodyLeft uint32
}

func (p *frameParser) atBoundary() bool { return p.have == 0 && p.bodyLeft == 0 }

// feed consumes b and calls onFrame for every complete header.
func (p *frameParser) feed(b []byte, onFrame func(typ uint8, flags uint16, id, length uint32, valid bool)) {
	for len(b) > 0 {
		if p.bodyLeft > 0 {
			k := uint32(len(b))
			if k > p.bodyLeft {
				k = p.bodyLeft
			}
			b = b[k:]
			p.bodyLeft -= k
			continue
		}
		k := copy(p.hdr[p.have:], b)
		p.have += k
		b = b[k:]
		if p.have < headerLen {
			return
		}
		p.have = 0
		typ := p.hdr[1]
		flags := binary.BigEndian.Uint16(p.hdr[2:4])
		id := binary.BigEndian.Uint32(p.hdr[4:8])
		length := binary.BigEndian.Uint32(p.hdr[8:12])
		valid := p.hdr[0] == 0 && typ <= frameGoAway
		onFrame(typ, flags, id, length, valid)
		if valid && typ == frameData {
			p.bodyLeft = length
		}
	}
}

type tapConn struct {
	net.Conn
	linger time.Duration
	abrupt bool

	wmu     sync.Mutex // serialises writes, the outgoing parser and injections
	out     frameParser
	pending []byte // injected frames waiting for a frame boundary

	in frameParser // only the yamux recv goroutine reads

	smu            sync.Mutex
	sent, recv     wireStats
	goAwaySent     bool
	synAfterGoAway int64 // stream opens received after we sent a Go Away

	closeOnce sync.Once
	closing   int32
}

func newTap(c net.Conn, linger time.Duration, abrupt bool) *tapConn {
	return &tapConn{Conn: c, linger: linger, abrupt: abrupt}
}

func (t *tapConn) count(sent bool) func(uint8, uint16, uint32, uint32, bool) {
	return func(typ uint8, flags uint16, id, length uint32, valid bool) {
		t.smu.Lock()
		defer t.smu.Unlock()
		w := &t.recv
		if sent {
			w = &t.sent
		}
		if !valid {
			w.Invalid++
			return
		}
		w.Frames[typ]++
		switch typ {
		case frameData, frameWindowUpdate:
			if flags&flagSYN != 0 {
				w.SYN++
				if !sent && t.goAwaySent {
					t.synAfterGoAway++
				}
			}
			if flags&flagACK != 0 {
				w.ACK++
			}
			if flags&flagFIN != 0 {
				w.FIN++
			}
			if flags&flagRST != 0 {
				w.RST++
			}
			if typ == frameData {
				w.DataBytes += int64(length)
				if length > w.MaxData {
					w.MaxData = length
				}
			} else if flags&(flagSYN|flagACK) != 0 && length > w.MaxGrant {
				w.MaxGrant = length
			}
		case framePing:
			if flags&flagSYN != 0 {
				w.PingReq++
			}
			if flags&flagACK != 0 {
				w.PingResp++
			}
		case frameGoAway:
			w.GoAway++
			w.GoAwayCode = length
			if sent {
				t.goAwaySent = true
			}
		}
	}
}

func (t *tapConn) Read(b []byte) (int, error) {
	n, err := t.Conn.Read(b)
	if n > 0 {
		t.in.feed(b[:n], t.count(false))
	}
	if err != nil && atomic.LoadInt32(&t.closing) == 1 {
		_ = t.Conn.Close()
	}
	return n, err
}

func (t *tapConn) Write(b []byte) (int, error) {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	n, err := t.Conn.Write(b)
	if n > 0 {
		t.out.feed(b[:n], t.count(true))
	}
	if err == nil && len(t.pending) > 0 && t.out.atBoundary() {
		err = t.flushPendingLocked()
	}
	return n, err
}

func (t *tapConn) flushPendingLocked() error {
	p := t.pending
	t.pending = nil
	_, err := t.Conn.Write(p)
	t.out.feed(p, t.count(true))
	return err
}

// injectRST sends a RST for stream id at the next frame boundary (hashicorp's
// send goroutine writes a header and its body with two Write calls).
func (t *tapConn) injectRST(id uint32) error {
	frame := make([]byte, headerLen)
	frame[1] = frameWindowUpdate
	binary.BigEndian.PutUint16(frame[2:4], flagRST)
	binary.BigEndian.PutUint32(frame[4:8], id)
	t.wmu.Lock()
	defer t.wmu.Unlock()
	t.pending = append(t.pending, frame...)
	if t.out.atBoundary() {
		return t.flushPendingLocked()
	}
	return nil
}

// Close is called by hashicorp's Session.Close; see the type comment.
func (t *tapConn) Close() error {
	t.closeOnce.Do(func() {
		atomic.StoreInt32(&t.closing, 1)
		tc, ok := t.Conn.(*net.TCPConn)
		if t.abrupt || t.linger <= 0 || !ok {
			_ = t.Conn.Close()
			return
		}
		_ = tc.CloseWrite()
		_ = t.Conn.SetReadDeadline(time.Now().Add(t.linger))
		time.AfterFunc(t.linger, func() { _ = t.Conn.Close() })
	})
	return nil
}

// finish releases the socket for good (end of the program).
func (t *tapConn) finish() {
	atomic.StoreInt32(&t.closing, 1)
	_ = t.Conn.Close()
}

func (t *tapConn) stats() (sent, recv wireStats, synAfterGoAway int64) {
	t.smu.Lock()
	defer t.smu.Unlock()
	return t.sent, t.recv, t.synAfterGoAway
}
