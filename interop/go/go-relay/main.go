// go-relay is the original Go design that this project reimplements in Python,
// built on Debian's hashicorp/yamux snapshot. It is the reference for interop
// and end-to-end tests and the baseline for benchmarks.
//
// A forwarder (behind NAT) connects to the control port. For each such
// connection the relay opens a public listener on an OS-chosen port, writes that
// port as decimal text plus "\n", then runs a yamux CLIENT session over the
// connection. Every connection accepted on the public port becomes a new yamux
// stream (session.Open) and bytes are piped both ways with half-close: the TCP
// side gets CloseWrite when the stream reaches EOF, the stream gets Close (FIN)
// when the TCP side reaches EOF. When the session ends, the public listener and
// all of its connections are closed.
//
// Known limit inherited from Debian's hashicorp/yamux: after the stream's own
// Close (FIN), its reads end with EOF as soon as its buffer is empty, so a public
// client that half-closes (shutdown(SHUT_WR)) before the answer arrived loses
// the rest of the answer. redis-cli, curl and most clients never half-close.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
	"relayinterop/tunnel"
)

var (
	port       = flag.Int("port", 0, "control port forwarders connect to (0 = OS-chosen, printed)")
	bind       = flag.String("bind", "127.0.0.1", "address of the control listener")
	publicBind = flag.String("public-bind", "127.0.0.1", "address of the public listeners")
	window     = flag.Int("window", 256*1024, "yamux MaxStreamWindowSize in bytes (>= 262144)")
	keepalive  = flag.Duration("keepalive-interval", 30*time.Second, "yamux keepalive interval (0 = off)")
)

func main() {
	flag.Parse()
	log.SetOutput(os.Stderr)
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	ln, err := net.Listen("tcp", net.JoinHostPort(*bind, strconv.Itoa(*port)))
	if err != nil {
		log.Fatalf("listen: %v", err)
	}
	// The harness reads this line from stdout to learn the port.
	fmt.Printf("Serving relay requests on port %d\n", ln.Addr().(*net.TCPAddr).Port)
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatalf("accept: %v", err)
		}
		go serveForwarder(c)
	}
}

func yamuxConfig() *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.MaxStreamWindowSize = uint32(*window)
	cfg.EnableKeepAlive = *keepalive > 0
	if *keepalive > 0 {
		cfg.KeepAliveInterval = *keepalive
	}
	cfg.LogOutput = os.Stderr
	return cfg
}

// serveForwarder handles one registered forwarder connection for its lifetime.
func serveForwarder(c net.Conn) {
	who := c.RemoteAddr().String()
	pub, err := net.Listen("tcp", net.JoinHostPort(*publicBind, "0"))
	if err != nil {
		log.Printf("%s: public listener: %v", who, err)
		c.Close()
		return
	}
	pubPort := pub.Addr().(*net.TCPAddr).Port
	if _, err := fmt.Fprintf(c, "%d\n", pubPort); err != nil {
		log.Printf("%s: sending the public port: %v", who, err)
		pub.Close()
		c.Close()
		return
	}
	sess, err := yamux.Client(c, yamuxConfig())
	if err != nil {
		log.Printf("%s: yamux: %v", who, err)
		pub.Close()
		c.Close()
		return
	}
	log.Printf("%s: registered, public port %d", who, pubPort)

	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	go func() {
		<-sess.CloseChan()
		pub.Close()
		mu.Lock()
		for pc := range conns {
			pc.Close()
		}
		mu.Unlock()
	}()

	for {
		pc, err := pub.Accept()
		if err != nil {
			break
		}
		mu.Lock()
		conns[pc] = struct{}{}
		mu.Unlock()
		go func() {
			defer func() {
				mu.Lock()
				delete(conns, pc)
				mu.Unlock()
			}()
			st, err := sess.Open()
			if err != nil {
				log.Printf("%s: opening a stream for %s: %v", who, pc.RemoteAddr(), err)
				pc.Close()
				return
			}
			tunnel.Pipe(pc.(*net.TCPConn), st)
		}()
	}
	sess.Close()
	log.Printf("%s: session ended, public port %d closed", who, pubPort)
}
