// go-forwarder is the forwarder half of the original Go design (see go-relay):
// it dials the relay's control port, reads the public port line, prints
// "<relayhost>:<port>" alone on stdout, then runs a yamux SERVER session over the
// connection. Each stream the relay opens is connected to -local and piped both
// ways with half-close. If -local cannot be dialed the stream is closed (this
// hashicorp/yamux snapshot has no stream reset) and the failure is logged.
//
// It exits when the relay session ends (status 0), or with status 1 when the
// relay cannot be reached or sends no valid port line.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/yamux"
	"relayinterop/tunnel"
)

var (
	relayAddr = flag.String("relay", "", "relay control address HOST:PORT")
	localAddr = flag.String("local", "", "local service HOST:PORT to expose")
	window    = flag.Int("window", 256*1024, "yamux MaxStreamWindowSize in bytes (>= 262144)")
	keepalive = flag.Duration("keepalive-interval", 30*time.Second, "yamux keepalive interval (0 = off)")
	timeout   = flag.Duration("timeout", 10*time.Second, "dial and port-line timeout")
)

func main() {
	flag.Parse()
	log.SetOutput(os.Stderr)
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	if *relayAddr == "" || *localAddr == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: go-forwarder -relay HOST:PORT -local HOST:PORT")
		flag.PrintDefaults()
		os.Exit(2)
	}
	relayHost, _, err := net.SplitHostPort(*relayAddr)
	if err != nil {
		log.Fatalf("bad -relay %q: %v", *relayAddr, err)
	}
	c, err := net.DialTimeout("tcp", *relayAddr, *timeout)
	if err != nil {
		log.Fatalf("dial relay %s: %v", *relayAddr, err)
	}
	port, err := readPortLine(c, *timeout)
	if err != nil {
		log.Fatalf("relay %s: %v", *relayAddr, err)
	}
	fmt.Printf("%s\n", net.JoinHostPort(relayHost, strconv.Itoa(port)))

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
	log.Printf("forwarding %s:%d to %s", relayHost, port, *localAddr)
	for {
		st, err := sess.Accept()
		if err != nil {
			log.Printf("relay session ended: %v", err)
			return
		}
		go forward(st)
	}
}

// readPortLine reads "<port>\n" byte by byte: yamux frames may follow it
// directly, so nothing past the newline may be consumed.
func readPortLine(c net.Conn, limit time.Duration) (int, error) {
	if err := c.SetReadDeadline(time.Now().Add(limit)); err != nil {
		return 0, err
	}
	var line []byte
	one := make([]byte, 1)
	for {
		if _, err := io.ReadFull(c, one); err != nil {
			return 0, fmt.Errorf("reading the port line (got %q): %w", line, err)
		}
		if one[0] == '\n' {
			break
		}
		if len(line) >= 16 {
			return 0, fmt.Errorf("port line too long: %q", line)
		}
		line = append(line, one[0])
	}
	port, err := strconv.Atoi(strings.TrimSpace(string(line)))
	if err != nil || port <= 0 || port > 65535 {
		return 0, fmt.Errorf("bad port line %q", line)
	}
	return port, c.SetReadDeadline(time.Time{})
}

func forward(st net.Conn) {
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
	tunnel.Pipe(tcp, st)
}
