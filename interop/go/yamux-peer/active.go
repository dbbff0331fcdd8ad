package main

// The ACTIVE half (yamux client): opens streams, sends the command line, drives
// and verifies. See interop/SCENARIOS.md for every command.

import (
	"bufio"
	"crypto/sha256"
	"fmt"
	"math/rand"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

const chunk = 256 << 10 // size of our Write calls for streamed payloads

// runActive opens the control stream first (except in closebusy, which ends by
// killing the session), runs the scenario, then ends with BYE on the control
// stream: the passive side answers only once all its other stream handlers have
// finished, with its verdict, so the session is never closed under a peer that
// is still reading.
func runActive(p *peer) error {
	var ctl *yamux.Stream
	var ctlBr *bufio.Reader
	if p.o.scenario != "closebusy" {
		var err error
		if ctl, ctlBr, err = p.open(""); err != nil {
			return fmt.Errorf("control stream: %w", err)
		}
	}
	if err := runScenario(p); err != nil {
		return err
	}
	if ctl == nil {
		return nil
	}
	if _, err := ctl.Write([]byte("BYE\n")); err != nil {
		return fmt.Errorf("control stream: writing BYE: %w", err)
	}
	verdict, err := readLine(ctlBr)
	if err != nil {
		return fmt.Errorf("control stream: waiting for the answer to BYE: %w", err)
	}
	if verdict != "BYE OK" {
		return fmt.Errorf("the passive side reports: %q", verdict)
	}
	return finish(ctl, ctlBr, "control stream")
}

func runScenario(p *peer) error {
	switch p.o.scenario {
	case "echo":
		p.note("bytes=%d", p.o.size.v)
		return p.echo(p.o.size.v, 0)
	case "parallel":
		return p.parallel()
	case "bulk":
		p.note("up=%d down=%d", p.o.size.v, p.o.down.v)
		return p.xfer(p.o.size.v, p.o.down.v, 0)
	case "halfclose":
		return p.halfclose()
	case "rst":
		return p.rst()
	case "ping":
		return p.ping()
	case "keepalive":
		return p.keepaliveScenario()
	case "goaway":
		return p.goaway()
	case "bigwindow":
		return p.bigwindow()
	case "openstorm":
		return p.openstorm()
	case "closebusy":
		return p.closebusy()
	}
	return fmt.Errorf("unknown scenario %q", p.o.scenario)
}

// open opens a stream and, unless cmd is empty, writes the command line.
func (p *peer) open(cmd string) (*yamux.Stream, *bufio.Reader, error) {
	st, err := p.sess.OpenStream()
	if err != nil {
		return nil, nil, fmt.Errorf("open stream for %q: %w", cmd, err)
	}
	if cmd != "" {
		if _, err := st.Write([]byte(cmd + "\n")); err != nil {
			return nil, nil, fmt.Errorf("stream %d: writing command %q: %w", st.StreamID(), cmd, err)
		}
	}
	return st, bufio.NewReaderSize(st, 64<<10), nil
}

// finish: the passive side half-closes first; read its EOF, then close ours.
func finish(st *yamux.Stream, br *bufio.Reader, what string) error {
	if err := expectEOF(br); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return st.Close()
}

// echo: "ECHO <n>", send n bytes, read the same n bytes back, EOF.
func (p *peer) echo(n int64, salt int64) error {
	st, br, err := p.open(fmt.Sprintf("ECHO %d", n))
	if err != nil {
		return err
	}
	what := fmt.Sprintf("ECHO stream %d", st.StreamID())
	txh, rxh := sha256.New(), sha256.New()
	wm := newMeter(n, "%s sent", what)
	rm := newMeter(n, "%s echoed back", what)
	werr := make(chan error, 1)
	go func() { werr <- writePayload(st, n, salt, chunk, txh, wm) }()
	if err := readN(br, n, rxh, rm); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if a, b := hexsum(txh), hexsum(rxh); a != b {
		return fmt.Errorf("%s: echoed bytes differ: sent sha256 %s, got back %s", what, a, b)
	}
	return finish(st, br, what)
}

// xfer: "XFER <up> <down>": up bytes to the passive side while it sends down
// bytes; then the line "<sha256 of what it received> <sha256 of what it sent>", EOF.
func (p *peer) xfer(up, down int64, salt int64) error {
	st, br, err := p.open(fmt.Sprintf("XFER %d %d", up, down))
	if err != nil {
		return err
	}
	what := fmt.Sprintf("XFER stream %d (up %d, down %d)", st.StreamID(), up, down)
	txh, rxh := sha256.New(), sha256.New()
	wm := newMeter(up, "%s sent", what)
	rm := newMeter(down, "%s received", what)
	werr := make(chan error, 1)
	go func() { werr <- writePayload(st, up, salt, chunk, txh, wm) }()
	if err := readN(br, down, rxh, rm); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	line, err := readLine(br)
	if err != nil {
		return fmt.Errorf("%s: digest line: %w", what, err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	want := hexsum(txh) + " " + hexsum(rxh)
	if line != want {
		return fmt.Errorf("%s: digest line %q, want %q (<their rx> <their tx>)", what, line, want)
	}
	return finish(st, br, what)
}

func (p *peer) parallel() error {
	r := rand.New(rand.NewSource(p.o.seed))
	type job struct{ up, down int64 }
	jobs := make([]job, p.o.streams)
	var total int64
	for i := range jobs {
		jobs[i] = job{r.Int63n(p.o.size.v + 1), r.Int63n(p.o.size.v + 1)}
		total += jobs[i].up + jobs[i].down
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(jobs))
	for i, j := range jobs {
		wg.Add(1)
		go func(i int, j job) {
			defer wg.Done()
			errs <- p.xfer(j.up, j.down, int64(i))
		}(i, j)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			p.fails.addErr("parallel", err)
		}
	}
	p.note("streams=%d bytes_both_ways=%d", len(jobs), total)
	return nil
}

// halfclose: HALFCLOSE (we close first, then read the rest) and HALFCLOSE-REV
// (the passive side closes first; we read to EOF, then answer).
func (p *peer) halfclose() error {
	n := p.o.size.v
	st, br, err := p.open(fmt.Sprintf("HALFCLOSE %d", n))
	if err != nil {
		return err
	}
	if err := p.closerSide(st, br, n, n, 1); err != nil {
		return err
	}
	st, br, err = p.open(fmt.Sprintf("HALFCLOSE-REV %d", n))
	if err != nil {
		return err
	}
	if err := p.drainerSide(st, br, n, 2); err != nil {
		return err
	}
	p.note("closer_sent=%d drainer_sent=%d", n, n)
	return nil
}

// closerSide: send payload bytes, FIN, then read n bytes and the line
// "<m> <rxsha> <txsha>" that the drainer sends after our FIN.
func (p *peer) closerSide(st *yamux.Stream, br *bufio.Reader, payload, n int64, salt int64) error {
	what := fmt.Sprintf("half-close closer stream %d", st.StreamID())
	txh := sha256.New()
	if err := writePayload(st, payload, salt, chunk, txh, newMeter(payload, "%s sent", what)); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := st.Close(); err != nil {
		return fmt.Errorf("%s: close: %w", what, err)
	}
	// Reading after our own Close needs pollReader with this hashicorp (see util.go).
	pr := bufio.NewReaderSize(pollReader{br, 5 * time.Second}, 64<<10)
	rxh := sha256.New()
	if err := readN(pr, n, rxh, newMeter(n, "%s received after own FIN", what)); err != nil {
		return fmt.Errorf("%s: after our FIN: %w", what, err)
	}
	line, err := readLine(pr)
	if err != nil {
		return fmt.Errorf("%s: result line after our FIN: %w", what, err)
	}
	want := fmt.Sprintf("%d %s %s", payload, hexsum(txh), hexsum(rxh))
	if line != want {
		return fmt.Errorf("%s: result line %q, want %q", what, line, want)
	}
	return nil
}

// drainerSide: read to EOF (the peer's FIN), then send n bytes, the line
// "<m> <rxsha> <txsha>", FIN.
func (p *peer) drainerSide(st *yamux.Stream, br *bufio.Reader, n int64, salt int64) error {
	what := fmt.Sprintf("half-close drainer stream %d", st.StreamID())
	m, rxsha, err := readAll(br, newMeter(-1, "%s received before peer FIN", what))
	if err != nil {
		return fmt.Errorf("%s: reading to the peer's FIN after %d bytes: %w", what, m, err)
	}
	txh := sha256.New()
	if err := writePayload(st, n, salt, chunk, txh, newMeter(n, "%s sent after peer FIN", what)); err != nil {
		return fmt.Errorf("%s: writing after the peer's FIN: %w", what, err)
	}
	if _, err := fmt.Fprintf(st, "%d %s %s\n", m, rxsha, hexsum(txh)); err != nil {
		return fmt.Errorf("%s: result line: %w", what, err)
	}
	return st.Close()
}

// rst: EXPECT-RST (we reset, the passive side must see it), SEND-RST (it
// resets, we must see it), then an ECHO proves the session is still healthy.
func (p *peer) rst() error {
	st, br, err := p.open("EXPECT-RST")
	if err != nil {
		return err
	}
	if err := expectLine(br, "READY"); err != nil {
		return fmt.Errorf("EXPECT-RST stream %d: %w", st.StreamID(), err)
	}
	if err := p.tap.injectRST(st.StreamID()); err != nil {
		return fmt.Errorf("EXPECT-RST stream %d: sending RST: %w", st.StreamID(), err)
	}
	// This hashicorp has no Stream.Reset; the stream object is abandoned here.

	st, br, err = p.open("SEND-RST")
	if err != nil {
		return err
	}
	if err := seeReset(st, br); err != nil {
		return fmt.Errorf("SEND-RST stream %d: %w", st.StreamID(), err)
	}
	if err := p.echo(p.o.size.v, 3); err != nil {
		return fmt.Errorf("echo after the resets: %w", err)
	}
	p.note("reset_sent=1 reset_seen=1")
	return nil
}

// seeReset: a pending read must fail with a reset (not EOF), and so must a write.
func seeReset(st *yamux.Stream, br *bufio.Reader) error {
	buf := make([]byte, 4096)
	var got int
	for {
		n, err := br.Read(buf)
		got += n
		if err == nil {
			continue
		}
		if err != yamux.ErrConnectionReset {
			return fmt.Errorf("read ended with %v after %d bytes: %w", err, got, errNotReset)
		}
		break
	}
	if _, err := st.Write([]byte("x")); err != yamux.ErrConnectionReset {
		return fmt.Errorf("write after the reset returned %v: %w", err, errNotReset)
	}
	return nil
}

// ping: "PING <k>": both sides send k pings; the passive side answers "PINGED <k>".
func (p *peer) ping() error {
	k := p.o.count
	st, br, err := p.open(fmt.Sprintf("PING %d", k))
	if err != nil {
		return err
	}
	var worst time.Duration
	for i := 0; i < k; i++ {
		rtt, err := p.sess.Ping()
		if err != nil {
			return fmt.Errorf("ping %d of %d: %w", i+1, k, err)
		}
		if rtt > worst {
			worst = rtt
		}
	}
	if err := expectLine(br, fmt.Sprintf("PINGED %d", k)); err != nil {
		return fmt.Errorf("PING stream %d: %w", st.StreamID(), err)
	}
	if err := finish(st, br, "PING stream"); err != nil {
		return err
	}
	_, recv, _ := p.tap.stats()
	if recv.PingReq < int64(k) {
		return fmt.Errorf("peer sent %d ping requests, want >= %d", recv.PingReq, k)
	}
	p.note("pings=%d max_rtt_us=%d", k, worst.Microseconds())
	return nil
}

// keepalive: bulk transfer and an idle period with keepalive on both sides.
func (p *peer) keepaliveScenario() error {
	if p.o.keepalive <= 0 {
		return fmt.Errorf("keepalive scenario needs -keepalive-interval > 0")
	}
	t0 := time.Now()
	if err := p.xfer(p.o.size.v, p.o.down.v, 0); err != nil {
		return err
	}
	xferTime := time.Since(t0)
	time.Sleep(p.o.idle)
	if err := p.echo(1024, 1); err != nil {
		return fmt.Errorf("echo after idle: %w", err)
	}
	return p.checkKeepalive(xferTime)
}

func (p *peer) checkKeepalive(xferTime time.Duration) error {
	sent, recv, _ := p.tap.stats()
	if recv.PingReq < 1 {
		return fmt.Errorf("peer sent no ping requests: is its keepalive on?")
	}
	if sent.PingReq < 1 {
		return fmt.Errorf("our keepalive sent no pings (interval %s)", p.o.keepalive)
	}
	if recv.PingResp < sent.PingReq-1 {
		return fmt.Errorf("peer answered %d of our %d pings", recv.PingResp, sent.PingReq)
	}
	if xferTime > 0 {
		p.note("xfer_s=%.3f", xferTime.Seconds())
	}
	p.note("interval=%s keepalive_pings_sent=%d answered=%d peer_pings=%d",
		p.o.keepalive, sent.PingReq, recv.PingResp, recv.PingReq)
	return nil
}

// goaway: both streams are opened first; on S1 we send the Go Away, on S2 the
// passive side does. Whoever received it must then fail to open a stream.
func (p *peer) goaway() error {
	s1, b1, err := p.open("")
	if err != nil {
		return err
	}
	s2, b2, err := p.open("")
	if err != nil {
		return err
	}
	// S1: EXPECT-GOAWAY
	if _, err := s1.Write([]byte("EXPECT-GOAWAY\n")); err != nil {
		return fmt.Errorf("S1: %w", err)
	}
	if err := p.sess.GoAway(); err != nil {
		return fmt.Errorf("S1: sending go away: %w", err)
	}
	if _, err := s1.Write([]byte("SENT\n")); err != nil {
		return fmt.Errorf("S1: writing SENT after go away: %w", err)
	}
	result, err := readLine(b1)
	if err != nil {
		return fmt.Errorf("S1 (EXPECT-GOAWAY): %w", err)
	}
	if !strings.HasPrefix(result, "OPEN-REFUSED ") {
		return fmt.Errorf("S1 (EXPECT-GOAWAY): peer reports %q after our go away, want OPEN-REFUSED", result)
	}
	if err := finish(s1, b1, "S1 (EXPECT-GOAWAY)"); err != nil {
		return err
	}
	_, _, synAfter := p.tap.stats()

	// S2: SEND-GOAWAY
	if _, err := s2.Write([]byte("SEND-GOAWAY\n")); err != nil {
		return fmt.Errorf("S2: %w", err)
	}
	if err := expectLine(b2, "SENT"); err != nil {
		return fmt.Errorf("S2 (SEND-GOAWAY): %w", err)
	}
	_, recv, _ := p.tap.stats()
	if recv.GoAway < 1 || recv.GoAwayCode != 0 {
		return fmt.Errorf("S2 (SEND-GOAWAY): got SENT but %d go away frames (last code %d)", recv.GoAway, recv.GoAwayCode)
	}
	how := ""
	if _, err := p.sess.OpenStream(); err == yamux.ErrRemoteGoAway {
		how = "local"
	} else if err != nil {
		return fmt.Errorf("S2 (SEND-GOAWAY): open after the peer's go away failed oddly: %w", err)
	} else {
		return fmt.Errorf("S2 (SEND-GOAWAY): open after the peer's go away succeeded")
	}
	if _, err := fmt.Fprintf(s2, "OPEN-REFUSED %s\n", how); err != nil {
		return fmt.Errorf("S2: %w", err)
	}
	if err := finish(s2, b2, "S2 (SEND-GOAWAY)"); err != nil {
		return err
	}
	p.note("peer_open_after_our_goaway=%q syn_after_our_goaway=%d", result, synAfter)
	return nil
}

// bigwindow: "BIGWRITE <n>" with a large MaxStreamWindowSize on both sides;
// each side's single n-byte write must go out as one Data frame.
func (p *peer) bigwindow() error {
	n := p.o.size.v
	st, br, err := p.open(fmt.Sprintf("BIGWRITE %d", n))
	if err != nil {
		return err
	}
	what := fmt.Sprintf("BIGWRITE stream %d (n %d, window %d)", st.StreamID(), n, p.o.window.v)
	if err := expectLine(br, "READY"); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	buf := bigPayload(0, n)
	txh := sha256.New()
	txh.Write(buf)
	if _, err := st.Write(buf); err != nil {
		return fmt.Errorf("%s: the big write: %w", what, err)
	}
	if err := expectLine(br, hexsum(txh)); err != nil {
		return fmt.Errorf("%s: their digest of our big write: %w", what, err)
	}
	rxh := sha256.New()
	if err := readN(br, n, rxh, newMeter(n, "%s received", what)); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := expectLine(br, hexsum(rxh)); err != nil {
		return fmt.Errorf("%s: digest of their big write: %w", what, err)
	}
	if err := finish(st, br, what); err != nil {
		return err
	}
	return p.checkBigFrame(n)
}

func (p *peer) checkBigFrame(n int64) error {
	sent, recv, _ := p.tap.stats()
	if int64(sent.MaxData) < n {
		return fmt.Errorf("our %d-byte write was split (largest Data frame %d): the peer granted "+
			"too little window (largest delta on its SYN/ACK: %d)", n, sent.MaxData, recv.MaxGrant)
	}
	p.note("big_write=%d peer_grant_on_synack=%d largest_rx_frame=%d", n, recv.MaxGrant, recv.MaxData)
	return nil
}

// openstorm: open -streams streams at once (default 5x the accept backlog),
// each a small ECHO; no stream may be reset.
func (p *peer) openstorm() error {
	n := p.o.streams
	gate := make(chan struct{})
	var wg sync.WaitGroup
	var failed atomic.Int64
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-gate
			if err := p.echo(p.o.size.v, int64(i)); err != nil {
				if failed.Add(1) <= 10 {
					p.fails.addErr(fmt.Sprintf("openstorm stream #%d", i), err)
				}
			}
		}(i)
	}
	close(gate)
	wg.Wait()
	if f := failed.Load(); f > 0 {
		return fmt.Errorf("%d of %d streams failed", f, n)
	}
	sent, recv, _ := p.tap.stats()
	if sent.RST+recv.RST > 0 {
		return fmt.Errorf("resets on the wire: sent %d, received %d", sent.RST, recv.RST)
	}
	p.note("streams=%d backlog=%d", n, p.o.backlog)
	return nil
}

