// libcni-client drives a CNI network list through libcni (Debian's golang-github-appc-cni-dev,
// the library podman, containerd and CRI-O use), one operation per run so the caller can look
// at the system in between. libcni's result cache carries prevResult from ADD to CHECK and DEL.
//
// usage: libcni-client add|check|del|validate CONFLIST NETNS CONTAINER_ID IFNAME CACHE_DIR CNI_PATH
// Prints the ADD result as JSON on stdout; exits 1 with the error on stderr.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/containernetworking/cni/libcni"
)

func main() {
	if len(os.Args) != 8 {
		fmt.Fprintln(os.Stderr, "usage: libcni-client add|check|del|validate CONFLIST NETNS CONTAINER_ID IFNAME CACHE_DIR CNI_PATH")
		os.Exit(2)
	}
	op, confPath, netns, id, ifname, cacheDir, path := os.Args[1], os.Args[2], os.Args[3], os.Args[4], os.Args[5], os.Args[6], os.Args[7]
	list, err := libcni.ConfListFromFile(confPath)
	if err != nil {
		fail(err)
	}
	cni := libcni.NewCNIConfigWithCacheDir(strings.Split(path, ":"), cacheDir, nil)
	rt := &libcni.RuntimeConf{ContainerID: id, NetNS: netns, IfName: ifname}
	ctx := context.Background()
	switch op {
	case "add":
		res, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail(err)
		}
		out, _ := json.Marshal(res)
		fmt.Println(string(out))
	case "check":
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	case "del":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	case "validate":
		caps, err := cni.ValidateNetworkList(ctx, list)
		if err != nil {
			fail(err)
		}
		fmt.Println(strings.Join(caps, ","))
	default:
		fail(fmt.Errorf("unknown operation %q", op))
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
