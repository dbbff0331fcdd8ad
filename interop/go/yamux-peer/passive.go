package main

// The PASSIVE half (yamux server): accepts every stream, reads its command line
// and serves it. After the session ends it checks that the scenario's commands
// were served. See interop/SCENARIOS.md.

import (
	"bufio"
	"crypto/sha256"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

type passiveState struct {
	handlers sync.WaitGroup // one per accepted stream; BYE's handler removes itself
	byeSeen  bool
	checked  bool
	mu       sync.Mutex
	served   map[string]int // command -> streams served successfully
	ended    chan struct{}  // closed when the session is over
	endAt    time.Time
	// closebusy: when each busy operation ended
	busyEnds []time.Time
}

func runPassive(p *peer) {
	ps := &passiveState{served: map[string]int{}, ended: make(chan struct{})}
	var wg sync.WaitGroup
	for {
		st, err := p.sess.AcceptStream()
		if err != nil {
			break
		}
		wg.Add(1)
		ps.handlers.Add(1)
		go func() {
			defer wg.Done()
			p.serve(ps, st)
		}()
	}
	ps.mu.Lock()
	ps.endAt = time.Now()
	ps.mu.Unlock()
	close(ps.ended)

	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		p.fails.add("stream handlers still running 10s after the session ended")
	}
	ps.mu.Lock()
	bye, checked := ps.byeSeen, ps.checked
	ps.mu.Unlock()
	if !bye && p.o.scenario != "closebusy" {
		p.fails.add("the session ended without BYE on the control stream")
	}
	if !checked {
		p.checkServed(ps)
	}
}

// serveBye answers BYE once every other stream handler has finished, with the
// verdict of this side: "BYE OK" or "BYE FAIL <first problems>"; then FIN.
func (p *peer) serveBye(ps *passiveState, st *yamux.Stream) error {
	ps.handlers.Done() // do not wait for ourselves
	ps.handlers.Wait()
	p.checkServed(ps)
	ps.mu.Lock()
	ps.byeSeen, ps.checked = true, true
	ps.mu.Unlock()
	verdict := "BYE OK"
	if fl := p.fails.all(); len(fl) > 0 {
		msg := strings.Join(fl, "; ")
		if len(msg) > 200 {
			msg = msg[:200] + "..."
		}
		verdict = "BYE FAIL " + strings.ReplaceAll(msg, "\n", " ")
	}
	if _, err := fmt.Fprintf(st, "%s\n", verdict); err != nil {
		return err
	}
	return st.Close()
}

func (p *peer) serve(ps *passiveState, st *yamux.Stream) {
	isBye := false
	defer func() {
		if !isBye {
			ps.handlers.Done()
		}
	}()
	br := bufio.NewReaderSize(st, 64<<10)
	line, err := readLine(br)
	if err != nil {
		p.fails.addErr(fmt.Sprintf("stream %d: command line", st.StreamID()), err)
		return
	}
	f := strings.Fields(line)
	what := fmt.Sprintf("%s stream %d", line, st.StreamID())
	nums := make([]int64, 0, 2)
	for _, s := range f[min(1, len(f)):] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v < 0 {
			p.fails.add("%s: bad number %q", what, s)
			_ = st.Close()
			return
		}
		nums = append(nums, v)
	}
	arity := map[string]int{
		"ECHO": 1, "XFER": 2, "HALFCLOSE": 1, "HALFCLOSE-REV": 1, "EXPECT-RST": 0, "SEND-RST": 0,
		"PING": 1, "EXPECT-GOAWAY": 0, "SEND-GOAWAY": 0, "BIGWRITE": 1, "HOLD": 0, "FLOOD": 0, "STALL": 0,
		"BYE": 0,
	}
	cmd := ""
	if len(f) > 0 {
		cmd = f[0]
	}
	want, known := arity[cmd]
	if !known || want != len(nums) {
		p.fails.add("stream %d: unknown command line %q", st.StreamID(), line)
		_ = st.Close()
		return
	}
	salt := int64(st.StreamID())
	if cmd == "BYE" {
		isBye = true
		if err := p.serveBye(ps, st); err != nil {
			p.fails.addErr("BYE", err)
		}
		return
	}
	switch cmd {
	case "ECHO":
		err = p.serveEcho(st, br, nums[0])
	case "XFER":
		err = p.serveXfer(st, br, nums[0], nums[1], salt)
	case "HALFCLOSE":
		err = p.drainerSide(st, br, nums[0], salt)
	case "HALFCLOSE-REV":
		err = p.closerSide(st, br, p.o.size.v, nums[0], salt)
	case "EXPECT-RST":
		if _, err = st.Write([]byte("READY\n")); err == nil {
			err = seeReset(st, br)
		}
	case "SEND-RST":
		err = p.tap.injectRST(st.StreamID())
	case "PING":
		err = p.servePing(st, int(nums[0]))
	case "EXPECT-GOAWAY":
		err = p.serveExpectGoAway(st, br)
	case "SEND-GOAWAY":
		err = p.serveSendGoAway(st, br)
	case "BIGWRITE":
		err = p.serveBigWrite(st, br, nums[0], salt)
	case "HOLD", "FLOOD", "STALL":
		err = p.serveBusy(ps, st, br, cmd, salt)
	}
	if err != nil {
		p.fails.addErr(what, err)
		return
	}
	ps.mu.Lock()
	ps.served[cmd]++
	ps.mu.Unlock()
}

