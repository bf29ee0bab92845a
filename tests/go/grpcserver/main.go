// A grpc-go server with grpc-go's real policies, for the SDK's transport
// tests: keepalive enforcement (its defaults, or a shortened MinTime), and
// every method served by one handler that answers raw bytes.
//
// Flags: -addr (TCP) or -unix (a socket path); -cert and -key for TLS;
// -min-time and -permit-without-stream for keepalive enforcement; -delay
// (a slow replica: every call waits this long before answering).
//
// Built from Debian's golang-google-grpc-dev in GOPATH mode by the tests
// (tests/src/grpc_go.rs). It prints one line per event on stdout:
//
//	listening <addr>
//	open <conn> <ms>       a connection was accepted
//	ping <conn> <ms>       the client sent a PING (not an ACK)
//	closed <conn> <ms>     the connection ended
//	call 0 <ms> <id>       a call arrived (its x-request-id, or -)
//	stopping 0 <ms>        SIGTERM: GracefulStop (GOAWAY, calls in flight finish)
//	cancelled 0 <ms>       a call was cancelled (RST_STREAM) while it waited to answer
//
// where <ms> counts from the server's start. A call's behaviour comes from
// its metadata: x-test-delay-ms (wait before the first response message),
// x-test-messages (how many, default 1), x-test-size (bytes each, sent as
// protobuf field 1, a string, so that any response type with a string field
// 1 decodes it; default 0: an empty message).
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
)

var (
	// -delay: added to every call's x-test-delay-ms (a slow replica).
	serverDelay time.Duration
	start       = time.Now()
	out         = bufio.NewWriter(os.Stdout)
	outMu       sync.Mutex
)

func event(format string, args ...interface{}) {
	outMu.Lock()
	defer outMu.Unlock()
	fmt.Fprintf(out, format+"\n", args...)
	out.Flush()
}

func ms() int64 { return time.Since(start).Milliseconds() }

// rawCodec passes message bytes through as they are.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

// tapConn reports the PING frames the client sends.
type tapConn struct {
	net.Conn
	id      int
	preface int
	header  []byte
	skip    int
	once    sync.Once
}

func (c *tapConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.walk(p[:n])
	return n, err
}

func (c *tapConn) walk(b []byte) {
	for len(b) > 0 {
		if c.preface < 24 {
			take := 24 - c.preface
			if take > len(b) {
				take = len(b)
			}
			c.preface += take
			b = b[take:]
			continue
		}
		if c.skip > 0 {
			take := c.skip
			if take > len(b) {
				take = len(b)
			}
			c.skip -= take
			b = b[take:]
			continue
		}
		need := 9 - len(c.header)
		if need > len(b) {
			need = len(b)
		}
		c.header = append(c.header, b[:need]...)
		b = b[need:]
		if len(c.header) < 9 {
			return
		}
		h := c.header
		c.header = c.header[:0]
		length := int(h[0])<<16 | int(h[1])<<8 | int(h[2])
		if h[3] == 0x6 && h[4]&0x1 == 0 {
			event("ping %d %d", c.id, ms())
		}
		c.skip = length
	}
}

func (c *tapConn) Close() error {
	c.once.Do(func() { event("closed %d %d", c.id, ms()) })
	return c.Conn.Close()
}

type tapListener struct {
	net.Listener
	mu   sync.Mutex
	next int
}

func (l *tapListener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.next++
	id := l.next
	l.mu.Unlock()
	event("open %d %d", id, ms())
	return &tapConn{Conn: conn, id: id}, nil
}

func number(md metadata.MD, key string, fallback int) int {
	if values := md.Get(key); len(values) > 0 {
		if n, err := strconv.Atoi(values[0]); err == nil {
			return n
		}
	}
	return fallback
}

func message(size int) []byte {
	if size <= 0 {
		return []byte{}
	}
	msg := []byte{0x0a}
	for n := uint64(size); ; {
		if n < 0x80 {
			msg = append(msg, byte(n))
			break
		}
		msg = append(msg, byte(n&0x7f|0x80))
		n >>= 7
	}
	body := make([]byte, size)
	for i := range body {
		body[i] = 'x'
	}
	return append(msg, body...)
}

func handle(_ interface{}, stream grpc.ServerStream) error {
	md, _ := metadata.FromIncomingContext(stream.Context())
	requestID := "-"
	if ids := md.Get("x-request-id"); len(ids) > 0 {
		requestID = ids[0]
	}
	event("call 0 %d %s", ms(), requestID)
	var request []byte
	if err := stream.RecvMsg(&request); err != nil && err != io.EOF {
		if stream.Context().Err() != nil {
			// Reset before its request message was read.
			event("cancelled 0 %d", ms())
		}
		return err
	}
	delay := number(md, "x-test-delay-ms", 0) + int(serverDelay.Milliseconds())
	if delay > 0 {
		select {
		case <-time.After(time.Duration(delay) * time.Millisecond):
		case <-stream.Context().Done():
			// The client's RST_STREAM (CANCEL) or its deadline.
			event("cancelled 0 %d", ms())
			return stream.Context().Err()
		}
	}
	count := number(md, "x-test-messages", 1)
	size := number(md, "x-test-size", 0)
	for i := 0; i < count; i++ {
		reply := message(size)
		if err := stream.SendMsg(&reply); err != nil {
			return err
		}
	}
	return nil
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	minTime := flag.Duration("min-time", 0, "keepalive enforcement MinTime (0: grpc-go's default, 5m)")
	permit := flag.Bool("permit-without-stream", false, "keepalive enforcement PermitWithoutStream")
	unixPath := flag.String("unix", "", "listen on this Unix socket instead of -addr")
	certFile := flag.String("cert", "", "TLS: the server's certificate chain (PEM); with -key")
	keyFile := flag.String("key", "", "TLS: the server's private key (PEM)")
	flag.DurationVar(&serverDelay, "delay", 0, "wait this long before every call's first response message")
	flag.Parse()

	encoding.RegisterCodec(rawCodec{})
	options := []grpc.ServerOption{grpc.UnknownServiceHandler(handle)}
	if *minTime > 0 || *permit {
		options = append(options, grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             *minTime,
			PermitWithoutStream: *permit,
		}))
	}
	if *certFile != "" {
		creds, err := credentials.NewServerTLSFromFile(*certFile, *keyFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		options = append(options, grpc.Creds(creds))
	}
	server := grpc.NewServer(options...)
	network, where := "tcp", *addr
	if *unixPath != "" {
		network, where = "unix", *unixPath
	}
	listener, err := net.Listen(network, where)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	event("listening %s", listener.Addr())
	// SIGTERM: a graceful stop, as a pod's shutdown does it.
	terms := make(chan os.Signal, 1)
	signal.Notify(terms, syscall.SIGTERM)
	go func() {
		<-terms
		event("stopping 0 %d", ms())
		server.GracefulStop()
		os.Exit(0)
	}()
	// Ends when the test closes stdin (or dies).
	go func() {
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	if err := server.Serve(&tapListener{Listener: listener}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
