// echo-server is the benchmark's target service: every byte a client sends is
// written back on the same connection. When the client half-closes (EOF), the
// server half-closes too after the last byte; then it closes the connection.
//
// It listens on -addr (default 127.0.0.1:0, an OS-chosen port) and prints the
// address it listens on, "HOST:PORT", alone on a line of stdout, so a script can
// read it. It runs until killed.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address HOST:PORT (port 0 = OS-chosen)")
	flag.Parse()
	log.SetOutput(os.Stderr)
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("listen %s: %v", *addr, err)
	}
	fmt.Println(ln.Addr().String())
	for {
		c, err := ln.Accept()
		if err != nil {
			// Out of descriptors and the like: back off instead of spinning.
			log.Printf("accept: %v", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go echo(c.(*net.TCPConn))
	}
}

func echo(c *net.TCPConn) {
	defer c.Close()
	c.SetNoDelay(true)
	// A plain read/write loop (no splice): the same cost for every path measured.
	// The buffer starts small (10,000 idle connections stay cheap) and grows to
	// 64 KiB on the first read that fills it.
	buf := make([]byte, 2048)
	for {
		n, err := c.Read(buf)
		if n == len(buf) && len(buf) < 64*1024 {
			buf = append(buf[:n], make([]byte, 64*1024-n)...)
		}
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err == io.EOF {
			c.CloseWrite()
			return
		}
		if err != nil {
			return
		}
	}
}