func min(a, b int) int {
	if a < b {
		return a
	}
	return b
}

// ECHO <n>: copy exactly n bytes back, then FIN; the active side answers with FIN.
func (p *peer) serveEcho(st *yamux.Stream, br *bufio.Reader, n int64) error {
	m := newMeter(n, "ECHO stream %d echoed", st.StreamID())
	got, err := io.CopyN(io.MultiWriter(st, m), br, n)
	if err != nil {
		return fmt.Errorf("echoed %d of %d bytes: %w", got, n, err)
	}
	return st.Close()
}

// XFER <up> <down>: read up bytes while sending down bytes, then the line
// "<sha256 received> <sha256 sent>", FIN.
func (p *peer) serveXfer(st *yamux.Stream, br *bufio.Reader, up, down, salt int64) error {
	txh, rxh := sha256.New(), sha256.New()
	werr := make(chan error, 1)
	go func() {
		werr <- writePayload(st, down, salt, chunk, txh, newMeter(down, "XFER stream %d sent", st.StreamID()))
	}()
	rerr := readN(br, up, rxh, newMeter(up, "XFER stream %d received", st.StreamID()))
	if err := <-werr; err != nil {
		return err
	}
	if rerr != nil {
		return rerr
	}
	if _, err := fmt.Fprintf(st, "%s %s\n", hexsum(rxh), hexsum(txh)); err != nil {
		return err
	}
	return st.Close()
}

// PING <k>: send k pings of our own, then "PINGED <k>", FIN.
func (p *peer) servePing(st *yamux.Stream, k int) error {
	for i := 0; i < k; i++ {
		if _, err := p.sess.Ping(); err != nil {
			return fmt.Errorf("our ping %d of %d: %w", i+1, k, err)
		}
	}
	if _, err := fmt.Fprintf(st, "PINGED %d\n", k); err != nil {
		return err
	}
	return st.Close()
}

// EXPECT-GOAWAY: the active side sent a Go Away then "SENT"; our open must fail.
func (p *peer) serveExpectGoAway(st *yamux.Stream, br *bufio.Reader) error {
	if err := expectLine(br, "SENT"); err != nil {
		return err
	}
	result := "OPEN-REFUSED local"
	s2, err := p.sess.OpenStream()
	switch {
	case err == yamux.ErrRemoteGoAway:
	case err != nil:
		return fmt.Errorf("open after the peer's go away failed oddly: %w", err)
	default:
		// Not what this hashicorp does, kept for completeness: wait for a RST.
		if _, rerr := s2.Read(make([]byte, 1)); rerr == yamux.ErrConnectionReset {
			result = "OPEN-REFUSED rst"
		} else {
			result = "OPEN-OK"
		}
	}
	if _, err := fmt.Fprintf(st, "%s\n", result); err != nil {
		return err
	}
	if result == "OPEN-OK" {
		return fmt.Errorf("could open a stream after the peer's go away")
	}
	return st.Close()
}

// SEND-GOAWAY: send a Go Away, then "SENT"; the active side answers
// "OPEN-REFUSED <local|rst>", we FIN.
func (p *peer) serveSendGoAway(st *yamux.Stream, br *bufio.Reader) error {
	if err := p.sess.GoAway(); err != nil {
		return fmt.Errorf("sending go away: %w", err)
	}
	if _, err := st.Write([]byte("SENT\n")); err != nil {
		return err
	}
	line, err := readLine(br)
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "OPEN-REFUSED ") {
		return fmt.Errorf("peer reports %q after our go away, want OPEN-REFUSED", line)
	}
	_, _, synAfter := p.tap.stats()
	p.note("peer_open_after_our_goaway=%q syn_after_our_goaway=%d", line, synAfter)
	return st.Close()
}

