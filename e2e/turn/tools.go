//go:build tools

// Package tools pins the stunnerd command in go.mod and go.sum; it is never compiled (build.sh
// builds github.com/l7mp/stunner/cmd/stunnerd directly).
package tools

import _ "github.com/l7mp/stunner/cmd/stunnerd"
