// Package register is how a Go registering side (echo-peer)
// gets a public port from a relay: the seed protocol (the port line first), or
// registration v2 without a secret when given a name (docs/protocol.md).
package register

import (
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// Options of one registration.
type Options struct {
	Relay    string        // HOST:PORT of the control port
	Name     string        // "": the seed protocol; else answer a v2 challenge with name=
	Sessions int           // >1: ask for that many sessions of Name on one port (if offered)
	Timeout  time.Duration // to dial, and for each line
}

// Dial registers once: the connection (yamux follows on it) and the public port.
func Dial(o Options) (net.Conn, int, error) {
	c, err := net.DialTimeout("tcp", o.Relay, o.Timeout)
	if err != nil {
		return nil, 0, fmt.Errorf("dial: %w", err)
	}
	if o.Name != "" {
		if err := answerChallenge(c, o); err != nil {
			c.Close()
			return nil, 0, err
		}
	}
	port, err := readPortLine(c, o.Timeout)
	if err != nil {
		c.Close()
		return nil, 0, err
	}
	return c, port, nil
}

// answerChallenge reads a v2 challenge line and answers "relay/2 name=NAME" (and
// "sessions=K" when the relay offers that feature).
func answerChallenge(c net.Conn, o Options) error {
	line, err := readLine(c, o.Timeout, 1024)
	if err != nil {
		return fmt.Errorf("reading the challenge: %w", err)
	}
	if !strings.HasPrefix(line, "error: ") || !strings.Contains(line, " relay/2 ") {
		return fmt.Errorf("expected a v2 challenge, got %q", line)
	}
	if strings.Contains(line, "auth=required") {
		return fmt.Errorf("the relay requires a secret; this program has none")
	}
	response := "relay/2 name=" + o.Name
	if o.Sessions > 1 && offers(line, "sessions") {
		response += " sessions=" + strconv.Itoa(o.Sessions)
	}
	_, err = io.WriteString(c, response+"\n")
	return err
}

// offers tells whether the challenge's features= list has feature.
func offers(challenge, feature string) bool {
	for _, field := range strings.Fields(challenge) {
		if strings.HasPrefix(field, "features=") {
			for _, f := range strings.Split(strings.TrimPrefix(field, "features="), ",") {
				if f == feature {
					return true
				}
			}
		}
	}
	return false
}

// readPortLine reads "<port>\n" byte by byte: yamux frames may follow it
// directly, so nothing past the newline may be consumed.
func readPortLine(c net.Conn, limit time.Duration) (int, error) {
	line, err := readLine(c, limit, 16)
	if err != nil {
		return 0, err
	}
	port, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || port <= 0 || port > 65535 {
		return 0, fmt.Errorf("bad port line %q", line)
	}
	return port, nil
}

// readLine reads one line (without its newline) byte by byte, at most max bytes.
func readLine(c net.Conn, limit time.Duration, max int) (string, error) {
	if err := c.SetReadDeadline(time.Now().Add(limit)); err != nil {
		return "", err
	}
	var line []byte
	one := make([]byte, 1)
	for {
		if _, err := io.ReadFull(c, one); err != nil {
			return "", fmt.Errorf("reading the port line (got %q): %w", line, err)
		}
		if one[0] == '\n' {
			break
		}
		if len(line) >= max {
			return "", fmt.Errorf("port line too long: %q", line)
		}
		line = append(line, one[0])
	}
	return string(line), c.SetReadDeadline(time.Time{})
}
