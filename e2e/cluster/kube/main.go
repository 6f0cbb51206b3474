// Command kube is every Kubernetes command Voxa's clusters need in one static binary, chosen by the
// name it is run as (a symlink) or by its first argument: `kube kubelet --version`.
//
// One binary serves both the process-based control plane of the fast operator tests (e2e/cluster)
// and the kind node image with its component images (e2e/kind), so Kubernetes is compiled once: the
// packages the commands share (client-go, apimachinery, component-base ...) are linked once, which
// also keeps the node image small.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	_ "time/tzdata" // CronJob time zones (kube-apiserver, kube-controller-manager)

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/server/v3/etcdmain"
	_ "k8s.io/client-go/plugin/pkg/client/auth" // kubectl's auth plugins
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	kubectl "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubeadm "k8s.io/kubernetes/cmd/kubeadm/app"
	kubeadmerrors "k8s.io/kubernetes/cmd/kubeadm/app/util/errors"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

// run starts one command with os.Args as that command would see them.
type run func() int

func component(newCommand func() *cobra.Command) run {
	return func() int { return cli.Run(newCommand()) }
}

var commands = map[string]run{
	"kube-apiserver":          component(apiserver.NewAPIServerCommand),
	"kube-controller-manager": component(controllermanager.NewControllerManagerCommand),
	"kube-scheduler": component(func() *cobra.Command {
		return scheduler.NewSchedulerCommand()
	}),
	"kube-proxy": component(proxy.NewProxyCommand),
	"kubelet": component(func() *cobra.Command {
		return kubelet.NewKubeletCommand(context.Background())
	}),
	"kubeadm": func() int {
		kubeadmerrors.HandleError(kubeadm.Run())
		return 0
	},
	"kubectl": func() int {
		logs.GlogSetter(kubectl.GetLogVerbosity(os.Args)) //nolint:errcheck
		if err := cli.RunNoErrOutput(kubectl.NewDefaultKubectlCommand()); err != nil {
			kubectlutil.CheckErr(err)
		}
		return 0
	},
	"etcd": func() int {
		etcdmain.Main(os.Args)
		return 0
	},
}

func main() {
	name := filepath.Base(os.Args[0])
	if _, ok := commands[name]; !ok && len(os.Args) > 1 {
		// `kube <command> args...`: the command sees itself as argv[0].
		name = os.Args[1]
		os.Args = os.Args[1:]
	}
	command, ok := commands[name]
	if !ok {
		names := make([]string, 0, len(commands))
		for n := range commands {
			names = append(names, n)
		}
		sort.Strings(names)
		fmt.Fprintf(os.Stderr, "usage: kube COMMAND [ARGS...], or run it through a symlink named COMMAND\ncommands: %v\n", names)
		os.Exit(2)
	}
	os.Exit(command())
}
