//go:build tools

// Package tools records the commands build.sh builds besides the multicall binary in kube/, so that
// `go mod tidy` keeps their dependencies in go.mod and go.sum. The build tag keeps it out of every
// ordinary build.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
)
