// CoreDNS with only the plugins the local cluster's DNS uses.
//
// CoreDNS's own main package links every in-tree plugin, cloud DNS providers and their
// SDKs included, which costs minutes to compile. A plugin is available when its package
// is imported (it registers itself in init) and the Corefile's plugin order comes from
// dnsserver.Directives, so a main that imports a few plugins is a complete CoreDNS.
package main

import (
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/template"

	"github.com/coredns/coredns/coremain"
)

func main() { coremain.Run() }
