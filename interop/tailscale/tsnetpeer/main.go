// Command tsnetpeer is a Tailscale node built on tsnet, for Gatehouse's
// tests only: a second kind of client beside tailscaled, with Tailscale's
// network stack in-process and no local daemon.
//
// It joins the tailnet of --control-url with --authkey, then
//   - serves HTTP on the tailnet (port --http-port, 80 by default),
//     answering every request with a JSON object naming itself and the
//     caller as its node sees it (LocalClient.WhoIs);
//   - with --fetch URL, fetches URL once over the tailnet, prints the
//     result and exits (0 if a response came back, whatever its status);
//   - with --stdin, reads commands from standard input, one a line, and
//     exits when it closes: "fetch URL" fetches URL over the tailnet,
//     "status" prints the node's status;
//   - otherwise serves until interrupted.
//
// Everything for a program to read goes to standard output, one JSON
// object a line with an "event" field:
//
//	{"event":"up","ipv4":"100.64.0.1","ipv6":"fd7a:115c:a1e0::1","name":"peer.example."}
//	{"event":"fetch","url":"http://…","status":200,"body":"…"}
//	{"event":"fetch","url":"http://…","error":"…"}
//	{"event":"status","status":{…}}
//	{"event":"error","error":"…"}
//
// Logs go to standard error. Log uploads are disabled.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/envknob"
	"tailscale.com/tsnet"
)

// Bodies printed by fetch are cut at this size.
const maxBody = 1 << 20

var (
	controlURL = flag.String("control-url", "", "coordination server URL (required)")
	authKey    = flag.String("authkey", "", "pre-authorised key to join with (required unless the state directory already holds a node)")
	hostname   = flag.String("hostname", "tsnetpeer", "host name to register")
	stateDir   = flag.String("state-dir", "", "directory for the node's state (required)")
	httpPort   = flag.Int("http-port", 80, "tailnet port of the identity HTTP server; 0 to serve nothing")
	fetchURL   = flag.String("fetch", "", "fetch this URL over the tailnet once, print the result and exit")
	ephemeral  = flag.Bool("ephemeral", false, "register as an ephemeral node")
	tags       = flag.String("advertise-tags", "", "comma-separated ACL tags to request")
	upTimeout  = flag.Duration("up-timeout", 60*time.Second, "how long to wait for the node to be running")
	reqTimeout = flag.Duration("fetch-timeout", 30*time.Second, "timeout of one fetch")
	stdin      = flag.Bool("stdin", false, "read commands (fetch URL, status) from standard input; exit when it closes")
)

// out serialises the JSON lines on standard output.
var out = struct {
	sync.Mutex
	enc *json.Encoder
}{enc: json.NewEncoder(os.Stdout)}

func emit(v map[string]any) {
	out.Lock()
	defer out.Unlock()
	if err := out.enc.Encode(v); err != nil {
		log.Printf("tsnetpeer: writing to stdout: %v", err)
	}
}

func fail(err error) {
	emit(map[string]any{"event": "error", "error": err.Error()})
	log.Printf("tsnetpeer: %v", err)
	os.Exit(1)
}

