// Command refcontrol runs Tailscale's own in-memory test control server
// (tailscale.com/tstest/integration/testcontrol) with a DERP relay and a
// STUN server, all on loopback. Gatehouse's tests use it only to check
// their Tailscale client harness against a control server the clients
// are known to work with (a reference), never as a stand-in for
// Gatehouse's own control.
//
// One HTTP listener serves control, the relay on /derp (plain HTTP:
// clients need TS_DEBUG_USE_DERP_HTTP=1) and /complete-auth?url=AUTHURL,
// which completes an interactive login. When ready it prints one JSON line
// on standard output:
//
//	{"event":"listening","control_url":"http://127.0.0.1:PORT","stun_port":N}
//
// It exits when standard input closes.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"io"
	"log"
	"net"
	"net/http"
	"os"

	"tailscale.com/derp/derpserver"
	"tailscale.com/net/stunserver"
	"tailscale.com/tailcfg"
	"tailscale.com/tstest/integration/testcontrol"
	"tailscale.com/types/key"
)

var (
	listen      = flag.String("listen", "127.0.0.1:0", "address of control and the relay")
	requireAuth = flag.Bool("require-auth", false, "nodes without a key log in interactively (complete with /complete-auth)")
	authKey     = flag.String("authkey", "", "the one auth key nodes must present (none: any)")
)

func main() {
	flag.Parse()
	log.SetOutput(os.Stderr)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("listen: %v", err)
	}
	host, _, _ := net.SplitHostPort(ln.Addr().String())
	port := ln.Addr().(*net.TCPAddr).Port

	stun := stunserver.New(ctx)
	if err := stun.Listen(net.JoinHostPort(host, "0")); err != nil {
		log.Fatalf("STUN: %v", err)
	}
	go stun.Serve()
	stunPort := stun.LocalAddr().(*net.UDPAddr).Port

	relay := derpserver.New(key.NewNode(), log.Printf)
	control := &testcontrol.Server{
		ExplicitBaseURL:  "http://" + ln.Addr().String(),
		RequireAuth:      *requireAuth,
		RequireAuthKey:   *authKey,
		AllNodesSameUser: true,
		DERPMap: &tailcfg.DERPMap{
			OmitDefaultRegions: true,
			Regions: map[int]*tailcfg.DERPRegion{
				1: {
					RegionID:   1,
					RegionCode: "loopback",
					Nodes: []*tailcfg.DERPNode{{
						Name:             "1a",
						RegionID:         1,
						HostName:         host,
						IPv4:             host,
						IPv6:             "none",
						DERPPort:         port,
						STUNPort:         stunPort,
						STUNTestIP:       host,
						InsecureForTests: true,
					}},
				},
			},
		},
	}

	mux := http.NewServeMux()
	mux.Handle("/derp", derpserver.Handler(relay))
	mux.HandleFunc("/complete-auth", func(w http.ResponseWriter, r *http.Request) {
		if !control.CompleteAuth(r.FormValue("url")) {
			http.Error(w, "no such login", http.StatusNotFound)
			return
		}
		io.WriteString(w, "ok\n")
	})
	mux.Handle("/", control)

	go func() {
		// Standard input closing ends the program: when the test ends.
		io.Copy(io.Discard, os.Stdin)
		log.Printf("refcontrol: standard input closed, exiting")
		os.Exit(0)
	}()
	if err := json.NewEncoder(os.Stdout).Encode(map[string]any{
		"event":       "listening",
		"control_url": control.ExplicitBaseURL,
		"stun_port":   stunPort,
	}); err != nil {
		log.Fatalf("stdout: %v", err)
	}
	log.Fatal(http.Serve(ln, mux))
}