// closebusy: HOLD, FLOOD and STALL streams are left busy, then we close the
// session abruptly. Our own blocked operations must end promptly.
func (p *peer) closebusy() error {
	k := p.o.streams
	type busy struct {
		st *yamux.Stream
		br *bufio.Reader
	}
	var holds, floods, stalls []busy
	for i := 0; i < k; i++ {
		for _, cmd := range []string{"HOLD", "FLOOD", "STALL"} {
			st, br, err := p.open(cmd)
			if err != nil {
				return err
			}
			if err := expectLine(br, "READY"); err != nil {
				return fmt.Errorf("%s stream %d: %w", cmd, st.StreamID(), err)
			}
			b := busy{st, br}
			switch cmd {
			case "HOLD":
				holds = append(holds, b)
			case "FLOOD":
				floods = append(floods, b)
			default:
				stalls = append(stalls, b)
			}
		}
	}
	type outcome struct {
		what string
		err  error
		n    int64
		at   time.Time
	}
	results := make(chan outcome, 2*k)
	for _, b := range holds { // our pending reads (the peer sends nothing more)
		go func(b busy) {
			n, err := b.br.Read(make([]byte, 1024))
			results <- outcome{fmt.Sprintf("HOLD stream %d read", b.st.StreamID()), err, int64(n), time.Now()}
		}(b)
	}
	for _, b := range stalls { // our pending writes (the peer reads nothing)
		go func(b busy) {
			var total int64
			var err error
			for err == nil {
				var n int
				n, err = b.st.Write(payloadChunk(5, total, 64<<10))
				total += int64(n)
			}
			results <- outcome{fmt.Sprintf("STALL stream %d write", b.st.StreamID()), err, total, time.Now()}
		}(b)
	}
	time.Sleep(500 * time.Millisecond) // let FLOOD and STALL exhaust their windows
	closedAt := time.Now()
	_ = p.sess.Close() // abrupt: see tapConn (abrupt=true for the closebusy client)
	limit := time.After(5 * time.Second)
	var reads, writes int
	for i := 0; i < 2*k; i++ {
		select {
		case r := <-results:
			if strings.HasSuffix(r.what, "read") {
				if r.err == nil || r.n > 0 {
					return fmt.Errorf("%s returned %d bytes, err %v", r.what, r.n, r.err)
				}
				reads++
			} else {
				if r.err == nil {
					return fmt.Errorf("%s: no error", r.what)
				}
				if r.n > int64(initialWindow) {
					return fmt.Errorf("%s: wrote %d bytes, more than the 256 KiB window", r.what, r.n)
				}
				writes++
			}
		case <-limit:
			return fmt.Errorf("after closing the session, %d of our %d pending reads and %d of %d writes "+
				"still hang", k-reads, k, k-writes, k)
		}
	}
	p.note("busy_streams=%d pending_ops_failed=%d within=%.3fs floods=%d",
		3*k, reads+writes, time.Since(closedAt).Seconds(), len(floods))
	return nil
}