// BIGWRITE <n>: READY; read n bytes (one write on their side); "<sha>";
// one n-byte write of ours; "<sha>"; FIN.
func (p *peer) serveBigWrite(st *yamux.Stream, br *bufio.Reader, n, salt int64) error {
	if _, err := st.Write([]byte("READY\n")); err != nil {
		return err
	}
	rxh := sha256.New()
	if err := readN(br, n, rxh, newMeter(n, "BIGWRITE stream %d received", st.StreamID())); err != nil {
		return err
	}
	if _, err := fmt.Fprintf(st, "%s\n", hexsum(rxh)); err != nil {
		return err
	}
	buf := bigPayload(salt, n)
	txh := sha256.New()
	txh.Write(buf)
	if _, err := st.Write(buf); err != nil {
		return fmt.Errorf("the big write: %w", err)
	}
	if _, err := fmt.Fprintf(st, "%s\n", hexsum(txh)); err != nil {
		return err
	}
	if err := p.checkBigFrame(n); err != nil {
		return err
	}
	return st.Close()
}

// HOLD / FLOOD / STALL: say READY, then block until the session dies.
func (p *peer) serveBusy(ps *passiveState, st *yamux.Stream, br *bufio.Reader, cmd string, salt int64) error {
	if _, err := st.Write([]byte("READY\n")); err != nil {
		return err
	}
	var err error
	var n int64
	switch cmd {
	case "HOLD": // pending read; the peer sends nothing more
		var k int
		k, err = br.Read(make([]byte, 1024))
		n = int64(k)
		if err == nil || k > 0 {
			return fmt.Errorf("HOLD read returned %d bytes (err %v), want the session's end", k, err)
		}
	case "FLOOD": // pending write; the peer stops reading
		for err == nil {
			var k int
			k, err = st.Write(payloadChunk(salt, n, 64<<10))
			n += int64(k)
		}
	case "STALL": // we never read; the peer's write blocks
		<-ps.ended
	}
	ps.mu.Lock()
	ps.busyEnds = append(ps.busyEnds, time.Now())
	ps.mu.Unlock()
	if cmd == "FLOOD" && n > int64(initialWindow)+int64(len("READY\n")) {
		return fmt.Errorf("FLOOD wrote %d bytes although the peer stopped reading", n)
	}
	return nil
}

// checkServed verifies the scenario's commands were all served.
func (p *peer) checkServed(ps *passiveState) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	s := ps.served
	need := func(cmd string, n int, exact bool) {
		if s[cmd] < n || (exact && s[cmd] != n) {
			p.fails.add("served %d %s streams successfully, want %d", s[cmd], cmd, n)
		}
	}
	sent, recv, _ := p.tap.stats()
	switch p.o.scenario {
	case "echo":
		need("ECHO", 1, false)
	case "parallel":
		need("XFER", p.o.streams, true)
	case "bulk":
		need("XFER", 1, false)
	case "halfclose":
		need("HALFCLOSE", 1, false)
		need("HALFCLOSE-REV", 1, false)
	case "rst":
		need("EXPECT-RST", 1, false)
		need("SEND-RST", 1, false)
		need("ECHO", 1, false)
	case "ping":
		need("PING", 1, false)
		p.note("peer_pings=%d", recv.PingReq)
	case "keepalive":
		need("XFER", 1, false)
		need("ECHO", 1, false)
		if err := p.checkKeepalive(0); err != nil {
			p.fails.add("%v", err)
		}
	case "goaway":
		need("EXPECT-GOAWAY", 1, false)
		need("SEND-GOAWAY", 1, false)
	case "bigwindow":
		need("BIGWRITE", 1, false)
	case "openstorm":
		need("ECHO", p.o.streams, true)
		if sent.RST+recv.RST > 0 {
			p.fails.add("resets on the wire: sent %d, received %d", sent.RST, recv.RST)
		}
	case "closebusy":
		need("HOLD", 1, false)
		need("FLOOD", 1, false)
		need("STALL", 1, false)
		var worst time.Duration
		for _, t := range ps.busyEnds {
			if d := t.Sub(ps.endAt); d > worst {
				worst = d
			}
		}
		if worst > 5*time.Second {
			p.fails.add("busy operations ended up to %s after the session ended", worst)
		}
		p.note("busy_ops_ended=%d worst_after_session_end=%.3fs", len(ps.busyEnds), worst.Seconds())
	}
	p.note("served=%s", formatServed(s))
}

func formatServed(s map[string]int) string {
	var parts []string
	for _, k := range []string{"ECHO", "XFER", "HALFCLOSE", "HALFCLOSE-REV", "EXPECT-RST", "SEND-RST", "PING",
		"EXPECT-GOAWAY", "SEND-GOAWAY", "BIGWRITE", "HOLD", "FLOOD", "STALL"} {
		if s[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s:%d", k, s[k]))
		}
	}
	return strings.Join(parts, ",")
}
