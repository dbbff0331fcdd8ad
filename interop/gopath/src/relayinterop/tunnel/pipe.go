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
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // TCP -> stream; TCP EOF becomes the stream's FIN
		defer wg.Done()
		if _, err := io.Copy(st, tcp); err != nil && !errors.Is(err, net.ErrClosed) {
			tcp.Close()
		}
		st.Close()
	}()
	go func() { // stream -> TCP; stream EOF becomes the TCP FIN
		defer wg.Done()
		if _, err := io.Copy(tcp, st); err != nil {
			tcp.Close()
			return
		}
		tcp.CloseWrite()
	}()
	wg.Wait()
	tcp.Close()
	st.Close()
}
