// loadgen drives the relay benchmark (bench/): it opens real TCP connections to
// an echo service (directly, or through a relay's public port) and measures.
// Each subcommand prints exactly one JSON object on its last line of stdout and
// exits 0 when every connection did what it should, 1 otherwise (the JSON then
// has "ok": false and "error").
//
//	loadgen echo     -addr A -conns N -bytes B      N connections, each echoes B bytes
//	loadgen latency  -addr A -size 64 -n 20000      request/response round trips, one connection
//	loadgen connrate -addr A -concurrency 16 -duration 3s
//	                                                 connect, one exchange, close, in a loop;
//	                                                 -head H sends H first (an HTTP request head,
//	                                                 or a ClientHello as hex with -head-hex) and
//	                                                 reads it back: routing by name on the way;
//	                                                 -addr-b B alternates A and B connection by
//	                                                 connection (b_cycle_* are B's): two paths
//	                                                 compared under the same load
//	loadgen idle     -addr A -conns 10000           open N connections, then one exchange on each;
//	                                                 prints "READY {json}", waits for a line on
//	                                                 stdin (or EOF), closes all, prints the result
//	loadgen burst    -addr A -conns 5000 -size 100  N connections dialed at the same moment, each
//	                                                 exchanges once and closes; failed connections
//	                                                 are a result here (counted by kind), not a failure
//
// Every result has "cpu_s", the CPU time loadgen itself used.
// Echoed bytes are checked against the pattern that was sent. Throughput counts
// both directions (bytes sent + bytes received), in MB = 10^6 bytes. -addr may
// list several targets, A,B,...: echo and idle spread their connections over
// them in turn, connrate its workers; the result is for all of them together.
package main

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const patternSize = 1 << 20

// pattern is what every connection sends, repeated: byte i of a stream is
// pattern[i % patternSize], so the reader can check the echo at any offset.
var pattern = func() []byte {
	p := make([]byte, patternSize)
	rand.New(rand.NewSource(20240601)).Read(p)
	return p
}()

type result map[string]any

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	cmd, args := os.Args[1], os.Args[2:]
	var res result
	switch cmd {
	case "echo":
		res = runEcho(args)
	case "latency":
		res = runLatency(args)
	case "connrate":
		res = runConnrate(args)
	case "idle":
		res = runIdle(args)
	case "burst":
		res = runBurst(args)
	default:
		usage()
	}
	res["workload"] = cmd
	res["cpu_s"] = cpuSeconds()
	if _, ok := res["ok"]; !ok {
		res["ok"] = true
	}
	out, err := json.Marshal(res)
	if err != nil {
		fmt.Fprintf(os.Stderr, "loadgen: json: %v\n", err)
		os.Exit(1)
	}
	fmt.Println(string(out))
	if res["ok"] != true {
		os.Exit(1)
	}
}

// cpuSeconds is the CPU time (user + system) this process has used so far.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: loadgen echo|latency|connrate|idle|burst -addr HOST:PORT [flags] (-h per subcommand)")
	os.Exit(2)
}

func fail(res result, format string, a ...any) result {
	res["ok"] = false
	res["error"] = fmt.Sprintf(format, a...)
	return res
}

// firstError keeps the first of many concurrent errors, and counts them all.
type firstError struct {
	mu    sync.Mutex
	err   error
	count int64
}

func (f *firstError) add(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil {
		f.err = err
	}
	f.count++
}

func (f *firstError) get() (error, int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err, f.count
}

// targets is -addr as a list: "A" or "A,B,...".
func targets(addr string) []string {
	return strings.Split(addr, ",")
}

