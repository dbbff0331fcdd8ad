// Package tunnel holds what the Go relay and the Go forwarder share.
package tunnel

import (
	"errors"
	"io"
	"net"
	"sync"
)

// Pipe copies both ways with half-close (EOF on one side becomes FIN on the
// other) and closes both ends when both directions are done.
func Pipe(tcp *net.TCPConn, st net.Conn) {
	PipeBuffer(tcp, st, 0)
}

// PipeBuffer is Pipe with copies of up to size bytes at once (0: io.Copy's own).
func PipeBuffer(tcp *net.TCPConn, st net.Conn, size int) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // TCP -> stream; TCP EOF becomes the stream's FIN
		defer wg.Done()
		if _, err := copyBuffer(st, tcp, size); err != nil && !errors.Is(err, net.ErrClosed) {
			tcp.Close()
		}
		st.Close()
	}()
	go func() { // stream -> TCP; stream EOF becomes the TCP FIN
		defer wg.Done()
		if _, err := copyBuffer(tcp, st, size); err != nil {
			tcp.Close()
			return
		}
		tcp.CloseWrite()
	}()
	wg.Wait()
	tcp.Close()
	st.Close()
}

func copyBuffer(dst io.Writer, src io.Reader, size int) (int64, error) {
	if size <= 0 {
		return io.Copy(dst, src)
	}
	// Hide ReaderFrom and WriterTo: they would copy with a buffer of their own.
	return io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, make([]byte, size))
}
