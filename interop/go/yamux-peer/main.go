// yamux-peer is one half of an interop scenario against Debian's hashicorp/yamux
// (2019 snapshot). The yamux client side is ACTIVE (opens streams, drives and
// verifies), the yamux server side is PASSIVE (accepts streams and obeys the
// command line that starts each stream). The wire conventions of every scenario
// are specified in interop/SCENARIOS.md; the Python tests implement the other half.
//
// It dials -addr (the test listens), or with -listen listens on -addr and prints
// "LISTENING HOST:PORT" (used by the Go-vs-Go self-test).
//
// Success: one line "OK <scenario> <role> <details>" on stdout, exit 0.
// Failure: "FAIL <scenario> <role>: ..." lines on stderr, exit 1 (3 on timeout, 2 on usage).
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

var scenarios = []string{
	"echo", "parallel", "bulk", "halfclose", "rst", "ping", "keepalive",
	"goaway", "bigwindow", "openstorm", "closebusy",
}

// sizeFlag accepts plain byte counts or K/M/G (binary, optional "iB"/"B") suffixes.
type sizeFlag struct {
	v   int64
	set bool
}

func (s *sizeFlag) String() string { return strconv.FormatInt(s.v, 10) }

func (s *sizeFlag) Set(text string) error {
	t := strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(text)), "B"), "I")
	mult := int64(1)
	switch {
	case strings.HasSuffix(t, "K"):
		mult, t = 1<<10, t[:len(t)-1]
	case strings.HasSuffix(t, "M"):
		mult, t = 1<<20, t[:len(t)-1]
	case strings.HasSuffix(t, "G"):
		mult, t = 1<<30, t[:len(t)-1]
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 {
		return fmt.Errorf("bad size %q", text)
	}
	s.v, s.set = n*mult, true
	return nil
}

type options struct {
	role, addr, scenario string
	listen               bool
	size, down, window   sizeFlag
	streams, backlog     int
	count                int
	seed                 int64
	keepalive, idle      time.Duration
	keepaliveSet         bool
	writeTimeout         time.Duration
	timeout, linger      time.Duration
	yamuxLog             bool
}

// applyDefaults fills the per-scenario defaults documented in SCENARIOS.md.
func (o *options) applyDefaults() {
	def := func(f *sizeFlag, v int64) {
		if !f.set {
			f.v, f.set = v, true
		}
	}
	if o.backlog <= 0 {
		o.backlog = 256
	}
	switch o.scenario {
	case "echo":
		def(&o.size, 1<<20)
	case "parallel":
		def(&o.size, 8<<20)
		if o.streams <= 0 {
			o.streams = 100
		}
	case "bulk":
		def(&o.size, 1<<30)
	case "halfclose":
		def(&o.size, 1<<20)
	case "rst", "goaway":
		def(&o.size, 64<<10)
	case "ping":
		if o.count <= 0 {
			o.count = 5
		}
	case "keepalive":
		def(&o.size, 64<<20)
		if !o.keepaliveSet {
			o.keepalive = 100 * time.Millisecond
		}
		if o.idle <= 0 {
			o.idle = time.Second
		}
	case "bigwindow":
		def(&o.window, 16<<20)
		def(&o.size, o.window.v-(64<<10))
	case "openstorm":
		def(&o.size, 32)
		if o.streams <= 0 {
			o.streams = 5 * o.backlog
		}
	case "closebusy":
		if o.streams <= 0 {
			o.streams = 4
		}
	}
	def(&o.window, initialWindow)
	def(&o.size, 1<<20)
	def(&o.down, o.size.v)
	if o.streams <= 0 {
		o.streams = 1
	}
	if o.count <= 0 {
		o.count = 1
	}
}

type peer struct {
	o      *options
	active bool
	sess   *yamux.Session
	tap    *tapConn
	fails  failures
	start  time.Time
	detail []string // key=value pairs for the OK line
	dmu    sync.Mutex
}

func (p *peer) note(format string, args ...any) {
	p.dmu.Lock()
	p.detail = append(p.detail, fmt.Sprintf(format, args...))
	p.dmu.Unlock()
}

func (p *peer) failf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "FAIL %s %s: %s\n", p.o.scenario, p.o.role, fmt.Sprintf(format, args...))
}