// dialAll opens n connections, connection i to addrs[i % len(addrs)], with at
// most `parallel` dials in flight (a listener's accept backlog is finite: a
// flood of SYNs only measures SYN retransmission timers).
func dialAll(addrs []string, n, parallel int, deadline time.Time) ([]*net.TCPConn, error) {
	conns := make([]*net.TCPConn, n)
	var errs firstError
	var next int64 = -1
	var wg sync.WaitGroup
	if parallel > n {
		parallel = n
	}
	for w := 0; w < parallel; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := net.Dialer{Deadline: deadline}
			for {
				i := atomic.AddInt64(&next, 1)
				if i >= int64(n) {
					return
				}
				if e, _ := errs.get(); e != nil {
					return
				}
				addr := addrs[i%int64(len(addrs))]
				c, err := d.Dial("tcp", addr)
				if err != nil {
					errs.add(fmt.Errorf("dial %d of %d (%s): %w", i+1, n, addr, err))
					return
				}
				conns[i] = c.(*net.TCPConn)
			}
		}()
	}
	wg.Wait()
	if err, _ := errs.get(); err != nil {
		closeAll(conns)
		return nil, err
	}
	return conns, nil
}

func closeAll(conns []*net.TCPConn) {
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}

// sendPattern writes `total` bytes of the pattern, starting at stream offset 0.
func sendPattern(c net.Conn, total int64, chunk int) error {
	var off int64
	for off < total {
		p := int(off % patternSize)
		n := chunk
		if rest := patternSize - p; n > rest {
			n = rest
		}
		if rest := total - off; int64(n) > rest {
			n = int(rest)
		}
		w, err := c.Write(pattern[p : p+n])
		off += int64(w)
		if err != nil {
			return fmt.Errorf("write at %d of %d: %w", off, total, err)
		}
	}
	return nil
}

// recvPattern reads exactly `total` bytes and checks them against the pattern.
func recvPattern(c net.Conn, total int64, buf []byte) error {
	var off int64
	for off < total {
		want := int64(len(buf))
		if rest := total - off; want > rest {
			want = rest
		}
		n, err := c.Read(buf[:want])
		if n > 0 {
			if !matches(buf[:n], off) {
				return fmt.Errorf("echoed bytes differ from those sent near offset %d", off)
			}
			off += int64(n)
		}
		if err != nil {
			if err == io.EOF && off < total {
				return fmt.Errorf("connection closed after %d of %d echoed bytes: %w", off, total, io.ErrUnexpectedEOF)
			}
			if off < total {
				return fmt.Errorf("read at %d of %d: %w", off, total, err)
			}
		}
	}
	return nil
}

func matches(got []byte, off int64) bool {
	for len(got) > 0 {
		p := int(off % patternSize)
		n := len(got)
		if rest := patternSize - p; n > rest {
			n = rest
		}
		if !bytes.Equal(got[:n], pattern[p:p+n]) {
			return false
		}
		got = got[n:]
		off += int64(n)
	}
	return true
}

// exchangeHead sends head and reads it back (nothing when it is empty).
func exchangeHead(c net.Conn, head []byte) error {
	if len(head) == 0 {
		return nil
	}
	if _, err := c.Write(head); err != nil {
		return err
	}
	got := make([]byte, len(head))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("reading the head back: %w", err)
	}
	if !bytes.Equal(got, head) {
		return errors.New("the head came back changed")
	}
	return nil
}

// exchange sends `size` bytes and reads them back.
func exchange(c net.Conn, size int, buf []byte) error {
	if err := sendPattern(c, int64(size), size); err != nil {
		return err
	}
	return recvPattern(c, int64(size), buf)
}

