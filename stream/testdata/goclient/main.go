// Command goclient drives berth-stream with the same client-go code paths that
// crictl v1.37 uses (pkg/common/streaming.go), so the Rust integration tests
// judge the server with a real client rather than an imitation.
//
//	goclient exec -url URL -transport spdy|websocket [-stdin] [-stdout] [-stderr] [-tty] [-resize 80x24,100x30] [-ws-protocols v4.channel.k8s.io]
//	goclient portforward -url URL -transport spdy|websocket -port P -payload TEXT [-conns N]
//
// exec prints the remote stdout/stderr on its own stdout/stderr and ends with one
// marker line on stderr: "GOCLIENT_RESULT=ok", "GOCLIENT_RESULT=exit:<code>" or
// "GOCLIENT_RESULT=error:<message>". portforward prints what the forwarded port
// echoed for each connection, one line per connection, then the same marker.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	"k8s.io/client-go/util/exec"
	"k8s.io/streaming/pkg/httpstream"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: goclient exec|portforward ...")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "exec":
		err = runExec(os.Args[2:])
	case "portforward":
		err = runPortForward(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	var exitErr exec.ExitError
	switch {
	case err == nil:
		fmt.Fprintln(os.Stderr, "GOCLIENT_RESULT=ok")
	case errors.As(err, &exitErr):
		fmt.Fprintf(os.Stderr, "GOCLIENT_RESULT=exit:%d\n", exitErr.ExitStatus())
		os.Exit(3)
	default:
		fmt.Fprintf(os.Stderr, "GOCLIENT_RESULT=error:%s\n", strings.ReplaceAll(err.Error(), "\n", " "))
		os.Exit(2)
	}
}

// sizeQueue hands out the requested terminal sizes once each, pausing between
// them so they arrive as separate resize messages, then ends the resize stream.
type sizeQueue struct {
	sizes []remotecommand.TerminalSize
}

func (q *sizeQueue) Next() *remotecommand.TerminalSize {
	if len(q.sizes) == 0 {
		return nil
	}
	s := q.sizes[0]
	q.sizes = q.sizes[1:]
	time.Sleep(50 * time.Millisecond)
	return &s
}

func parseSizes(spec string) ([]remotecommand.TerminalSize, error) {
	var out []remotecommand.TerminalSize
	if spec == "" {
		return out, nil
	}
	for _, part := range strings.Split(spec, ",") {
		w, h, ok := strings.Cut(part, "x")
		if !ok {
			return nil, fmt.Errorf("bad size %q, want WxH", part)
		}
		wi, err := strconv.ParseUint(w, 10, 16)
		if err != nil {
			return nil, err
		}
		hi, err := strconv.ParseUint(h, 10, 16)
		if err != nil {
			return nil, err
		}
		out = append(out, remotecommand.TerminalSize{Width: uint16(wi), Height: uint16(hi)})
	}
	return out, nil
}

func runExec(args []string) error {
	fs := flag.NewFlagSet("exec", flag.ContinueOnError)
	rawURL := fs.String("url", "", "stream URL returned by the server")
	transport := fs.String("transport", "spdy", "spdy or websocket")
	stdin := fs.Bool("stdin", false, "send our stdin")
	stdout := fs.Bool("stdout", true, "receive stdout")
	stderr := fs.Bool("stderr", true, "receive stderr")
	tty := fs.Bool("tty", false, "allocate a terminal")
	resize := fs.String("resize", "", "terminal sizes to send, e.g. 80x24,100x30")
	timeout := fs.Duration("timeout", 60*time.Second, "overall deadline")
	wsProtocols := fs.String("ws-protocols", "", "WebSocket subprotocols to offer instead of client-go's default (v5.channel.k8s.io)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	u, err := url.Parse(*rawURL)
	if err != nil {
		return err
	}
	config := &rest.Config{}
	var executor remotecommand.Executor
	switch *transport {
	case "spdy":
		executor, err = remotecommand.NewSPDYExecutor(config, "POST", u)
	case "websocket":
		if *wsProtocols != "" {
			executor, err = remotecommand.NewWebSocketExecutorForProtocols(config, "GET", u.String(), strings.Split(*wsProtocols, ",")...)
		} else {
			executor, err = remotecommand.NewWebSocketExecutor(config, "GET", u.String())
		}
	default:
		err = fmt.Errorf("unknown transport %q", *transport)
	}
	if err != nil {
		return err
	}
	opts := remotecommand.StreamOptions{Tty: *tty}
	if *stdin {
		opts.Stdin = os.Stdin
	}
	if *stdout {
		opts.Stdout = os.Stdout
	}
	if *stderr {
		opts.Stderr = os.Stderr
	}
	sizes, err := parseSizes(*resize)
	if err != nil {
		return err
	}
	if len(sizes) > 0 {
		opts.TerminalSizeQueue = &sizeQueue{sizes: sizes}
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	return executor.StreamWithContext(ctx, opts)
}

func runPortForward(args []string) error {
	fs := flag.NewFlagSet("portforward", flag.ContinueOnError)
	rawURL := fs.String("url", "", "stream URL returned by the server")
	transport := fs.String("transport", "spdy", "spdy or websocket")
	port := fs.Int("port", 0, "remote port")
	payload := fs.String("payload", "hello", "bytes to send on each connection")
	conns := fs.Int("conns", 1, "connections to make, one after the other")
	timeout := fs.Duration("timeout", 30*time.Second, "overall deadline")
	if err := fs.Parse(args); err != nil {
		return err
	}
	u, err := url.Parse(*rawURL)
	if err != nil {
		return err
	}
	config := &rest.Config{}
	var dialer httpstream.Dialer
	switch *transport {
	case "spdy":
		tr, upgrader, rerr := spdy.RoundTripperFor(config)
		if rerr != nil {
			return rerr
		}
		dialer = spdy.NewDialerForStreaming(upgrader, &http.Client{Transport: tr}, "POST", u)
	case "websocket":
		dialer, err = portforward.NewSPDYOverWebsocketDialerForStreaming(u, config)
		if err != nil {
			return err
		}
	default:
		return fmt.Errorf("unknown transport %q", *transport)
	}
	stop := make(chan struct{})
	ready := make(chan struct{})
	pf, err := portforward.NewForStreaming(dialer, []string{fmt.Sprintf("0:%d", *port)}, stop, ready, io.Discard, os.Stderr)
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- pf.ForwardPorts() }()
	select {
	case <-ready:
	case err := <-done:
		return fmt.Errorf("port-forward ended before ready: %w", err)
	case <-time.After(*timeout):
		return errors.New("timed out waiting for port-forward to be ready")
	}
	ports, err := pf.GetPorts()
	if err != nil {
		return err
	}
	local := ports[0].Local
	var firstErr error
	for i := 0; i < *conns; i++ {
		got, err := roundTrip(local, *payload, *timeout)
		if err != nil {
			firstErr = fmt.Errorf("connection %d: %w", i, err)
			break
		}
		fmt.Printf("%s\n", got)
	}
	close(stop)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
	return firstErr
}

// roundTrip sends payload through the forwarded local port and returns what came
// back before the remote side closed or len(payload) bytes arrived.
func roundTrip(local uint16, payload string, timeout time.Duration) (string, error) {
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", local), timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return "", err
	}
	if _, err := c.Write([]byte(payload)); err != nil {
		return "", err
	}
	buf := make([]byte, len(payload))
	n, err := io.ReadFull(c, buf)
	if err != nil {
		return string(buf[:n]), fmt.Errorf("read %d of %d echoed bytes: %w", n, len(payload), err)
	}
	return string(buf), nil
}
