// cnitool runs one CNI network list against a network namespace through libcni, with the
// command line of the CNI project's cnitool, so that the README's quick start can be run as a
// user types it on a machine whose only libcni is Debian's (golang-github-appc-cni-dev 1.1.2,
// built offline; Debian packages no cnitool):
//
//	cnitool add|check|del NETWORK NETNS
//
// NETWORK is a network list's name in NETCONFPATH (default /etc/cni/net.d), NETNS a namespace
// path. The plugins are searched in CNI_PATH; CNI_IFNAME (default eth0), CNI_ARGS (K=V;K=V)
// and CAP_ARGS (a JSON object of capability arguments) are passed on. The container id is
// derived from the namespace path, so the same command line names the same attachment. ADD
// prints the result; libcni's result cache (/var/lib/cni) carries it to CHECK and DEL.
package main

import (
	"context"
	"crypto/sha512"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintf(os.Stderr, "usage: %s add|check|del NETWORK NETNS\n", filepath.Base(os.Args[0]))
		os.Exit(1)
	}
	cmd, name := os.Args[1], os.Args[2]
	confDir := os.Getenv("NETCONFPATH")
	if confDir == "" {
		confDir = "/etc/cni/net.d"
	}
	list, err := libcni.LoadConfList(confDir, name)
	check(err, "load network "+name)

	caps := map[string]interface{}{}
	if s := os.Getenv("CAP_ARGS"); s != "" {
		check(json.Unmarshal([]byte(s), &caps), "CAP_ARGS")
	}
	var args [][2]string
	if s := os.Getenv("CNI_ARGS"); s != "" {
		for _, kv := range strings.Split(s, ";") {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				check(fmt.Errorf("%q is not K=V", kv), "CNI_ARGS")
			}
			args = append(args, [2]string{k, v})
		}
	}
	ifname := os.Getenv("CNI_IFNAME")
	if ifname == "" {
		ifname = "eth0"
	}
	netns, err := filepath.Abs(os.Args[3])
	check(err, "netns path")
	sum := sha512.Sum512([]byte(netns))
	rt := &libcni.RuntimeConf{
		ContainerID:    fmt.Sprintf("cnitool-%x", sum[:10]),
		NetNS:          netns,
		IfName:         ifname,
		Args:           args,
		CapabilityArgs: caps,
	}
	cni := libcni.NewCNIConfig(filepath.SplitList(os.Getenv("CNI_PATH")), nil)
	ctx := context.Background()
	switch cmd {
	case "add":
		res, err := cni.AddNetworkList(ctx, list, rt)
		if res != nil {
			_ = res.Print()
			fmt.Println()
		}
		check(err, "add")
	case "check":
		check(cni.CheckNetworkList(ctx, list, rt), "check")
	case "del":
		check(cni.DelNetworkList(ctx, list, rt), "del")
	default:
		check(fmt.Errorf("unknown command %q (add, check or del)", cmd), "usage")
	}
}

func check(err error, what string) {
	if err != nil {
		fmt.Fprintf(os.Stderr, "cnitool: %s: %v\n", what, err)
		os.Exit(1)
	}
}