func runEcho(args []string) result {
	fs := flag.NewFlagSet("echo", flag.ExitOnError)
	addr := fs.String("addr", "", "target HOST:PORT (or several: A,B,...)")
	conns := fs.Int("conns", 1, "connections, all open at once")
	size := fs.Int64("bytes", 1_000_000_000, "bytes each connection sends (and gets back)")
	chunk := fs.Int("chunk", 64*1024, "write size")
	parallel := fs.Int("dial-parallel", 64, "dials in flight at once")
	timeout := fs.Duration("timeout", 120*time.Second, "give up after this")
	fs.Parse(args)
	res := result{"conns": *conns, "bytes_per_conn": *size}
	deadline := time.Now().Add(*timeout)

	t0 := time.Now()
	cs, err := dialAll(targets(*addr), *conns, *parallel, deadline)
	if err != nil {
		return fail(res, "%v", err)
	}
	defer closeAll(cs)
	res["connect_s"] = time.Since(t0).Seconds()

	// All connections are open: start every transfer at once and time them.
	var errs firstError
	var moved int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	for _, c := range cs {
		c.SetDeadline(deadline)
		wg.Add(2)
		go func(c *net.TCPConn) {
			defer wg.Done()
			<-start
			if err := sendPattern(c, *size, *chunk); err != nil {
				errs.add(err)
				c.Close()
				return
			}
			atomic.AddInt64(&moved, *size)
		}(c)
		go func(c *net.TCPConn) {
			defer wg.Done()
			buf := make([]byte, 64*1024)
			<-start
			if err := recvPattern(c, *size, buf); err != nil {
				errs.add(err)
				c.Close()
				return
			}
			atomic.AddInt64(&moved, *size)
		}(c)
	}
	t1 := time.Now()
	close(start)
	wg.Wait()
	elapsed := time.Since(t1).Seconds()
	res["seconds"] = elapsed
	res["bytes_moved"] = moved
	res["mb_per_s"] = float64(moved) / elapsed / 1e6
	if err, n := errs.get(); err != nil {
		res["errors"] = n
		return fail(res, "%v", err)
	}
	res["errors"] = 0
	return res
}

func percentiles(res result, prefix string, samples []time.Duration) {
	if len(samples) == 0 {
		return
	}
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	at := func(q float64) float64 {
		i := int(q * float64(len(samples)-1))
		return float64(samples[i].Nanoseconds()) / 1e3
	}
	var sum time.Duration
	for _, s := range samples {
		sum += s
	}
	res[prefix+"p50_us"] = at(0.50)
	res[prefix+"p90_us"] = at(0.90)
	res[prefix+"p99_us"] = at(0.99)
	res[prefix+"p999_us"] = at(0.999)
	res[prefix+"max_us"] = at(1)
	res[prefix+"mean_us"] = float64(sum.Nanoseconds()) / float64(len(samples)) / 1e3
}

func runLatency(args []string) result {
	fs := flag.NewFlagSet("latency", flag.ExitOnError)
	addr := fs.String("addr", "", "target HOST:PORT (or several: A,B,...)")
	size := fs.Int("size", 64, "request (and response) size in bytes")
	n := fs.Int("n", 20000, "measured round trips (at most)")
	warmup := fs.Int("warmup", 500, "round trips before measuring")
	duration := fs.Duration("duration", 10*time.Second, "stop measuring after this even if fewer than -n")
	timeout := fs.Duration("timeout", 60*time.Second, "give up after this")
	fs.Parse(args)
	res := result{"size": *size}
	deadline := time.Now().Add(*timeout)
	cs, err := dialAll(targets(*addr)[:1], 1, 1, deadline)
	if err != nil {
		return fail(res, "%v", err)
	}
	c := cs[0]
	defer c.Close()
	c.SetDeadline(deadline)
	buf := make([]byte, *size)
	for i := 0; i < *warmup; i++ {
		if err := exchange(c, *size, buf); err != nil {
			return fail(res, "warmup round trip %d: %v", i, err)
		}
	}
	samples := make([]time.Duration, 0, *n)
	t0 := time.Now()
	stop := t0.Add(*duration)
	for i := 0; i < *n; i++ {
		t := time.Now()
		if t.After(stop) {
			break
		}
		if err := exchange(c, *size, buf); err != nil {
			return fail(res, "round trip %d: %v", i, err)
		}
		samples = append(samples, time.Since(t))
	}
	res["seconds"] = time.Since(t0).Seconds()
	res["round_trips"] = len(samples)
	res["bytes_moved"] = int64(len(samples)) * int64(*size) * 2
	percentiles(res, "", samples)
	return res
}

