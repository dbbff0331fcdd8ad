// go-forwarder is the forwarder half of the original Go design (see go-relay):
// it dials the relay's control port, reads the public port line, prints
// "<relayhost>:<port>" alone on stdout, then runs a yamux SERVER session over the
// connection. Each stream the relay opens is connected to -local and piped both
// ways with half-close. If -local cannot be dialed the stream is closed (this
// hashicorp/yamux snapshot has no stream reset) and the failure is logged.
//
// It exits when the relay session ends (status 0), or with status 1 when the
// relay cannot be reached or sends no valid port line.
//
// With -name it answers a registration v2 challenge (a relay without auth,
// docs/protocol.md) with "relay/2 name=NAME" instead of expecting the port line
// first; with -sessions K (and -name) it registers K sessions of that name,
// which the relay puts on one public port ("sessions=K" in the response), prints
// the endpoint once and exits when every session has ended. Without these flags
// it speaks the seed protocol only, as the original design.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
	registration "relayinterop/register"
	"relayinterop/tunnel"
)

var (
	relayAddr = flag.String("relay", "", "relay control address HOST:PORT")
	localAddr = flag.String("local", "", "local service HOST:PORT to expose")
	window    = flag.Int("window", 256*1024, "yamux MaxStreamWindowSize in bytes (>= 262144)")
	keepalive = flag.Duration("keepalive-interval", 30*time.Second, "yamux keepalive interval (0 = off)")
	timeout   = flag.Duration("timeout", 10*time.Second, "dial and port-line timeout")
	name      = flag.String("name", "", "register v2 under this name (a relay without auth)")
	echo      = flag.Bool("echo", false, "echo every stream itself instead of dialing -local (a benchmark's cheapest service)")
	buffer    = flag.Int("buffer", 0, "bytes copied at once between a stream and its connection (0: io.Copy's own)")
	sessions  = flag.Int("sessions", 1, "sessions of -name on one public port (1-16)")
)

func main() {
	flag.Parse()
	log.SetOutput(os.Stderr)
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	if *relayAddr == "" || (*localAddr == "") == !*echo || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: go-forwarder -relay HOST:PORT -local HOST:PORT|-echo")
		flag.PrintDefaults()
		os.Exit(2)
	}
	relayHost, _, err := net.SplitHostPort(*relayAddr)
	if err != nil {
		log.Fatalf("bad -relay %q: %v", *relayAddr, err)
	}
	if *sessions < 1 || *sessions > 16 || (*sessions > 1 && *name == "") {
		log.Fatalf("-sessions must be 1-16, and above 1 only with -name")
	}
	c, port, err := register()
	if err != nil {
		log.Fatalf("relay %s: %v", *relayAddr, err)
	}
	fmt.Printf("%s\n", net.JoinHostPort(relayHost, strconv.Itoa(port)))
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		serve(c, relayHost, port)
	}()
	for i := 2; i <= *sessions; i++ {
		more, got, err := register()
		if err != nil {
			log.Fatalf("relay %s, session %d: %v", *relayAddr, i, err)
		}
		if got != port {
			log.Fatalf("session %d got port %d, not %d", i, got, port)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			serve(more, relayHost, port)
		}()
	}
	wg.Wait()
}

// register dials the relay and reads its port line (answering a v2 challenge
// first when -name is set).
func register() (net.Conn, int, error) {
	return registration.Dial(registration.Options{
		Relay: *relayAddr, Name: *name, Sessions: *sessions, Timeout: *timeout,
	})
}

// serve runs a yamux server session on c and forwards every stream to -local.
func serve(c net.Conn, relayHost string, port int) {
	cfg := yamux.DefaultConfig()
	cfg.MaxStreamWindowSize = uint32(*window)
	cfg.EnableKeepAlive = *keepalive > 0
	if *keepalive > 0 {
		cfg.KeepAliveInterval = *keepalive
	}
	cfg.LogOutput = os.Stderr
	sess, err := yamux.Server(c, cfg)
	if err != nil {
		log.Fatalf("yamux: %v", err)
	}
	target := *localAddr
	if *echo {
		target = "itself (echo)"
	}
	log.Printf("forwarding %s:%d to %s", relayHost, port, target)
	for {
		st, err := sess.Accept()
		if err != nil {
			log.Printf("relay session ended: %v", err)
			return
		}
		go forward(st)
	}
}

func forward(st net.Conn) {
	if *echo { // the stream's bytes back to it, then FIN
		size := *buffer
		if size <= 0 {
			size = 32 * 1024
		}
		io.CopyBuffer(struct{ io.Writer }{st}, struct{ io.Reader }{st}, make([]byte, size))
		st.Close()
		return
	}
	lc, err := net.DialTimeout("tcp", *localAddr, *timeout)
	if err != nil {
		log.Printf("stream %s: dial local %s: %v; closing the stream", st.RemoteAddr(), *localAddr, err)
		st.Close()
		return
	}
	tcp, ok := lc.(*net.TCPConn)
	if !ok {
		log.Printf("unexpected local connection type %T", lc)
		lc.Close()
		st.Close()
		return
	}
	tunnel.PipeBuffer(tcp, st, *buffer)
}