func main() {
	flag.Parse()
	log.SetOutput(os.Stderr)
	// Never upload logs, whatever the environment says.
	envknob.SetNoLogsNoSupport()
	if *controlURL == "" || *stateDir == "" {
		fail(errors.New("--control-url and --state-dir are required"))
	}

	srv := &tsnet.Server{
		ControlURL: *controlURL,
		AuthKey:    *authKey,
		Hostname:   *hostname,
		Dir:        *stateDir,
		Ephemeral:  *ephemeral,
		Logf:       func(format string, args ...any) { log.Printf("backend: "+format, args...) },
		UserLogf:   func(format string, args ...any) { log.Printf(format, args...) },
	}
	if *tags != "" {
		srv.AdvertiseTags = strings.Split(*tags, ",")
	}
	defer srv.Close()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	upCtx, cancel := context.WithTimeout(ctx, *upTimeout)
	st, err := srv.Up(upCtx)
	cancel()
	if err != nil {
		fail(fmt.Errorf("joining the tailnet: %w", err))
	}
	lc, err := srv.LocalClient()
	if err != nil {
		fail(err)
	}
	up := map[string]any{"event": "up"}
	ip4, ip6 := srv.TailscaleIPs()
	if ip4.IsValid() {
		up["ipv4"] = ip4.String()
	}
	if ip6.IsValid() {
		up["ipv6"] = ip6.String()
	}
	if st.Self != nil {
		up["name"] = st.Self.DNSName
	}

	if *httpPort != 0 {
		ln, err := srv.Listen("tcp", fmt.Sprintf(":%d", *httpPort))
		if err != nil {
			fail(fmt.Errorf("listening on tailnet port %d: %w", *httpPort, err))
		}
		go func() {
			err := http.Serve(ln, identityHandler(lc))
			if err != nil && ctx.Err() == nil {
				log.Printf("tsnetpeer: HTTP server: %v", err)
			}
		}()
	}
	emit(up)

	client := srv.HTTPClient()
	if *fetchURL != "" {
		if !fetch(ctx, client, *fetchURL) {
			os.Exit(1)
		}
		return
	}

	if !*stdin {
		<-ctx.Done()
		return
	}
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case line, ok := <-lines:
			if !ok {
				return
			}
			command(ctx, lc, client, line)
		}
	}
}

func command(ctx context.Context, lc *local.Client, client *http.Client, line string) {
	verb, arg, _ := strings.Cut(strings.TrimSpace(line), " ")
	switch verb {
	case "":
	case "fetch":
		fetch(ctx, client, strings.TrimSpace(arg))
	case "status":
		st, err := lc.Status(ctx)
		if err != nil {
			emit(map[string]any{"event": "status", "error": err.Error()})
			return
		}
		emit(map[string]any{"event": "status", "status": st})
	default:
		emit(map[string]any{"event": "error", "error": fmt.Sprintf("unknown command %q (want fetch URL or status)", verb)})
	}
}

// fetch GETs url over the tailnet and prints the outcome; it reports
// whether a response came back.
func fetch(ctx context.Context, client *http.Client, url string) bool {
	ctx, cancel := context.WithTimeout(ctx, *reqTimeout)
	defer cancel()
	ev := map[string]any{"event": "fetch", "url": url}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		ev["error"] = err.Error()
		emit(ev)
		return false
	}
	resp, err := client.Do(req)
	if err != nil {
		ev["error"] = err.Error()
		emit(ev)
		return false
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	ev["status"] = resp.StatusCode
	ev["body"] = string(body)
	if err != nil {
		ev["error"] = fmt.Sprintf("reading the body: %v", err)
	}
	emit(ev)
	return err == nil
}

// identityHandler answers with this node's name and the caller's tailnet
// identity; a caller its node cannot name gets 403.
func identityHandler(lc *local.Client) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		reply := map[string]any{"server": *hostname, "caller_addr": r.RemoteAddr, "path": r.URL.Path}
		who, err := lc.WhoIs(r.Context(), r.RemoteAddr)
		if err != nil {
			reply["error"] = fmt.Sprintf("whois %s: %v", r.RemoteAddr, err)
			w.WriteHeader(http.StatusForbidden)
			_ = json.NewEncoder(w).Encode(reply)
			return
		}
		if n := who.Node; n != nil {
			reply["caller_node"] = n.Name
			reply["caller_host"] = n.Hostinfo.Hostname()
			reply["caller_tags"] = n.Tags
			reply["caller_node_id"] = n.StableID
		}
		if u := who.UserProfile; u != nil {
			reply["caller_login"] = u.LoginName
			reply["caller_user_id"] = u.ID
		}
		_ = json.NewEncoder(w).Encode(reply)
	})
}