func runConnrate(args []string) result {
	fs := flag.NewFlagSet("connrate", flag.ExitOnError)
	addr := fs.String("addr", "", "target HOST:PORT (or several: A,B,...)")
	size := fs.Int("size", 64, "bytes exchanged on each connection")
	concurrency := fs.Int("concurrency", 16, "connections in flight at once")
	duration := fs.Duration("duration", 3*time.Second, "how long to open connections")
	maxConns := fs.Int("max", 1_000_000, "stop after this many connections")
	timeout := fs.Duration("timeout", 10*time.Second, "per-connection timeout")
	headText := fs.String("head", "", "bytes sent (and read back) before the exchange, e.g. an HTTP request head")
	headHex := fs.String("head-hex", "", "the same, as hex (a TLS ClientHello)")
	addrB := fs.String("addr-b", "", "a second target: connections alternate between the two")
	fs.Parse(args)
	res := result{"size": *size, "concurrency": *concurrency}
	head := []byte(*headText)
	if *headHex != "" {
		var err error
		if head, err = hex.DecodeString(*headHex); err != nil {
			return fail(res, "-head-hex: %v", err)
		}
	}

	var done, started int64
	var errs firstError
	var mu sync.Mutex
	var samples, samplesB []time.Duration
	var wg sync.WaitGroup
	t0 := time.Now()
	stop := t0.Add(*duration)
	addrs := targets(*addr)
	for w := 0; w < *concurrency; w++ {
		wg.Add(1)
		go func(addr string) {
			defer wg.Done()
			buf := make([]byte, *size)
			local := make([]time.Duration, 0, 4096)
			localB := make([]time.Duration, 0, 4096)
			d := net.Dialer{Timeout: *timeout}
			for n := 0; time.Now().Before(stop) && atomic.AddInt64(&started, 1) <= int64(*maxConns); n++ {
				target, onB := addr, *addrB != "" && n%2 == 1
				if onB {
					target = *addrB
				}
				t := time.Now()
				c, err := d.Dial("tcp", target)
				if err != nil {
					errs.add(fmt.Errorf("dial %s: %w", target, err))
					time.Sleep(10 * time.Millisecond)
					continue
				}
				c.SetDeadline(t.Add(*timeout))
				err = exchangeHead(c, head)
				if err == nil {
					err = exchange(c, *size, buf)
				}
				c.Close()
				if err != nil {
					errs.add(err)
					continue
				}
				if onB {
					localB = append(localB, time.Since(t))
				} else {
					local = append(local, time.Since(t))
				}
				atomic.AddInt64(&done, 1)
			}
			mu.Lock()
			samples = append(samples, local...)
			samplesB = append(samplesB, localB...)
			mu.Unlock()
		}(addrs[w%len(addrs)])
	}
	wg.Wait()
	elapsed := time.Since(t0).Seconds()
	res["seconds"] = elapsed
	res["connections"] = done
	res["conns_per_s"] = float64(done) / elapsed
	res["bytes_moved"] = done * int64(*size) * 2
	percentiles(res, "cycle_", samples)
	if *addrB != "" {
		percentiles(res, "b_cycle_", samplesB)
	}
	err, n := errs.get()
	res["errors"] = n
	if err != nil {
		return fail(res, "%d of %d connections failed; first: %v", n, n+done, err)
	}
	return res
}