func main() {
	o := &options{}
	flag.StringVar(&o.role, "role", "", "yamux role: client (active side) or server (passive side)")
	flag.StringVar(&o.addr, "addr", "", "HOST:PORT to dial (or to listen on with -listen)")
	flag.StringVar(&o.scenario, "scenario", "", "one of: "+strings.Join(scenarios, ", "))
	flag.BoolVar(&o.listen, "listen", false, "listen on -addr and accept one connection instead of dialing")
	flag.Var(&o.size, "size", "payload size (per-scenario meaning and default, see SCENARIOS.md)")
	flag.Var(&o.down, "down", "bulk/keepalive: bytes the passive side sends (default: -size)")
	flag.Var(&o.window, "window", "MaxStreamWindowSize (default 256KiB; bigwindow: 16MiB)")
	flag.IntVar(&o.streams, "streams", 0, "parallel: streams (100); openstorm: streams (5*backlog); closebusy: streams per kind (4)")
	flag.IntVar(&o.backlog, "backlog", 256, "AcceptBacklog")
	flag.IntVar(&o.count, "count", 0, "ping: pings each way (5)")
	flag.Int64Var(&o.seed, "seed", 1, "seed for payload bytes and random sizes")
	flag.DurationVar(&o.keepalive, "keepalive-interval", 0, "enable keepalive with this interval (0 = off; keepalive scenario: 100ms)")
	flag.DurationVar(&o.idle, "idle", 0, "keepalive: idle time after the transfer (1s)")
	flag.DurationVar(&o.writeTimeout, "write-timeout", 10*time.Second, "ConnectionWriteTimeout (also the ping timeout)")
	flag.DurationVar(&o.timeout, "timeout", 120*time.Second, "overall deadline; exit 3 when it passes")
	flag.DurationVar(&o.linger, "linger", 2*time.Second, "on session close: wait this long for the peer to close the TCP connection")
	flag.BoolVar(&o.yamuxLog, "yamux-log", true, "let hashicorp/yamux log to stderr")
	flag.Parse()
	flag.Visit(func(f *flag.Flag) {
		if f.Name == "keepalive-interval" {
			o.keepaliveSet = true
		}
	})

	if (o.role != "client" && o.role != "server") || o.addr == "" || !validScenario(o.scenario) || flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "usage: yamux-peer -role client|server -addr HOST:PORT -scenario NAME [knobs]\n")
		fmt.Fprintf(os.Stderr, "scenarios: %s\n", strings.Join(scenarios, " "))
		flag.PrintDefaults()
		os.Exit(2)
	}
	o.applyDefaults()
	initPattern(o.seed)

	p := &peer{o: o, active: o.role == "client", start: time.Now()}
	time.AfterFunc(o.timeout, func() {
		p.failf("timeout after %s", o.timeout)
		for _, f := range p.fails.all() {
			p.failf("%s", f)
		}
		for _, m := range unfinishedMeters(20) {
			p.failf("pending %s", m)
		}
		if p.tap != nil {
			s, r, _ := p.tap.stats()
			p.failf("wire sent: %s", s)
			p.failf("wire recv: %s", r)
		}
		os.Exit(3)
	})

	conn, err := connect(o)
	if err != nil {
		p.failf("%v", err)
		os.Exit(1)
	}
	p.start = time.Now()
	p.tap = newTap(conn, o.linger, o.scenario == "closebusy" && p.active)
	defer p.tap.finish()

	cfg := yamux.DefaultConfig()
	cfg.AcceptBacklog = o.backlog
	cfg.EnableKeepAlive = o.keepalive > 0
	if o.keepalive > 0 {
		cfg.KeepAliveInterval = o.keepalive
	}
	cfg.ConnectionWriteTimeout = o.writeTimeout
	cfg.MaxStreamWindowSize = uint32(o.window.v)
	if !o.yamuxLog {
		cfg.LogOutput = io.Discard
	}
	if p.active {
		p.sess, err = yamux.Client(p.tap, cfg)
	} else {
		p.sess, err = yamux.Server(p.tap, cfg)
	}
	if err != nil {
		p.failf("yamux setup: %v", err)
		os.Exit(1)
	}

	if p.active {
		if err := runActive(p); err != nil {
			p.fails.add("%v", err)
		}
		_ = p.sess.Close()
	} else {
		runPassive(p)
	}

	sent, recv, _ := p.tap.stats()
	if fl := p.fails.all(); len(fl) > 0 {
		for _, f := range fl {
			p.failf("%s", f)
		}
		for _, m := range unfinishedMeters(20) {
			p.failf("unfinished %s", m)
		}
		p.failf("wire sent: %s", sent)
		p.failf("wire recv: %s", recv)
		p.tap.finish()
		os.Exit(1)
	}
	elapsed := time.Since(p.start)
	fmt.Printf("OK %s %s elapsed=%.3fs %s tx_data=%d rx_data=%d tx_maxframe=%d rx_maxframe=%d "+
		"tx_rst=%d rx_rst=%d tx_pingreq=%d rx_pingreq=%d\n",
		o.scenario, o.role, elapsed.Seconds(), strings.Join(p.detail, " "),
		sent.DataBytes, recv.DataBytes, sent.MaxData, recv.MaxData,
		sent.RST, recv.RST, sent.PingReq, recv.PingReq)
}

func validScenario(s string) bool {
	for _, x := range scenarios {
		if x == s {
			return true
		}
	}
	return false
}

// connect dials -addr (retrying briefly while the listener comes up), or with
// -listen accepts exactly one connection.
func connect(o *options) (net.Conn, error) {
	if o.listen {
		ln, err := net.Listen("tcp", o.addr)
		if err != nil {
			return nil, fmt.Errorf("listen %s: %w", o.addr, err)
		}
		defer ln.Close()
		fmt.Printf("LISTENING %s\n", ln.Addr())
		c, err := ln.Accept()
		if err != nil {
			return nil, fmt.Errorf("accept on %s: %w", ln.Addr(), err)
		}
		return c, nil
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", o.addr, 5*time.Second)
		if err == nil {
			return c, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("dial %s: %w", o.addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