func runIdle(args []string) result {
	fs := flag.NewFlagSet("idle", flag.ExitOnError)
	addr := fs.String("addr", "", "target HOST:PORT (or several: A,B,...)")
	conns := fs.Int("conns", 10000, "connections held open at once")
	size := fs.Int("size", 64, "bytes exchanged on each connection once all are open")
	parallel := fs.Int("dial-parallel", 64, "dials in flight at once")
	timeout := fs.Duration("timeout", 120*time.Second, "give up after this (also bounds the wait on stdin)")
	fs.Parse(args)
	res := result{"conns": *conns, "size": *size}
	deadline := time.Now().Add(*timeout)

	t0 := time.Now()
	cs, err := dialAll(targets(*addr), *conns, *parallel, deadline)
	if err != nil {
		return fail(res, "%v", err)
	}
	defer closeAll(cs)
	res["open_s"] = time.Since(t0).Seconds()

	// Every connection is open: now each does one exchange, all at once, which
	// proves each was relayed end to end.
	var errs firstError
	var okCount int64
	var wg sync.WaitGroup
	t1 := time.Now()
	for _, c := range cs {
		wg.Add(1)
		go func(c *net.TCPConn) {
			defer wg.Done()
			c.SetDeadline(deadline)
			buf := make([]byte, *size)
			if err := exchange(c, *size, buf); err != nil {
				errs.add(err)
				return
			}
			atomic.AddInt64(&okCount, 1)
		}(c)
	}
	wg.Wait()
	res["exchange_s"] = time.Since(t1).Seconds()
	res["exchanged"] = okCount
	res["bytes_moved"] = okCount * int64(*size) * 2
	err, n := errs.get()
	res["errors"] = n
	if err != nil {
		return fail(res, "%d of %d exchanges failed; first: %v", n, *conns, err)
	}

	// Hold everything open until told (the caller measures memory now).
	ready, _ := json.Marshal(res)
	fmt.Printf("READY %s\n", ready)
	os.Stdout.Sync()
	line := make(chan error, 1)
	go func() {
		_, err := bufio.NewReader(os.Stdin).ReadString('\n')
		line <- err
	}()
	select {
	case err := <-line:
		if err != nil && !errors.Is(err, io.EOF) {
			return fail(res, "reading stdin: %v", err)
		}
	case <-time.After(time.Until(deadline)):
		return fail(res, "nobody said to close within -timeout")
	}
	t2 := time.Now()
	closeAll(cs)
	cs = nil
	res["close_s"] = time.Since(t2).Seconds()
	return res
}

// errorKind sorts a failed connection's error into the counts runBurst reports.
func errorKind(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "reset"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "closed"
	}
	return "other"
}

// burstKinds are the error kinds of runBurst, each reported as "<kind>_errors".
var burstKinds = []string{"refused", "reset", "timeout", "closed", "other"}

func runBurst(args []string) result {
	fs := flag.NewFlagSet("burst", flag.ExitOnError)
	addr := fs.String("addr", "", "target HOST:PORT")
	conns := fs.Int("conns", 1000, "connections, all dialed at the same moment")
	size := fs.Int("size", 100, "bytes each connection sends (and reads back) before closing")
	timeout := fs.Duration("timeout", 30*time.Second, "each connection gives up after this")
	fs.Parse(args)
	res := result{"conns": *conns, "size": *size}

	var mu sync.Mutex
	kinds := map[string]int64{}
	first := map[string]string{}
	samples := make([]time.Duration, 0, *conns)
	var okCount int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < *conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, *size)
			<-start
			t := time.Now()
			err := func() error {
				d := net.Dialer{Deadline: t.Add(*timeout)}
				c, err := d.Dial("tcp", *addr)
				if err != nil {
					return fmt.Errorf("dial: %w", err)
				}
				defer c.Close()
				c.SetDeadline(t.Add(*timeout))
				return exchange(c, *size, buf)
			}()
			took := time.Since(t)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				kind := errorKind(err)
				kinds[kind]++
				if _, seen := first[kind]; !seen {
					first[kind] = err.Error()
				}
				return
			}
			okCount++
			samples = append(samples, took)
		}()
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	res["seconds"] = time.Since(t0).Seconds()
	res["completed"] = okCount
	res["bytes_moved"] = okCount * int64(*size) * 2
	var failed int64
	for _, kind := range burstKinds {
		res[kind+"_errors"] = kinds[kind]
		failed += kinds[kind]
	}
	res["errors"] = failed
	if len(first) > 0 {
		res["first_errors"] = first
	}
	percentiles(res, "conn_", samples)
	return res
}
